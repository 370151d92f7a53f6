"""The Limiter contract: one suite, run against MemoryLimiter and RedisLimiter alike.

The policy refills one token an hour, so that nothing refills while a test runs whichever
clock the limiter reads (the caller's for MemoryLimiter, Redis's for RedisLimiter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from bmcore import Decision, RatePolicy
from bmserver import Limiter, MemoryLimiter

T = TypeVar("T")
BURST = 3
POLICY = RatePolicy.per_second(1 / 3600, burst=BURST)


class Run:
    """Runs a limiter's coroutines on one loop (a Redis client belongs to its loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __call__(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` to completion on the loop."""
        return self.loop.run_until_complete(coroutine)


@pytest.fixture
def run() -> Iterator[Run]:
    """A loop of the test's own."""
    loop = asyncio.new_event_loop()
    try:
        yield Run(loop)
    finally:
        loop.close()


@pytest.fixture(params=["memory", "redis"])
def limiter(request: pytest.FixtureRequest, run: Run) -> Iterator[Limiter]:
    """Each implementation, on an empty state of its own."""
    if request.param == "memory":
        yield MemoryLimiter(POLICY)
        return
    from bmserver import RedisLimiter, connect_redis  # noqa: PLC0415 - redis is an extra

    url: str = request.getfixturevalue("redis_url")
    namespace: str = request.getfixturevalue("redis_namespace")
    limiter = RedisLimiter(connect_redis(url), POLICY, namespace=namespace, owns_client=True)
    try:
        yield limiter
    finally:
        run(limiter.reset())
        run(limiter.close())


def _decide(run: Run, limiter: Limiter, key: str, cost: int = 1) -> Decision:
    return run(limiter.decide(key, 0, cost))


def test_a_burst_is_admitted_then_denied(limiter: Limiter, run: Run) -> None:
    """BURST requests pass with remaining counting down; the next is denied with Retry-After."""
    decisions = [_decide(run, limiter, "a") for _ in range(BURST + 1)]
    assert [d.allowed for d in decisions] == [True] * BURST + [False]
    assert [d.remaining for d in decisions] == [BURST - 1 - n for n in range(BURST)] + [0]
    assert decisions[-1].retry_after_s >= 1


def test_keys_are_independent(limiter: Limiter, run: Run) -> None:
    """Draining one key leaves another key's bucket full."""
    for _ in range(BURST):
        _decide(run, limiter, "a")
    assert not _decide(run, limiter, "a").allowed
    assert _decide(run, limiter, "b").remaining == BURST - 1


def test_a_peek_and_a_denial_cost_nothing(limiter: Limiter, run: Run) -> None:
    """A peek (cost 0) reports without consuming; a denied request leaves the state as it was."""
    assert _decide(run, limiter, "a", 0).remaining == BURST
    assert _decide(run, limiter, "a", BURST).allowed
    denied = _decide(run, limiter, "a")
    assert not denied.allowed
    assert _decide(run, limiter, "a", 0) == Decision(True, 0, 0, denied.reset_s)


def test_a_cost_above_the_burst_is_refused(limiter: Limiter, run: Run) -> None:
    """A request that could never pass is a caller's error, not a denial."""
    with pytest.raises(ValueError, match="cost"):
        _decide(run, limiter, "a", BURST + 1)


def test_reset_refills_every_bucket(limiter: Limiter, run: Run) -> None:
    """After reset() every key starts from a full bucket."""
    for _ in range(BURST):
        _decide(run, limiter, "a")
    run(limiter.reset())
    assert _decide(run, limiter, "a").remaining == BURST - 1


def test_a_refund_gives_back_what_a_charge_took(limiter: Limiter, run: Run) -> None:
    """A refunded charge leaves the tokens as if it had never been made, and never more."""
    assert _decide(run, limiter, "a", 2).allowed
    run(limiter.refund("a", 0))
    assert _decide(run, limiter, "a", 0).remaining == BURST - 1
    run(limiter.refund("a", 0))
    run(limiter.refund("a", 0))  # nothing left to give back: the bucket stays full
    assert _decide(run, limiter, "a", 0).remaining == BURST
    run(limiter.refund("never-charged", 0))
    assert _decide(run, limiter, "never-charged", 0).remaining == BURST


def test_a_refund_above_the_burst_is_refused(limiter: Limiter, run: Run) -> None:
    """Giving back more than a bucket holds is a caller's error."""
    with pytest.raises(ValueError, match="cost"):
        run(limiter.refund("a", 0, BURST + 1))


def test_the_policy_is_the_one_given(limiter: Limiter) -> None:
    """The policy shown in RateLimit-Policy headers is the limiter's own."""
    assert limiter.policy == POLICY
