"""Jobs over a real socket: health on the read side, schedules and pauses with a manage key.

Run against bmserver (memory and SQLite) and the fake, like every HTTP contract test.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from _harness import START, Client, RunningServer, assert_problem, backup

import bmcore
from bmserver import Scope

BACKUP = "/api/ingest/backup"
HOUR = 3600.0


def _manage_key(running: RunningServer, account: str = "acme") -> str:
    return running.new_key(account, {Scope.MANAGE, Scope.READ})


def _post_backup(client: Client, **changes: Any) -> str:
    reply = client.post(BACKUP, backup(**changes))
    assert reply.status == 201, reply.body
    return str(reply.json["job"]["id"])


def _job(client: Client, job_id: str, key: str = "default") -> dict[str, Any]:
    reply = client.get(f"/api/jobs/{job_id}", key=key)
    assert reply.status == 200, reply.body
    job: dict[str, Any] = reply.json
    return job


def _put(client: Client, path: str, body: object, key: str) -> Any:
    return client.request("PUT", path, json.dumps(body).encode(), key=key)


def test_a_job_carries_its_schedule_suggestion_pause_and_health(running: RunningServer) -> None:
    client = running.client
    job_id = _post_backup(client, timestamp="2024-06-04T11:00:00+00:00")
    job = _job(client, job_id)
    assert job["schedule"] is None
    assert job["suggestedSchedule"] is None  # from five reports on
    assert job["pause"] is None
    assert job["health"] == {
        "state": "ok",
        "since": "2024-06-04T11:00:00+00:00",
        "nextDueAt": None,
        "lastReportAt": "2024-06-04T11:00:00+00:00",
        "lastSuccessAt": "2024-06-04T11:00:00+00:00",
        "consecutiveFailures": 0,
    }
    (listed,) = client.get("/api/jobs").json["items"]
    assert listed == job


def test_a_scheduled_job_goes_late_then_missing_and_is_found_by_state(
    running: RunningServer,
) -> None:
    client = running.client
    manage = _manage_key(running)
    job_id = _post_backup(client, timestamp="2024-06-04T11:00:00+00:00")
    reply = _put(client, f"/api/jobs/{job_id}/schedule", {"every": "24h", "grace": "1h"}, manage)
    assert reply.status == 200, reply.body
    assert reply.json["schedule"] == {"every": "1d", "grace": "1h"}
    assert reply.json["health"]["nextDueAt"] == "2024-06-05T11:00:00+00:00"

    running.clock.advance(23.5 * HOUR)  # 2024-06-05T11:30Z: due at 11:00, grace 1h
    assert _job(client, job_id)["health"]["state"] == "late"
    running.clock.advance(HOUR)
    health = _job(client, job_id)["health"]
    assert (health["state"], health["since"]) == ("missing", "2024-06-05T12:00:00+00:00")
    missing = client.get("/api/jobs?state=missing,failing").json
    assert [job["id"] for job in missing["items"]] == [job_id]
    assert client.get("/api/jobs?state=ok").json == {"items": [], "nextCursor": None}

    # The next report makes it ok again.
    _post_backup(client, timestamp="2024-06-05T12:25:00+00:00")
    assert _job(client, job_id)["health"]["state"] == "ok"


def test_a_cron_schedule_in_a_zone(running: RunningServer) -> None:
    client = running.client
    job_id = _post_backup(client, timestamp="2024-06-04T11:00:00+00:00")
    schedule = {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "grace": "2h"}
    reply = _put(client, f"/api/jobs/{job_id}/schedule", schedule, _manage_key(running))
    assert reply.json["schedule"] == schedule
    # 02:30 in Berlin in June (CEST) is 00:30Z.
    assert reply.json["health"]["nextDueAt"] == "2024-06-05T00:30:00+00:00"


def test_deleting_the_schedule_judges_on_outcome_alone(running: RunningServer) -> None:
    client = running.client
    manage = _manage_key(running)
    job_id = _post_backup(client, timestamp="2024-06-04T11:00:00+00:00", status="Error")
    _put(client, f"/api/jobs/{job_id}/schedule", {"every": "1h", "grace": "5m"}, manage)
    running.clock.advance(5 * HOUR)
    assert _job(client, job_id)["health"]["state"] == "missing"
    reply = client.request("DELETE", f"/api/jobs/{job_id}/schedule", key=manage)
    assert reply.status == 200, reply.body
    assert reply.json["schedule"] is None
    assert reply.json["health"]["state"] == "failing"
    assert reply.json["health"]["nextDueAt"] is None
    assert reply.json["health"]["consecutiveFailures"] == 1


def test_pause_and_resume(running: RunningServer) -> None:
    client = running.client
    manage = _manage_key(running)
    job_id = _post_backup(client, timestamp="2024-06-04T11:00:00+00:00")
    _put(client, f"/api/jobs/{job_id}/schedule", {"every": "24h", "grace": "1h"}, manage)
    reply = client.post(
        f"/api/jobs/{job_id}/pause", {"until": "2024-06-10T00:00:00+00:00"}, key=manage
    )
    assert reply.status == 200, reply.body
    assert reply.json["pause"] == {
        "since": "2024-06-04T12:00:00+00:00",
        "until": "2024-06-10T00:00:00+00:00",
    }
    running.clock.advance(48 * HOUR)
    assert _job(client, job_id)["health"]["state"] == "paused"
    resumed = client.post(f"/api/jobs/{job_id}/resume", {}, key=manage)
    assert resumed.status == 200, resumed.body
    # Due a period after the pause ended, not at once missing.
    assert resumed.json["health"]["state"] == "ok"
    assert resumed.json["health"]["nextDueAt"] == "2024-06-07T12:00:00+00:00"
    assert resumed.json["pause"]["until"] == "2024-06-06T12:00:00+00:00"


def test_a_schedule_is_suggested_from_five_daily_reports(running: RunningServer) -> None:
    client = running.client
    job_id = ""
    for day in range(5):
        stamp = (START - timedelta(days=4 - day, hours=1, minutes=day)).isoformat()
        job_id = _post_backup(client, timestamp=stamp)
    assert _job(client, job_id)["suggestedSchedule"] == {"every": "1d", "grace": "3h"}


# --- what a bad request gets ----------------------------------------------------------------


def test_a_bad_schedule_is_a_400_naming_the_field(running: RunningServer) -> None:
    client = running.client
    manage = _manage_key(running)
    job_id = _post_backup(client)
    path = f"/api/jobs/{job_id}/schedule"
    body = assert_problem(
        _put(client, path, {"cron": "0 25 * * *", "grace": "1h"}, manage), 400, "validation_failed"
    )
    assert [(e["field"], e["code"]) for e in body["errors"]] == [("/cron", "bad_cron_field")]
    assert "hour" in body["errors"][0]["message"]
    body = assert_problem(
        _put(client, path, {"cron": "0 2 * * *", "timezone": "Mars/Base", "grace": "0m"}, manage),
        400,
        "validation_failed",
    )
    assert {e["field"] for e in body["errors"]} == {"/timezone", "/grace"}
    assert_problem(client.request("PUT", path, b"{not json", key=manage), 400, "invalid_json")
    assert_problem(_put(client, path, ["every", "24h"], manage), 400, "validation_failed")
    assert_problem(client.request("PUT", path, b"{" * 5000, key=manage), 413, "payload_too_large")
    # Nothing was changed by any of them.
    assert _job(client, job_id)["schedule"] is None


def test_a_bad_pause_is_a_400_naming_the_field(running: RunningServer) -> None:
    client = running.client
    manage = _manage_key(running)
    job_id = _post_backup(client)
    path = f"/api/jobs/{job_id}/pause"
    for body, code in [
        ({"until": "2024-06-04T10:00:00+00:00"}, "not_in_the_future"),
        ({"until": "2024-06-10 10:00"}, "missing_utc_offset"),
        ({"until": 5}, "wrong_type"),
        ({"for": "1h"}, "unknown_field"),
    ]:
        problem = assert_problem(client.post(path, body, key=manage), 400, "validation_failed")
        assert problem["errors"][0]["code"] == code, problem
    assert _job(client, job_id)["pause"] is None


def test_changing_a_job_needs_a_manage_key_of_its_account(running: RunningServer) -> None:
    client = running.client
    job_id = _post_backup(client)
    path = f"/api/jobs/{job_id}/schedule"
    schedule = {"every": "24h", "grace": "1h"}
    assert_problem(
        client.request("PUT", path, json.dumps(schedule).encode(), key=None), 401, "missing_api_key"
    )
    assert_problem(
        _put(client, path, schedule, "default"), 403, "insufficient_scope"
    )  # read+ingest
    other = _manage_key(running, account="other")
    assert_problem(_put(client, path, schedule, other), 404, "not_found")
    assert_problem(client.request("DELETE", path, key=other), 404, "not_found")
    assert_problem(client.post(f"/api/jobs/{job_id}/pause", {}, key=other), 404, "not_found")
    # Nor can it read the job.
    assert_problem(client.get(f"/api/jobs/{job_id}", key=other), 404, "not_found")
    assert _job(client, job_id)["schedule"] is None


@pytest.mark.parametrize("job_id", ["job_0000000000000000", "x" * 101, "%00", "%E2%80%AE"])
def test_an_unknown_or_odd_job_id_is_a_404(running: RunningServer, job_id: str) -> None:
    assert_problem(running.client.get(f"/api/jobs/{job_id}"), 404, "not_found")
    manage = _manage_key(running)
    reply = _put(
        running.client, f"/api/jobs/{job_id}/schedule", {"every": "1d", "grace": "1h"}, manage
    )
    assert_problem(reply, 404, "not_found")


@pytest.mark.parametrize("state", ["gone", "", ",", "ok,nope"])
def test_an_unknown_state_filter_is_a_400(client: Client, state: str) -> None:
    body = assert_problem(client.get(f"/api/jobs?state={state}"), 400, "invalid_query")
    assert body["errors"][0]["field"] == "state"


def test_a_bearer_token_is_for_metrics_only(running: RunningServer) -> None:
    """The API takes its key in X-Api-Key; a Bearer token is refused like no key at all."""
    client = running.client
    _post_backup(client)
    bearer = {"Authorization": f"Bearer {client.api_key}"}
    body = assert_problem(client.get("/api/jobs", key=None, headers=bearer), 401, "missing_api_key")
    assert "Bearer" not in body["detail"]
    assert client.get("/metrics", key=None, headers=bearer).status == 200


# --- the state filter's paging ------------------------------------------------------------------


def test_a_state_filtered_listing_pages_through_every_match_once(running: RunningServer) -> None:
    client = running.client
    manage = _manage_key(running)
    expected_missing: list[str] = []
    for index in range(12):
        job_id = _post_backup(
            client, jobName=f"job {index}", status="Error" if index % 3 else "Success"
        )
        if index % 2 == 0:
            _put(client, f"/api/jobs/{job_id}/schedule", {"every": "1h", "grace": "1m"}, manage)
            expected_missing.append(job_id)
    running.clock.advance(5 * HOUR)
    seen: list[str] = []
    cursor = None
    while True:
        query = "/api/jobs?state=missing&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query).json
        assert len(page["items"]) <= 2
        seen.extend(job["id"] for job in page["items"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(expected_missing)
    assert len(seen) == len(set(seen))
    failing = client.get("/api/jobs?state=failing&limit=100").json["items"]
    assert all(job["health"]["state"] == "failing" for job in failing)
    assert len(failing) == sum(1 for index in range(12) if index % 2 and index % 3)


def test_health_uses_the_report_s_own_timestamp(running: RunningServer) -> None:
    """A backfilled Error older than the latest Success does not make the job failing."""
    client = running.client
    job_id = _post_backup(client, timestamp="2024-06-04T11:00:00+00:00")
    _post_backup(client, timestamp="2024-06-03T11:00:00+00:00", status="Error")
    health = _job(client, job_id)["health"]
    assert (health["state"], health["lastReportAt"], health["consecutiveFailures"]) == (
        "ok",
        "2024-06-04T11:00:00+00:00",
        0,
    )
    assert bmcore.JobState(health["state"]) is bmcore.JobState.OK
