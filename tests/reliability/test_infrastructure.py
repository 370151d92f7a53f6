"""The reliability suite's own plumbing works: a real server starts, answers, dies and restarts."""

from __future__ import annotations

from datetime import UTC, datetime

from _reliability import ServerProcess, Tally, post_json, request


def test_a_killed_server_restarts_with_what_it_acknowledged(
    server: ServerProcess, tally: Tally
) -> None:
    """One entry acknowledged, kill -9, restart: the entry is there and the server answers."""
    payload = {
        "deviceName": "srv01",
        "jobName": "Nightly",
        "timestamp": datetime.now(UTC).isoformat(),
        "status": "Success",
        "message": "ok",
    }
    answer = post_json(server.url, "/api/ingest/backup", server.key, payload)
    assert answer.status == 201, answer.body
    server.kill()
    tally.fault("kill -9")
    server.start()
    assert server.count_rows()["backups"] == 1
    tally.accounted(acknowledged=1, found=server.count_rows()["backups"])
    assert request(server.url, "GET", "/healthz").status == 200
