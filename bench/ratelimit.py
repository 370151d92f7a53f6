"""3. Rate limiter: decisions per second and bytes per tracked key, in bounded memory.

The baseline is the cheapest limiter there is, a fixed-window counter in a plain dict
(``counts[key] += 1``): it shows what the GCRA bookkeeping and the lock cost on top of the
dictionary work that any per-key limiter does.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Final

from bench._report import Figure, Goal
from bmcore import KeyedLimiter, RatePolicy, decide

NAME: Final = "3. Rate limiter"
#: One request per second with a burst of 60, the server's default: every key stays tracked.
POLICY: Final = RatePolicy.per_second(1, burst=60)
UNDER_A_MICROSECOND: Final = Goal(on="value", bound="at most", limit=1000.0)
BYTES_PER_KEY: Final = Goal(on="value", bound="at most", limit=150.0)
BOUNDED: Final = Goal(on="ratio", bound="at most", limit=1.0)


def _keys(count: int) -> list[str]:
    """Distinct keys shaped like the server's (a key id), built before anything is measured."""
    return [f"key-{n:07d}" for n in range(count)]


def _one_key(calls: int) -> list[Figure]:
    """One key sending one request per interval: every request admitted, state kept."""
    times = [n * POLICY.interval_ns for n in range(calls)]
    best_pure = best_keyed = baseline = float("inf")
    for _ in range(3):
        state: int | None = None
        started = time.perf_counter_ns()
        for now in times:
            _, state = decide(state, now, POLICY)
        best_pure = min(best_pure, (time.perf_counter_ns() - started) / calls)
        decide_key = KeyedLimiter[str](POLICY).decide
        started = time.perf_counter_ns()
        for now in times:
            decide_key("key-a", now)
        best_keyed = min(best_keyed, (time.perf_counter_ns() - started) / calls)
        counts: dict[str, int] = {}
        started = time.perf_counter_ns()
        for _ in times:
            counts["key-a"] = counts.get("key-a", 0) + 1
        baseline = min(baseline, (time.perf_counter_ns() - started) / calls)
    return [
        Figure(
            NAME,
            "decide(), one key",
            best_pure,
            "ns/decision",
            "dict counter",
            baseline,
            UNDER_A_MICROSECOND,
        ),
        Figure(
            NAME,
            "KeyedLimiter.decide, one key",
            best_keyed,
            "ns/decision",
            "dict counter",
            baseline,
            UNDER_A_MICROSECOND,
        ),
    ]


def _many_keys(count: int) -> Figure:
    """Each request from a key not seen before: every decision inserts a tracked key."""
    keys = _keys(count)
    best = float("inf")
    baseline = float("inf")
    for _ in range(2):
        limiter = KeyedLimiter[str](POLICY, max_keys=count)
        decide_key = limiter.decide
        started = time.perf_counter_ns()
        for key in keys:
            decide_key(key, 0)
        best = min(best, (time.perf_counter_ns() - started) / count)
        counts: dict[str, int] = {}
        started = time.perf_counter_ns()
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        baseline = min(baseline, (time.perf_counter_ns() - started) / count)
        if len(limiter) != count:
            msg = f"{count} keys each admitted once, but {len(limiter)} are tracked"
            raise AssertionError(msg)
    return Figure(
        NAME,
        f"KeyedLimiter.decide, {count:,} distinct keys",
        best,
        "ns/decision",
        "dict counter",
        baseline,
        UNDER_A_MICROSECOND,
    )


def _traced_bytes(fill: Callable[[], object]) -> tuple[int, object]:
    """Bytes still allocated after ``fill()``, with what it returned (kept alive until then)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = fill()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, kept


def _bytes_per_key(count: int) -> Figure:
    """Memory the limiter adds per active key (the keys' own strings belong to the caller)."""
    keys = _keys(count)

    def fill_limiter() -> KeyedLimiter[str]:
        limiter = KeyedLimiter[str](POLICY, max_keys=count)
        for key in keys:
            limiter.decide(key, 0)
        return limiter

    def fill_dict() -> dict[str, int]:
        counts: dict[str, int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        return counts

    limiter_bytes, _ = _traced_bytes(fill_limiter)
    dict_bytes, _ = _traced_bytes(fill_dict)
    return Figure(
        NAME,
        f"bytes per active key ({count:,} keys)",
        limiter_bytes / count,
        "B/key",
        "dict counter",
        dict_bytes / count,
        BYTES_PER_KEY,
    )


def _bounded(max_keys: int) -> Figure:
    """Twice max_keys distinct keys, all still refilling: tracked keys must stay within bound."""
    limiter = KeyedLimiter[str](POLICY, max_keys=max_keys)
    refused = 0
    for key in _keys(2 * max_keys):
        refused += not limiter.decide(key, 0).allowed
    if refused != max_keys:
        msg = f"{refused} new keys refused, expected {max_keys} once full"
        raise AssertionError(msg)
    return Figure(
        NAME,
        f"keys tracked after {2 * max_keys:,} distinct keys",
        len(limiter),
        "keys",
        "max_keys",
        max_keys,
        BOUNDED,
        details={"refused_new_keys": refused},
    )


def run(*, smoke: bool) -> list[Figure]:
    """The figures of the rate limiter; a smoke run uses a thousand keys instead of a million."""
    calls = 1_000 if smoke else 300_000
    keys = 1_000 if smoke else 1_000_000
    return [*_one_key(calls), _many_keys(keys), _bytes_per_key(keys), _bounded(keys // 10)]
