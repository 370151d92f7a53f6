"""The lock-out of key guessing: charged before the lookup, so that concurrency cannot escape it.

Against a real socket, on an in-memory store and on PostgreSQL, with the failures counted in
memory and in Redis: the two combinations where a lookup or a count is a network round trip are
where a check before the lookup and a record after it let every concurrent guess through.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _harness import START, Client, RunningServer, backup, loop_of, serve, stop

import bmcore
from bmserver import (
    Limiter,
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Settings,
    Store,
    create_app,
)

BURST = 10
#: Ten failures, then one more try an hour: nothing refills while a test runs.
POLICY = bmcore.RatePolicy.per_second(1 / 3600, burst=BURST)
SETTINGS = Settings(
    auth_failure_policy=POLICY,
    rate_policy=bmcore.RatePolicy.per_second(1, burst=10_000),
    read_rate_policy=bmcore.RatePolicy.per_second(1, burst=10_000),
)

Make = Callable[..., RunningServer]


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """Start servers: ``make(store="postgres", failures="redis", max_addresses=...)``."""
    started: list[Any] = []

    def build(
        *, store: str = "memory", failures: str = "memory", max_addresses: int = 100_000
    ) -> RunningServer:
        chosen: Store
        if store == "postgres":
            from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415 - an optional extra

            url: str = request.getfixturevalue("postgres_url")
            chosen = PostgresStore(url, schema=request.getfixturevalue("postgres_schema"))
        else:
            chosen = MemoryStore()
        counter: Limiter
        if failures == "redis":
            from bmserver import RedisLimiter, connect_redis  # noqa: PLC0415 - redis is an extra

            counter = RedisLimiter(
                connect_redis(request.getfixturevalue("redis_url")),
                POLICY,
                namespace=request.getfixturevalue("redis_namespace"),
                owns_client=True,
            )
        else:
            counter = MemoryLimiter(POLICY, max_keys=max_addresses)
        clock = ManualClock(START)
        app = create_app(
            SETTINGS,
            store=chosen,
            limiter=MemoryLimiter(SETTINGS.rate_policy),
            clock=clock,
            auth_failures=counter,
        )
        server, thread, port = serve(app)
        started.append((server, thread))
        running = RunningServer(Client("127.0.0.1", port, ""), chosen, clock, loop_of(server))
        running.client.api_key = running.new_key("acme")
        return running

    yield build
    for server, thread in started:
        stop(server, thread)


def status_from(running: RunningServer, key: str | None, source: str = "127.0.0.1") -> int:
    """GET /api/devices from a loopback address of the test's choice; the status."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", running.client.port, timeout=30, source_address=(source, 0)
    )
    try:
        connection.request("GET", "/api/devices", headers={"X-Api-Key": key} if key else {})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def concurrent_statuses(running: RunningServer, keys: list[str]) -> list[int]:
    """Send one request per key, all at once, from one address."""

    def status(key: str) -> int:
        return status_from(running, key)

    with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
        return list(pool.map(status, keys))


@pytest.mark.parametrize(
    ("store", "failures"),
    [("memory", "memory"), ("memory", "redis"), ("postgres", "memory"), ("postgres", "redis")],
)
def test_concurrent_guesses_get_at_most_the_burst_of_answers(
    make: Make, store: str, failures: str
) -> None:
    """200 wrong keys at once from one address: at most ten 401s, every other answer 429."""
    running = make(store=store, failures=failures)
    statuses = concurrent_statuses(running, [bmcore.generate_api_key() for _ in range(200)])
    assert statuses.count(401) == BURST, statuses
    assert statuses.count(429) == 200 - BURST
    assert status_from(running, running.client.api_key) == 429  # even the right key, unproven


@pytest.mark.parametrize(("store", "failures"), [("memory", "memory"), ("postgres", "redis")])
def test_valid_keys_sent_at_once_never_lock_their_address_out(
    make: Make, store: str, failures: str
) -> None:
    """200 requests with valid keys at once from one address, beside nine guesses: all pass."""
    running = make(store=store, failures=failures)
    keys = [running.new_key("acme") for _ in range(20)]
    statuses = concurrent_statuses(running, keys * 10)
    assert statuses == [200] * 200
    for _ in range(BURST - 1):
        assert status_from(running, bmcore.generate_api_key()) == 401
    assert status_from(running, bmcore.generate_api_key()) == 401
    assert status_from(running, bmcore.generate_api_key()) == 429


def test_a_key_proven_from_an_address_keeps_working_while_it_is_locked_out(
    make: Make,
) -> None:
    """Locked out: new keys get 429, right or wrong; the key this address used goes on.

    It is no guess: the address showed it holds the key before the failures began.
    """
    running = make()
    known = running.client.api_key
    unproven = running.new_key("acme")
    assert status_from(running, known) == 200
    for _ in range(BURST):
        assert status_from(running, bmcore.generate_api_key()) == 401
    assert status_from(running, bmcore.generate_api_key()) == 429
    assert status_from(running, unproven) == 429
    assert status_from(running, known) == 200
    assert status_from(running, None) == 429  # no key at all: the lock-out answers first


def test_a_revoked_key_fails_at_once_even_from_an_address_that_proved_it(make: Make) -> None:
    """The key is looked up on every request: once revoked, 401, counted as a failure."""
    running = make()
    key = running.client.api_key
    assert status_from(running, key) == 200
    record = running.call(running.store.find_api_key(bmcore.hash_api_key(key)))
    running.call(running.store.revoke_api_key(record.prefix, now=START))
    for _ in range(BURST):
        assert status_from(running, key) == 401
    assert status_from(running, key) == 429


def test_a_full_table_of_addresses_refuses_a_new_address(make: Make) -> None:
    """With room for two failing addresses, a third is refused (429), not left uncounted."""
    running = make(max_addresses=2)
    assert status_from(running, bmcore.generate_api_key(), "127.0.0.2") == 401
    assert status_from(running, bmcore.generate_api_key(), "127.0.0.3") == 401
    assert status_from(running, bmcore.generate_api_key(), "127.0.0.4") == 429
    assert status_from(running, "bm_short", "127.0.0.5") == 429


def test_a_valid_key_leaves_no_failure_behind(make: Make) -> None:
    """A success is refunded: it takes no room in the table of failing addresses."""
    running = make(max_addresses=1)
    for _ in range(5):
        assert status_from(running, running.client.api_key, "127.0.0.2") == 200
    assert status_from(running, bmcore.generate_api_key(), "127.0.0.3") == 401


def test_an_ingest_request_is_locked_out_like_a_read(make: Make) -> None:
    """The same lock-out guards ingest: nothing is stored for a locked-out address."""
    running = make()
    for _ in range(BURST):
        assert status_from(running, bmcore.generate_api_key()) == 401
    reply = running.client.request(
        "POST", "/api/ingest/backup", json.dumps(backup()).encode(), key=running.new_key("acme")
    )
    assert reply.status == 429
    assert reply.json["code"] == "rate_limited"
    assert int(reply.headers["retry-after"]) >= 1


def test_the_redis_count_is_shared_by_instances(make: Make) -> None:
    """Two servers on one Redis: the guesses of one address add up across them."""
    first, second = make(failures="redis"), make(failures="redis")
    for index in range(BURST):
        assert status_from(first if index % 2 else second, bmcore.generate_api_key()) == 401
    assert status_from(first, bmcore.generate_api_key()) == 429
    assert status_from(second, bmcore.generate_api_key()) == 429
