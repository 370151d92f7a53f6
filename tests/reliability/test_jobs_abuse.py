"""Job schedules, pauses and /metrics, tried as an attacker would, against `bmserver serve`.

No key, another account's key, a key without the scope, oversized, slow and malformed bodies,
odd job ids, and label text chosen to break the Prometheus exposition: each gets a 4xx problem
(or a well-formed scrape), nothing is changed, and the server keeps serving.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from _reliability import HOST, ServerProcess, Tally, post_json, request
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.reliability

SCHEDULE = {"every": "24h", "grace": "1h"}


def _job(server: ServerProcess, key: str, name: str = "Nightly") -> str:
    answer = post_json(
        server.url,
        "/api/ingest/backup",
        key,
        {
            "deviceName": "srv01",
            "jobName": name,
            "timestamp": datetime.now(UTC).isoformat(),
            "status": "Success",
            "message": "ok",
        },
    )
    assert answer.status == 201, answer.body
    return str(answer.json()["job"]["id"])


def _send(
    server: ServerProcess, method: str, path: str, key: str | None, body: bytes | None
) -> Any:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-Api-Key"] = key
    return request(server.url, method, path, body=body, headers=headers)


def _schedule_of(server: ServerProcess, key: str, job_id: str) -> object:
    answer = request(server.url, "GET", f"/api/jobs/{job_id}", headers={"X-Api-Key": key})
    assert answer.status == 200, answer.body
    return answer.json()["schedule"]


def test_only_a_manage_key_of_the_job_s_account_changes_it(
    server: ServerProcess, tally: Tally
) -> None:
    manage = server.new_key("acme", "read", "manage")
    other_manage = server.new_key("rival", "ingest", "read", "manage")
    job_id = _job(server, server.key)
    body = json.dumps(SCHEDULE).encode()
    attempts = [
        (None, 401),  # no key
        ("bm_" + "A" * 43, 401),  # a well-formed unknown key
        (server.key, 403),  # ingest and read, not manage
        (other_manage, 404),  # another account's: its job is not found
    ]
    for key, status in attempts:
        for method, path, sent in [
            ("PUT", f"/api/jobs/{job_id}/schedule", body),
            ("DELETE", f"/api/jobs/{job_id}/schedule", None),
            ("POST", f"/api/jobs/{job_id}/pause", b"{}"),
            ("POST", f"/api/jobs/{job_id}/resume", None),
        ]:
            answer = _send(server, method, path, key, sent)
            assert answer.status == status, (key, method, path, answer.body)
            assert answer.headers["content-type"] == "application/problem+json"
    assert _schedule_of(server, server.key, job_id) is None
    paused = request(server.url, "GET", f"/api/jobs/{job_id}", headers={"X-Api-Key": server.key})
    assert paused.json()["pause"] is None
    # The rival's own view of jobs holds nothing of acme's.
    theirs = request(server.url, "GET", "/api/jobs", headers={"X-Api-Key": other_manage}).json()
    assert theirs["items"] == []
    assert _send(server, "PUT", f"/api/jobs/{job_id}/schedule", manage, body).status == 200
    tally.figure("jobs: refused changes", str(len(attempts) * 4))


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{" * 100_000, 413, "payload_too_large"),
        (b"[" * 2000 + b"]" * 2000, 400, "invalid_json"),
        (b'{"every": "1d", "grace": "1h"', 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        (b'"24h"', 400, "validation_failed"),
        (b'{"every": "99999999999d", "grace": "1h"}', 400, "validation_failed"),
        (b'{"cron": "' + b"1," * 1500 + b'1 * * * *", "grace": "1h"}', 400, "validation_failed"),
        (
            b'{"cron": "0 2 * * *", "timezone": "../../../../etc/passwd", "grace": "1h"}',
            400,
            "validation_failed",
        ),
        (
            b'{"cron": "0 2 * * *", "timezone": "' + b"A" * 3000 + b'", "grace": "1h"}',
            400,
            "validation_failed",
        ),
        (b'{"every": 86400, "grace": null}', 400, "validation_failed"),
    ],
    ids=[
        "oversized",
        "deeply-nested",
        "truncated",
        "not-utf8",
        "not-an-object",
        "huge-duration",
        "long-cron",
        "zone-path",
        "long-zone",
        "wrong-types",
    ],
)
def test_malformed_schedules_get_a_problem_and_change_nothing(
    server: ServerProcess, body: bytes, status: int, code: str
) -> None:
    manage = server.new_key("acme", "ingest", "read", "manage")
    job_id = _job(server, manage)
    answer = _send(server, "PUT", f"/api/jobs/{job_id}/schedule", manage, body)
    assert (answer.status, answer.json()["code"]) == (status, code), answer.body
    assert _schedule_of(server, manage, job_id) is None
    assert server.is_running()


def test_a_trickled_schedule_body_times_out_and_others_are_served(server: ServerProcess) -> None:
    manage = server.new_key("acme", "ingest", "read", "manage")
    job_id = _job(server, manage)
    with socket.create_connection((HOST, server.port), timeout=30) as slow:
        slow.sendall(
            f"PUT /api/jobs/{job_id}/schedule HTTP/1.1\r\nHost: x\r\nX-Api-Key: {manage}\r\n"
            "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{".encode()
        )
        # Meanwhile another client is served at once.
        started = time.monotonic()
        assert request(server.url, "GET", "/api/jobs", headers={"X-Api-Key": manage}).status == 200
        assert time.monotonic() - started < 10  # a liveness bound, not a benchmark
        answer = slow.recv(65536)
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]
    assert _schedule_of(server, manage, job_id) is None


def test_odd_job_ids_and_state_filters_are_4xx(server: ServerProcess) -> None:
    manage = server.new_key("acme", "ingest", "read", "manage")
    _job(server, manage)
    for job_id in ["%00", "%FF", "..%2F..%2Fetc", "x" * 5000, "%E2%80%AE", "job_%27%3B--"]:
        for method, path in [
            ("GET", f"/api/jobs/{job_id}"),
            ("POST", f"/api/jobs/{job_id}/resume"),
        ]:
            answer = _send(server, method, path, manage, None)
            assert 400 <= answer.status < 500, (job_id, answer.status, answer.body)
    for state in ["missing," * 5000, "%00", "missing%0Aok", "MISSING"]:
        answer = request(
            server.url, "GET", f"/api/jobs?state={state}", headers={"X-Api-Key": manage}
        )
        assert answer.status in {200, 400, 414}, (state, answer.body)
    assert server.is_running()


def test_metrics_stay_well_formed_whatever_the_names(server: ServerProcess) -> None:
    """Names with quotes, backslashes, braces, '#' and Unicode cannot forge a series."""
    names = ['x"} 1\nbm_job_state{job="forged', "back\\slash", "# HELP fake", "{}=,", "日本語 ☃"]
    for name in names:
        if "\n" in name:  # a control character: refused at ingest, never a series
            payload = {
                "deviceName": "srv01",
                "jobName": name,
                "status": "Success",
                "message": "",
                "timestamp": datetime.now(UTC).isoformat(),
            }
            assert post_json(server.url, "/api/ingest/backup", server.key, payload).status == 400
        else:
            _job(server, server.key, name)
    answer = request(
        server.url, "GET", "/metrics", headers={"Authorization": f"Bearer {server.key}"}
    )
    assert answer.status == 200
    families = {
        family.name: family for family in text_string_to_metric_families(answer.body.decode())
    }
    jobs = sorted(sample.labels["job"] for sample in families["bm_job_state"].samples)
    # The control character was refused at ingest; every other name is one series, whole.
    assert len(jobs) == len(names) - 1
    assert all("forged" not in job for job in jobs)
    assert sorted(jobs) == sorted(name for name in names if "\n" not in name)
    for key in (None, "bm_" + "A" * 43):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        refused = request(server.url, "GET", "/metrics", headers=headers)
        assert refused.status == 401
        assert b"bm_job_state" not in refused.body
