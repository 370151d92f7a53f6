"""RedisLimiter: bmcore's GCRA in one Lua script, on Redis's clock, against a real Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator

import hypothesis
import pytest
import redis.asyncio
from _harness import Client, assert_problem, backup
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from bmcore import RatePolicy, decide, refund
from bmserver import LimiterUnavailableError, RedisLimiter, Settings, connect_redis
from bmserver.limits._redis import GCRA_SCRIPT

NS = 1_000_000_000
#: A realistic instant, far beyond 2**53 nanoseconds: the script must stay exact there.
EPOCH_2026 = 1_780_000_000 * NS


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for a test's Redis client (redis.asyncio binds a client to its loop)."""
    running = asyncio.new_event_loop()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def redis_client(redis_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[redis.asyncio.Redis]:
    """A Redis client on the test's loop, closed afterwards."""
    connection = connect_redis(redis_url)
    try:
        yield connection
    finally:
        loop.run_until_complete(connection.aclose())


# --- the differential property: Redis decides exactly as bmcore ----------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[RatePolicy, int, list[tuple[int, int]]]:
    """A policy, a start instant and (time increment, cost) steps, bunched or spread out."""
    policy = draw(
        st.builds(
            RatePolicy,
            burst=st.integers(1, 50),
            interval_ns=st.one_of(st.integers(1, NS), st.integers(NS, 3600 * NS)),
        )
    )
    span = policy.burst * policy.interval_ns
    increments = st.one_of(st.just(0), st.integers(0, policy.interval_ns), st.integers(0, 3 * span))
    costs = st.integers(0, policy.burst)
    start = draw(st.integers(EPOCH_2026 - 10**15, EPOCH_2026 + 10**15))
    steps = draw(st.lists(st.tuples(increments, costs), min_size=1, max_size=30))
    return policy, start, steps


@hypothesis.settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_redis_decides_exactly_as_bmcore(
    redis_client: redis.asyncio.Redis,
    loop: asyncio.AbstractEventLoop,
    redis_namespace: str,
    scenario: tuple[RatePolicy, int, list[tuple[int, int]]],
) -> None:
    """For random sequences of (time, cost), every decision of the script equals decide()'s."""
    policy, now, steps = scenario
    limiter = RedisLimiter(redis_client, policy, namespace=redis_namespace)
    key = uuid.uuid4().hex  # a key per example: the fixture's namespace serves every example
    state: int | None = None
    for increment, cost in steps:
        now += increment
        expected, state = decide(state, now, policy, cost)
        got = loop.run_until_complete(limiter.decide_at(key, now, cost))
        assert got == expected, f"at {now} cost {cost}: redis {got}, bmcore {expected}"


@hypothesis.settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios(), refunds=st.lists(st.booleans(), min_size=30, max_size=30))
def test_redis_refunds_exactly_as_bmcore(
    redis_client: redis.asyncio.Redis,
    loop: asyncio.AbstractEventLoop,
    redis_namespace: str,
    scenario: tuple[RatePolicy, int, list[tuple[int, int]]],
    refunds: list[bool],
) -> None:
    """Charges mixed with refunds: the state in Redis follows decide() and refund() exactly."""
    policy, now, steps = scenario
    limiter = RedisLimiter(redis_client, policy, namespace=redis_namespace)
    key = uuid.uuid4().hex
    state: int | None = None
    for (increment, cost), refunding in zip(steps, refunds, strict=False):
        now += increment
        if refunding:
            state = refund(state, now, policy, cost)
            loop.run_until_complete(limiter.refund_at(key, now, cost))
        else:
            expected, state = decide(state, now, policy, cost)
            got = loop.run_until_complete(limiter.decide_at(key, now, cost))
            assert got == expected, f"at {now} cost {cost}: redis {got}, bmcore {expected}"
    peeked = loop.run_until_complete(limiter.decide_at(key, now, 0))
    assert peeked == decide(state, now, policy, 0)[0]


# --- Redis's own clock, keys that expire, the script by its SHA ------------------------------


def test_instances_with_skewed_clocks_share_one_quota(
    redis_client: redis.asyncio.Redis, loop: asyncio.AbstractEventLoop, redis_namespace: str
) -> None:
    """Two limiters (two instances) whose callers' clocks differ by hours admit one burst."""
    policy = RatePolicy.per_second(1 / 3600, burst=5)
    first = RedisLimiter(redis_client, policy, namespace=redis_namespace)
    second = RedisLimiter(redis_client, policy, namespace=redis_namespace)

    async def burst() -> list[bool]:
        decisions: list[bool] = []
        for index in range(10):
            limiter, skew = (first, 0) if index % 2 else (second, 7200 * NS)
            decisions.append((await limiter.decide("key", 10**9 + skew)).allowed)
        return decisions

    assert sum(loop.run_until_complete(burst())) == 5


def test_a_bucket_holds_state_only_until_it_is_full_again(
    redis_client: redis.asyncio.Redis, loop: asyncio.AbstractEventLoop, redis_namespace: str
) -> None:
    """An admitted request leaves a key whose TTL ends (after a grace) when it has refilled."""
    policy = RatePolicy(burst=10, interval_ns=2 * NS)
    limiter = RedisLimiter(redis_client, policy, namespace=redis_namespace)

    async def scenario() -> tuple[int, int, int]:
        await limiter.decide("idle", 0)
        await limiter.decide("busy", 0, 3)
        idle_ttl = await redis_client.pttl(f"{redis_namespace}:idle")
        busy_ttl = await redis_client.pttl(f"{redis_namespace}:busy")
        peeked = await limiter.decide("never-used", 0, 0)
        exists = await redis_client.exists(f"{redis_namespace}:never-used")
        assert peeked.allowed
        return idle_ttl, busy_ttl, exists

    idle_ttl, busy_ttl, exists = loop.run_until_complete(scenario())
    grace = 60_000  # the script keeps state a minute longer than needed
    assert grace < idle_ttl <= grace + 2_000  # one token: full again within 2 s
    assert grace + 4_000 < busy_ttl <= grace + 6_000  # three tokens: within 6 s
    assert exists == 0  # a peek stores nothing


def test_the_script_is_loaded_once_and_called_by_its_sha(
    redis_client: redis.asyncio.Redis, loop: asyncio.AbstractEventLoop, redis_namespace: str
) -> None:
    """After a decision Redis knows the script by its SHA; after SCRIPT FLUSH it reloads."""
    limiter = RedisLimiter(
        redis_client, RatePolicy(burst=2, interval_ns=NS), namespace=redis_namespace
    )
    sha = redis_client.register_script(GCRA_SCRIPT).sha

    async def scenario() -> tuple[list[bool], bool]:
        await limiter.decide("a", 0)
        known = await redis_client.script_exists(sha)
        await redis_client.script_flush()
        decision = await limiter.decide("a", 0)  # NOSCRIPT: redis-py loads it again
        return known, decision.allowed

    known, allowed = loop.run_until_complete(scenario())
    assert known == [True]
    assert allowed


def test_reset_forgets_only_its_own_namespace(
    redis_client: redis.asyncio.Redis, loop: asyncio.AbstractEventLoop, redis_namespace: str
) -> None:
    """reset() refills every bucket of its namespace and leaves other namespaces alone."""
    policy = RatePolicy.per_second(1 / 3600, burst=1)
    mine = RedisLimiter(redis_client, policy, namespace=redis_namespace)
    other = RedisLimiter(redis_client, policy, namespace=f"{redis_namespace}-other")

    async def scenario() -> tuple[bool, bool]:
        await mine.decide("a", 0)
        await other.decide("a", 0)
        await mine.reset()
        return (await mine.decide("a", 0)).allowed, (await other.decide("a", 0)).allowed

    assert loop.run_until_complete(scenario()) == (True, False)


def test_a_policy_beyond_exact_lua_numbers_is_refused(
    redis_client: redis.asyncio.Redis,
) -> None:
    """The product burst * interval must stay below 2**53 ns, where Lua's doubles are exact."""
    with pytest.raises(ValueError, match="2\\*\\*53"):
        RedisLimiter(redis_client, RatePolicy(burst=10**6, interval_ns=10**10))


def test_a_cost_outside_zero_to_burst_is_refused(
    redis_client: redis.asyncio.Redis, loop: asyncio.AbstractEventLoop
) -> None:
    """The same validation as bmcore.decide()."""
    limiter = RedisLimiter(redis_client, RatePolicy(burst=2, interval_ns=NS))
    with pytest.raises(ValueError, match="cost"):
        loop.run_until_complete(limiter.decide("a", 0, 3))


# --- Redis unreachable: a documented, configurable choice -----------------------------------


@pytest.fixture
def dead_redis(loop: asyncio.AbstractEventLoop) -> Iterator[redis.asyncio.Redis]:
    """A client for a port where nothing listens, with short time-outs."""
    connection = connect_redis("redis://127.0.0.1:1/0")
    try:
        yield connection
    finally:
        loop.run_until_complete(connection.aclose())


def test_an_unreachable_redis_raises_limiter_unavailable(
    dead_redis: redis.asyncio.Redis, loop: asyncio.AbstractEventLoop
) -> None:
    """Connection errors become LimiterUnavailableError, for the app to decide."""
    limiter = RedisLimiter(dead_redis, RatePolicy(burst=2, interval_ns=NS))
    with pytest.raises(LimiterUnavailableError, match="Redis"):
        loop.run_until_complete(limiter.decide("a", 0))


# The server fixtures of tests/conftest.py, on bmserver with a limiter whose Redis is down.


@pytest.fixture
def backend() -> str:
    """The real bmserver: the fake has no Redis."""
    return "memory"


@pytest.fixture(params=["open", "closed"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Both choices for an unreachable limiter."""
    return Settings(on_limiter_error="open" if request.param == "open" else "closed")


@pytest.fixture
def limiter() -> RedisLimiter:
    """A RedisLimiter for a port where nothing listens (the client connects lazily)."""
    connection = connect_redis("redis://127.0.0.1:1/0")
    return RedisLimiter(connection, RatePolicy(burst=2, interval_ns=NS))


def test_an_unreachable_limiter_fails_open_or_closed_as_configured(
    client: Client, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """open: 201 without RateLimit headers and one warning; closed: 503 with Retry-After."""
    with caplog.at_level(logging.WARNING, logger="bmserver"):
        replies = [client.post("/api/ingest/backup", backup(jobName=f"j{n}")) for n in range(3)]
    warnings = [r for r in caplog.records if "rate limiter unavailable" in r.getMessage()]
    assert len(warnings) == 1  # once per interval, not once per request
    if settings.on_limiter_error == "open":
        assert [reply.status for reply in replies] == [201, 201, 201]
        assert "ratelimit" not in replies[0].headers
    else:
        for reply in replies:
            problem = assert_problem(reply, 503, "rate_limiter_unavailable")
            assert "retry" in problem["detail"]
            assert reply.headers["retry-after"] == "5"
