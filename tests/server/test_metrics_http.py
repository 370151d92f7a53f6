"""GET /metrics over a real socket: per-job health series, the server's own, and escaping."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _harness import Client, RunningServer, assert_problem, backup
from prometheus_client.parser import text_string_to_metric_families

from bmserver import Scope

BACKUP = "/api/ingest/backup"
HOUR = 3600.0


def _samples(reply_body: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(reply_body.decode("utf-8")):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _scrape(client: Client, **kwargs: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    reply = client.get("/metrics", **kwargs)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _samples(reply.body)


def test_per_job_series_say_which_job_is_missing(running: RunningServer) -> None:
    client = running.client
    manage = running.new_key("acme", {Scope.MANAGE, Scope.READ})
    overdue = client.post(BACKUP, backup(jobName="overdue", timestamp="2024-06-04T11:00:00Z"))
    healthy = client.post(BACKUP, backup(jobName="healthy", timestamp="2024-06-04T11:00:00Z"))
    for reply, every in [(overdue, "1h"), (healthy, "7d")]:
        path = f"/api/jobs/{reply.json['job']['id']}/schedule"
        body = json.dumps({"every": every, "grace": "10m"}).encode()
        assert client.request("PUT", path, body, key=manage).status == 200
    running.clock.advance(3 * HOUR)

    samples = _scrape(client)
    states = {
        labels["job"]: labels["state"] for labels, value in samples["bm_job_state"] if value == 1
    }
    assert states == {"overdue": "missing", "healthy": "ok"}
    (labels, _), *_ = samples["bm_job_state"]
    assert set(labels) == {"account", "sender", "device", "job", "state"}
    success = {
        labels["job"]: value for labels, value in samples["bm_job_last_success_timestamp_seconds"]
    }
    assert success["overdue"] == 1717498800.0  # 2024-06-04T11:00:00Z
    due = {labels["job"]: value for labels, value in samples["bm_job_next_due_timestamp_seconds"]}
    assert due == {"overdue": 1717498800.0 + HOUR, "healthy": 1717498800.0 + 7 * 24 * HOUR}
    failures = {labels["job"]: value for labels, value in samples["bm_job_consecutive_failures"]}
    assert failures == {"overdue": 0.0, "healthy": 0.0}


def test_label_values_are_escaped(running: RunningServer) -> None:
    client = running.client
    name = 'say "hi" \\ back\u00e9 {x="1"}'
    assert client.post(BACKUP, backup(jobName=name)).status == 201
    reply = client.get("/metrics")
    # The exposition stays parseable, and the value reads back whole.
    samples = _samples(reply.body)
    assert [labels["job"] for labels, _ in samples["bm_job_state"]] == [name]
    assert b'job="say \\"hi\\" \\\\ back' in reply.body


def test_only_the_key_s_own_account_is_shown(running: RunningServer) -> None:
    client = running.client
    assert client.post(BACKUP, backup(jobName="mine")).status == 201
    other = running.new_key("other")
    assert client.post(BACKUP, backup(jobName="theirs"), key=other).status == 201
    jobs = [labels["job"] for labels, _ in _scrape(client)["bm_job_state"]]
    assert jobs == ["mine"]
    jobs = [labels["job"] for labels, _ in _scrape(client, key=other)["bm_job_state"]]
    assert jobs == ["theirs"]


def test_the_server_counts_requests_by_route_template(running: RunningServer, backend: str) -> None:
    client = running.client
    reply = client.post(BACKUP, backup())
    job_id = reply.json["job"]["id"]
    assert client.get(f"/api/jobs/{job_id}").status == 200
    assert client.get("/api/jobs/job_doesnotexist").status == 404
    samples = _scrape(client)
    requests = {
        (labels["endpoint"], labels["method"], labels["status"]): value
        for labels, value in samples["bm_http_requests_total"]
    }
    assert requests[("/api/ingest/backup", "POST", "201")] == 1
    assert requests[("/api/jobs/{job_id}", "GET", "200")] == 1
    assert requests[("/api/jobs/{job_id}", "GET", "404")] == 1
    assert not any(job_id in endpoint for endpoint, _, _ in requests)
    counts = {
        labels["endpoint"]: value
        for labels, value in samples["bm_http_request_duration_seconds_count"]
    }
    assert counts["/api/ingest/backup"] == 1
    if backend not in {"memory", "fake"}:
        batches = samples["bm_store_batch_size_count"]
        assert batches[0][1] >= 1


def test_a_rejection_by_the_rate_limit_is_counted(running: RunningServer) -> None:
    client = running.client
    status = 0
    for _ in range(200):
        status = client.get("/api/devices").status
        if status == 429:
            break
    assert status == 429
    running.clock.advance(HOUR)  # a fresh read quota for the scrape
    rejected = {
        labels["endpoint"]: value
        for labels, value in _scrape(client)["bm_rate_limit_rejections_total"]
    }
    assert rejected["/api/devices"] >= 1


@pytest.mark.parametrize(
    ("headers", "key", "status"),
    [
        ({}, None, 401),
        ({"Authorization": "Bearer bm_wrong"}, None, 401),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, None, 401),
    ],
)
def test_metrics_need_a_read_key(
    client: Client, headers: dict[str, str], key: str | None, status: int
) -> None:
    reply = client.get("/metrics", headers=headers, key=key)
    assert reply.status == status
    assert b"bm_job_state" not in reply.body


def test_metrics_accept_the_key_as_a_bearer_token(running: RunningServer) -> None:
    client = running.client
    assert client.post(BACKUP, backup()).status == 201
    samples = _scrape(client, key=None, headers={"Authorization": f"Bearer {client.api_key}"})
    assert len(samples["bm_job_state"]) == 1


def test_a_key_without_the_read_scope_is_refused(running: RunningServer) -> None:
    ingest_only = running.new_key("acme", {Scope.INGEST})
    assert_problem(running.client.get("/metrics", key=ingest_only), 403, "insufficient_scope")
