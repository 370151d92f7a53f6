"""Rate limiting over a real socket: 429, Retry-After and the IETF RateLimit headers."""

from __future__ import annotations

import pytest
from _harness import RunningServer, assert_problem, backup, notification

import bmcore
from bmserver import Settings

BACKUP = "/api/ingest/backup"
NOTIFICATION = "/api/ingest/notification"


# --- 429 ------------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """A small burst, so that the rate limit is reached in a few requests."""
    return Settings(rate_policy=bmcore.RatePolicy.per_second(1, burst=3))


def test_rate_limit_is_429_with_retry_after_and_headers(running: RunningServer) -> None:
    """Past the burst: 429, Retry-After and the IETF headers; after the wait it passes again."""
    client = running.client
    replies = [client.post(NOTIFICATION, notification(type=f"t{index}")) for index in range(4)]
    assert [reply.status for reply in replies] == [201, 201, 201, 429]
    assert replies[0].headers["ratelimit-policy"] == '"default";q=3;w=3'
    assert replies[0].headers["ratelimit"] == '"default";r=2;t=1'
    limited = assert_problem(replies[3], 429, "rate_limited")
    assert limited["detail"]
    assert replies[3].headers["retry-after"] == "1"
    assert replies[3].headers["ratelimit"] == '"default";r=0;t=3'
    running.clock.advance(1)
    assert client.post(NOTIFICATION, notification(type="later")).status == 201


def test_rejected_payloads_still_cost(running: RunningServer) -> None:
    """The limit applies before decoding: invalid payloads use up the quota too."""
    client = running.client
    for _ in range(3):
        assert client.request("POST", BACKUP, b"{").status == 400
    assert_problem(client.post(BACKUP, backup()), 429, "rate_limited")


def test_other_keys_have_their_own_quota(running: RunningServer) -> None:
    """One key's exhausted quota does not affect another key."""
    other = running.new_key("other")
    for index in range(3):
        running.client.post(NOTIFICATION, notification(type=f"t{index}"))
    assert running.client.post(NOTIFICATION, notification(type="x")).status == 429
    assert running.client.post(NOTIFICATION, notification(type="x"), key=other).status == 201
