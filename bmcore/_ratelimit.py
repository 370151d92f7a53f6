"""Token-bucket rate limiting as GCRA on integer nanoseconds.

GCRA (the generic cell rate algorithm) keeps one integer per key, the *theoretical arrival
time* (TAT): the instant at which the bucket would be full again. With ``T`` the time one
token takes to refill and ``burst`` the bucket size, a request of cost ``c`` at time ``now``
is admitted when ``max(TAT, now) + c*T - now <= burst*T``; admitting it moves TAT to
``max(TAT, now) + c*T``. Integer nanoseconds make it exact: no float drift, however long it
runs. A bucket whose TAT has passed is full and needs no state at all.

The caller passes the clock (a monotonic ``now_ns``); nothing here reads one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable
from typing import Final, Generic, NamedTuple, TypeVar, cast

import attrs

__all__ = ["Decision", "KeyedLimiter", "RatePolicy", "decide", "parse_rate", "refund"]

_NS_PER_S: Final = 1_000_000_000


_RATE: Final = re.compile(
    r"^\s*(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>s|sec|second|m|min|minute|h|hour)\s*$"
)
_UNIT_SECONDS: Final = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60}
_UNIT_SECONDS.update({"h": 3600, "hour": 3600})


def parse_rate(text: str) -> float:
    """A rate written as ``COUNT/UNIT`` (``1/s``, ``30/min``, ``100/h``), in tokens per second.

    The one syntax of every command line and setting that takes a rate.

    >>> parse_rate("30/min")
    0.5
    """
    match = _RATE.match(text)
    if match is None or float(match["count"]) <= 0:
        msg = f"invalid rate {text!r}: give a positive count per unit, e.g. 1/s, 30/min, 100/h"
        raise ValueError(msg)
    return float(match["count"]) / _UNIT_SECONDS[match["unit"]]


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        msg = f"{attribute.name} must be a positive integer, got {value!r}"
        raise ValueError(msg)


@attrs.frozen(kw_only=True)
class RatePolicy:
    """A bucket of ``burst`` tokens refilling one token every ``interval_ns`` nanoseconds.

    >>> policy = RatePolicy.per_second(1, burst=60)   # the server's default
    >>> policy.burst, policy.interval_ns
    (60, 1000000000)
    """

    burst: int = attrs.field(validator=_positive)
    interval_ns: int = attrs.field(validator=_positive)

    @classmethod
    def per_second(cls, rate: float, *, burst: int) -> RatePolicy:
        """A policy refilling ``rate`` tokens per second (rounded to whole nanoseconds)."""
        if not rate > 0:
            msg = f"rate must be positive, got {rate!r}"
            raise ValueError(msg)
        return cls(burst=burst, interval_ns=max(1, round(_NS_PER_S / rate)))

    @property
    def window_s(self) -> int:
        """Seconds a drained bucket takes to refill completely (rounded up)."""
        return -(-self.burst * self.interval_ns // _NS_PER_S)


class Decision(NamedTuple):
    """The answer to one request: whether it may pass, and what to tell the client.

    ``remaining`` is the number of tokens left after this request; ``retry_after_s`` the whole
    seconds to wait before the same request would pass (0 when allowed, at least 1 when
    denied); ``reset_s`` the whole seconds until the bucket is full again.
    """

    allowed: bool
    remaining: int
    retry_after_s: int
    reset_s: int


# A NamedTuple's own constructor is a Python function; tuple.__new__ builds it in half the time.
# (typeshed types tuple.__new__ with an unsolved type variable; the cast states what it does.)
_new_decision: Final = cast(
    "Callable[[type[Decision], tuple[bool, int, int, int]], Decision]",
    tuple.__new__,  # pyright: ignore[reportUnknownMemberType]
)


def _ceil_s(ns: int) -> int:
    return -(-ns // _NS_PER_S)


def decide(
    tat: int | None, now_ns: int, policy: RatePolicy, cost: int = 1
) -> tuple[Decision, int | None]:
    """Decide one request; returns the decision and the key's new state (its TAT).

    ``tat`` is the key's state from the previous call, or ``None`` for a key never seen (or
    whose bucket is full). The returned state is ``None`` when the bucket is full again, so
    callers need not store it. ``cost`` is 0 (a peek) to ``policy.burst``.

    >>> policy = RatePolicy(burst=2, interval_ns=1_000_000_000)
    >>> first, state = decide(None, 0, policy)
    >>> second, state = decide(state, 0, policy)
    >>> third, state = decide(state, 0, policy)
    >>> [d.allowed for d in (first, second, third)], third.retry_after_s
    ([True, True, False], 1)
    """
    interval = policy.interval_ns
    capacity = policy.burst * interval
    _check_cost(cost, policy)
    start = now_ns if tat is None or tat < now_ns else tat
    new_tat = start + cost * interval
    backlog = new_tat - now_ns
    if backlog <= capacity:
        remaining = (capacity - backlog) // interval
        decision = _new_decision(Decision, (True, remaining, 0, _ceil_s(backlog)))
        return decision, (new_tat if backlog > 0 else None)
    # Denied: the state is unchanged, so a denied request costs nothing.
    wait = backlog - capacity
    return (
        Decision(
            False,
            # Below zero only when the clock went back behind the state; report none left.
            max(0, (capacity - (start - now_ns)) // interval),
            max(1, _ceil_s(wait)),
            _ceil_s(start - now_ns),
        ),
        tat,
    )


def refund(tat: int | None, now_ns: int, policy: RatePolicy, cost: int = 1) -> int | None:
    """Give back ``cost`` tokens that an admitted :func:`decide` took; returns the new state.

    Undoes the charge, never more: the bucket holds at most ``burst`` tokens, so a refund of a
    bucket that has refilled meanwhile gives ``None`` (full), exactly as if the charge had
    never been made. For a charge taken before the outcome was known, such as a failed
    authentication charged before the key is looked up and refunded when the key is valid.

    >>> policy = RatePolicy(burst=2, interval_ns=1_000_000_000)
    >>> _, state = decide(None, 0, policy)
    >>> refund(state, 0, policy) is None
    True
    """
    _check_cost(cost, policy)
    if tat is None:
        return None
    new_tat = tat - cost * policy.interval_ns
    return new_tat if new_tat > now_ns else None


def _check_cost(cost: int, policy: RatePolicy) -> None:
    if not 0 <= cost <= policy.burst:
        msg = f"cost must be between 0 and the burst ({policy.burst}), got {cost}"
        raise ValueError(msg)


KeyT = TypeVar("KeyT", bound=Hashable)


class KeyedLimiter(Generic[KeyT]):
    """Many buckets under one policy, in bounded memory; safe to share between threads.

    Only keys whose bucket is not full hold state (one integer each). At most ``max_keys`` keys
    are tracked: when that many buckets are all still refilling, a *new* key is refused until
    the oldest one refills, rather than evicting a bucket early and letting its key exceed its
    quota.

    >>> limiter = KeyedLimiter(RatePolicy(burst=1, interval_ns=10), max_keys=100)
    >>> limiter.decide("key-a", now_ns=0).allowed, limiter.decide("key-a", now_ns=0).allowed
    (True, False)
    >>> limiter.decide("key-a", now_ns=10).allowed
    True
    """

    def __init__(self, policy: RatePolicy, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            msg = f"max_keys must be at least 1, got {max_keys}"
            raise ValueError(msg)
        self.policy: Final = policy
        self.max_keys: Final = max_keys
        # Insertion order is the order of last admission. A key admitted at time u has
        # TAT <= u + burst*interval, so the front holds the keys most likely to have refilled.
        self._tats: dict[KeyT, int] = {}
        self._lock = threading.Lock()
        # When full of refilling buckets: a lower bound of the earliest TAT among them, so that
        # new keys are refused in O(1) until then instead of scanning every key on every
        # request. None when unknown. Updates only raise TATs and removals only raise the
        # minimum, so the bound stays valid; a new key lowers it to its own TAT.
        self._full_until: int | None = None

    def __len__(self) -> int:
        """The number of keys holding state (buckets not yet full)."""
        return len(self._tats)

    def decide(self, key: KeyT, now_ns: int, cost: int = 1) -> Decision:
        """Decide one request for ``key`` at ``now_ns`` (monotonic nanoseconds)."""
        tats = self._tats
        policy = self.policy
        with self._lock:
            tat = tats.get(key)
            if tat is None and cost and len(tats) >= self.max_keys:
                wait = self._wait_for_room(now_ns)
                if wait:
                    _check_cost(cost, policy)
                    return Decision(False, 0, wait, wait)
            # The commonest case, a request that is admitted, is decide() inlined: two calls
            # less is a third of the time. tests/core/test_ratelimit.py checks with hypothesis
            # that the limiter and decide() agree.
            if 0 < cost <= policy.burst:
                interval = policy.interval_ns
                new_tat = (now_ns if tat is None or tat < now_ns else tat) + cost * interval
                backlog = new_tat - now_ns
                capacity = policy.burst * interval
                if backlog <= capacity:
                    if tat is not None:
                        del tats[key]  # re-insert at the back: the order of last admission
                    tats[key] = new_tat  # backlog > 0: a cost of at least one token
                    if self._full_until is not None and new_tat < self._full_until:
                        self._full_until = new_tat
                    self._drop_oldest_if_refilled(now_ns)
                    return _new_decision(
                        Decision,
                        (True, (capacity - backlog) // interval, 0, -(-backlog // _NS_PER_S)),
                    )
            # What is left: a denial (the state stays), a peek, or a cost decide() refuses.
            decision, _ = decide(tat, now_ns, policy, cost)
            if tat is not None and tat <= now_ns:
                del tats[key]  # a peek at a bucket that has refilled: drop its stale state
            self._drop_oldest_if_refilled(now_ns)
            return decision

    def _drop_oldest_if_refilled(self, now_ns: int) -> None:
        """Amortised clean-up: drop one refilled bucket from the front per call."""
        tats = self._tats
        if tats:
            oldest = next(iter(tats))
            if tats[oldest] <= now_ns:
                del tats[oldest]

    def refund(self, key: KeyT, now_ns: int, cost: int = 1) -> None:
        """Give back ``cost`` tokens an admitted :meth:`decide` took for ``key`` (bmcore.refund)."""
        with self._lock:
            tat = self._tats.get(key)
            new_tat = refund(tat, now_ns, self.policy, cost)
            if new_tat is None:
                self._tats.pop(key, None)
            else:
                # In place, keeping its position: a lower TAT cannot break the invariant that
                # the front holds the keys most likely to have refilled, and _full_until stays
                # a valid lower bound only if it is lowered with the TAT.
                self._tats[key] = new_tat
                if self._full_until is not None and new_tat < self._full_until:
                    self._full_until = new_tat

    def reset(self, key: KeyT) -> None:
        """Forget ``key``'s state: its bucket is full again."""
        with self._lock:
            self._tats.pop(key, None)  # the minimum TAT can only rise: _full_until stays valid

    def clear(self) -> None:
        """Forget every key's state."""
        with self._lock:
            self._tats.clear()
            self._full_until = None

    def _wait_for_room(self, now_ns: int) -> int:
        """Drop refilled buckets; 0 if that made room, else whole seconds until it will."""
        full_until = self._full_until
        if full_until is None or now_ns >= full_until:
            tats = self._tats
            for key in [key for key, tat in tats.items() if tat <= now_ns]:
                del tats[key]
            if len(tats) < self.max_keys:
                return 0
            full_until = self._full_until = min(tats.values())
        return max(1, _ceil_s(full_until - now_ns))
