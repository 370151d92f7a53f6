import bisect
import itertools
import sys
import threading
from typing import NamedTuple

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bmcore import Decision, KeyedLimiter, RatePolicy, decide, parse_rate, refund

NS = 1_000_000_000


# --- strategies and helpers -----------------------------------------------------------------

policies = st.builds(RatePolicy, burst=st.integers(1, 20), interval_ns=st.integers(1, NS))
starts = st.integers(-(10**12), 10**12)


class Step(NamedTuple):
    """One request of a scenario: how long after the previous one, and its cost."""

    increment: int
    cost: int


class Scenario(NamedTuple):
    """A policy, a start time and requests at non-decreasing times."""

    policy: RatePolicy
    start: int
    steps: list[Step]


class Record(NamedTuple):
    """What happened to one request."""

    now: int
    cost: int
    before: int | None
    decision: Decision
    after: int | None


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Requests bunched close together, spread one interval apart, or after long pauses."""
    policy = draw(policies)
    interval, burst = policy.interval_ns, policy.burst
    increments = st.one_of(
        st.just(0),
        st.integers(0, interval),
        st.integers(0, 3 * burst * interval),
    )
    costs = st.one_of(st.just(1), st.integers(1, burst))
    steps = draw(st.lists(st.builds(Step, increments, costs), max_size=40))
    return Scenario(policy, draw(starts), steps)


def run(scenario: Scenario) -> list[Record]:
    """Feed a scenario to decide(), threading the state through."""
    records: list[Record] = []
    state: int | None = None
    now = scenario.start
    for step in scenario.steps:
        now += step.increment
        decision, after = decide(state, now, scenario.policy, step.cost)
        records.append(Record(now, step.cost, state, decision, after))
        state = after
    return records


def assert_window_bound(admitted: list[tuple[int, int]], policy: RatePolicy) -> None:
    """In every closed window [a, b], at most burst + (b - a) // interval tokens are admitted.

    ``admitted`` holds (time, cost) pairs in non-decreasing time order.
    """
    times = [time for time, _ in admitted]
    totals = [0, *itertools.accumulate(cost for _, cost in admitted)]
    for a in times:
        low = bisect.bisect_left(times, a)
        for b in times[low:]:
            high = bisect.bisect_right(times, b)
            spent = totals[high] - totals[low]
            assert spent <= policy.burst + (b - a) // policy.interval_ns, (a, b, spent)


def peek(state: int | None, now: int, policy: RatePolicy) -> Decision:
    """The decision for a request of cost 0: the tokens available at ``now``."""
    return decide(state, now, policy, 0)[0]


# --- RatePolicy -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3", None])
def test_policy_rejects_a_burst_that_is_not_a_positive_int(bad: object) -> None:
    """The burst must be a positive int (not a float, bool or string)."""
    with pytest.raises(ValueError, match="burst"):
        RatePolicy(burst=bad, interval_ns=NS)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -5, 1e9, False, "1000"])
def test_policy_rejects_an_interval_that_is_not_a_positive_int(bad: object) -> None:
    """The interval must be a positive int of nanoseconds."""
    with pytest.raises(ValueError, match="interval_ns"):
        RatePolicy(burst=1, interval_ns=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [0, -1, 0.0, -0.5, float("nan"), float("-inf")])
def test_per_second_rejects_a_rate_that_is_not_positive(rate: float) -> None:
    """per_second refuses a zero, negative or NaN rate."""
    with pytest.raises(ValueError, match="rate"):
        RatePolicy.per_second(rate, burst=1)


def test_per_second_rejects_a_bad_burst() -> None:
    """per_second validates the burst like the constructor."""
    with pytest.raises(ValueError, match="burst"):
        RatePolicy.per_second(1, burst=0)


@pytest.mark.parametrize(
    ("rate", "burst", "interval_ns", "window_s"),
    [
        (1, 60, NS, 60),
        (2, 3, NS // 2, 2),
        (3, 1, 333_333_333, 1),
        (3, 3, 333_333_333, 1),
        (0.5, 4, 2 * NS, 8),
        (10**12, 1, 1, 1),
    ],
)
def test_per_second_and_window(rate: float, burst: int, interval_ns: int, window_s: int) -> None:
    """per_second rounds to whole nanoseconds; window_s is the refill time rounded up."""
    policy = RatePolicy.per_second(rate, burst=burst)
    assert policy == RatePolicy(burst=burst, interval_ns=interval_ns)
    assert policy.window_s == window_s


# --- decide: examples -----------------------------------------------------------------------


def test_burst_is_admitted_at_once_then_denied() -> None:
    """A fresh bucket admits burst requests at one instant, counting down, then denies."""
    policy = RatePolicy(burst=3, interval_ns=NS)
    state: int | None = None
    decisions: list[Decision] = []
    for _ in range(5):
        decision, state = decide(state, 0, policy)
        decisions.append(decision)
    assert decisions == [
        Decision(allowed=True, remaining=2, retry_after_s=0, reset_s=1),
        Decision(allowed=True, remaining=1, retry_after_s=0, reset_s=2),
        Decision(allowed=True, remaining=0, retry_after_s=0, reset_s=3),
        Decision(allowed=False, remaining=0, retry_after_s=1, reset_s=3),
        Decision(allowed=False, remaining=0, retry_after_s=1, reset_s=3),
    ]
    assert state == 3 * NS


def test_denied_request_keeps_the_state() -> None:
    """A denied request costs nothing: the state it returns is the state it was given."""
    policy = RatePolicy(burst=1, interval_ns=NS)
    _, state = decide(None, 0, policy)
    decision, after = decide(state, NS // 2, policy)
    assert not decision.allowed
    assert after == state


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    """A wait of a fraction of a second is reported as 1 s; 1.5 s as 2 s."""
    policy = RatePolicy(burst=1, interval_ns=3 * NS // 2)
    _, state = decide(None, 0, policy)
    assert decide(state, 0, policy)[0].retry_after_s == 2
    assert decide(state, NS, policy)[0].retry_after_s == 1
    assert decide(state, 3 * NS // 2 - 1, policy)[0].retry_after_s == 1
    assert decide(state, 3 * NS // 2, policy)[0].allowed


def test_retry_after_is_at_least_one_second_for_a_tiny_wait() -> None:
    """Even a wait of 1 ns is reported as retry after 1 s, never 0."""
    policy = RatePolicy(burst=1, interval_ns=10)
    _, state = decide(None, 0, policy)
    decision, _ = decide(state, 9, policy)
    assert not decision.allowed
    assert decision.retry_after_s == 1


def test_tokens_refill_one_per_interval() -> None:
    """After draining, one token is back after one interval, two after two."""
    policy = RatePolicy(burst=3, interval_ns=NS)
    _, state = decide(None, 0, policy, 3)
    assert peek(state, NS - 1, policy).remaining == 0
    assert peek(state, NS, policy).remaining == 1
    assert peek(state, 2 * NS, policy).remaining == 2
    assert peek(state, 3 * NS, policy).remaining == 3


def test_cost_zero_peeks_without_consuming() -> None:
    """A request of cost 0 is allowed, reports the tokens left and leaves the state alone."""
    policy = RatePolicy(burst=3, interval_ns=NS)
    _, state = decide(None, 0, policy, 2)
    decision, after = decide(state, 0, policy, 0)
    assert decision == Decision(allowed=True, remaining=1, retry_after_s=0, reset_s=2)
    assert after == state
    assert decide(None, 0, policy, 0) == (
        Decision(allowed=True, remaining=3, retry_after_s=0, reset_s=0),
        None,
    )


def test_peek_at_a_drained_bucket_is_allowed() -> None:
    """A peek at a drained bucket is allowed and reports 0 tokens."""
    policy = RatePolicy(burst=2, interval_ns=NS)
    _, state = decide(None, 0, policy, 2)
    decision, after = decide(state, 0, policy, 0)
    assert decision.allowed
    assert decision.remaining == 0
    assert after == state


def test_cost_up_to_burst_is_allowed() -> None:
    """A request may take the whole burst at once, but not one token more."""
    policy = RatePolicy(burst=4, interval_ns=NS)
    decision, state = decide(None, 0, policy, 4)
    assert decision == Decision(allowed=True, remaining=0, retry_after_s=0, reset_s=4)
    assert state == 4 * NS


@pytest.mark.parametrize("cost", [-1, 5, 100])
def test_cost_outside_zero_to_burst_is_refused(cost: int) -> None:
    """A negative cost or one above the burst raises ValueError."""
    policy = RatePolicy(burst=4, interval_ns=NS)
    with pytest.raises(ValueError, match="cost"):
        decide(None, 0, policy, cost)


def test_big_request_waits_for_enough_tokens() -> None:
    """A request of cost 3 on a drained bucket of 3 waits until all 3 tokens are back."""
    policy = RatePolicy(burst=3, interval_ns=NS)
    _, state = decide(None, 0, policy, 3)
    decision, _ = decide(state, NS, policy, 3)
    assert not decision.allowed
    assert decision.remaining == 1
    assert decision.retry_after_s == 2
    assert decide(state, 3 * NS, policy, 3)[0].allowed


# --- decide: properties ---------------------------------------------------------------------


@given(scenarios())
def test_window_bound_holds(scenario: Scenario) -> None:
    """In any closed window [a, b] at most burst + (b - a) // interval tokens are admitted."""
    admitted = [(r.now, r.cost) for r in run(scenario) if r.decision.allowed]
    assert_window_bound(admitted, scenario.policy)


@given(scenarios().map(lambda s: s._replace(steps=[step._replace(cost=1) for step in s.steps])))
def test_window_bound_holds_for_unit_requests(scenario: Scenario) -> None:
    """For requests of cost 1, at most burst + (b - a) // interval pass in any window [a, b]."""
    admitted = [(r.now, r.cost) for r in run(scenario) if r.decision.allowed]
    assert_window_bound(admitted, scenario.policy)


@given(scenarios())
def test_decision_fields_are_consistent(scenario: Scenario) -> None:
    """Allowed: retry 0 and 0 <= remaining <= burst - cost; denied: retry >= 1, state kept."""
    policy = scenario.policy
    for record in run(scenario):
        decision = record.decision
        if decision.allowed:
            assert decision.retry_after_s == 0
            assert 0 <= decision.remaining <= policy.burst - record.cost
        else:
            assert decision.retry_after_s >= 1
            assert 0 <= decision.remaining < record.cost
            assert record.after == record.before
        assert 0 <= decision.reset_s <= policy.window_s


@given(scenarios())
def test_denied_request_passes_exactly_retry_after_later(scenario: Scenario) -> None:
    """A denied request retried retry_after_s later (no other traffic) passes, not a second sooner.

    Not a second sooner: at retry_after_s - 1 seconds it would still be denied, so the hint is
    the tightest whole number of seconds.
    """
    policy = scenario.policy
    for record in run(scenario):
        if record.decision.allowed:
            continue
        wait = record.decision.retry_after_s
        assert decide(record.before, record.now + wait * NS, policy, record.cost)[0].allowed
        if wait > 1:
            earlier = record.now + (wait - 1) * NS
            assert not decide(record.before, earlier, policy, record.cost)[0].allowed


@given(scenarios())
def test_remaining_counts_the_unit_requests_that_still_pass(scenario: Scenario) -> None:
    """After an allowed request, exactly `remaining` more unit requests pass at the same instant."""
    policy = scenario.policy
    for record in run(scenario):
        if not record.decision.allowed:
            continue
        state = record.after
        for _ in range(record.decision.remaining):
            decision, state = decide(state, record.now, policy)
            assert decision.allowed
        assert not decide(state, record.now, policy)[0].allowed


@given(scenarios())
def test_reset_is_when_the_bucket_is_full_again(scenario: Scenario) -> None:
    """reset_s seconds later the bucket is full (no state); a second sooner it is not."""
    policy = scenario.policy
    for record in run(scenario):
        reset = record.decision.reset_s
        full = peek(record.after, record.now + reset * NS, policy)
        assert full.remaining == policy.burst
        assert decide(record.after, record.now + reset * NS, policy, 0)[1] is None
        if reset > 0:
            almost = record.now + (reset - 1) * NS
            assert decide(record.after, almost, policy, 0)[1] is not None


@given(scenarios())
def test_state_is_none_exactly_when_the_bucket_is_full(scenario: Scenario) -> None:
    """The returned state is None iff the bucket is full again; a kept state lies in the future."""
    policy = scenario.policy
    for record in run(scenario):
        full = peek(record.after, record.now, policy).remaining == policy.burst
        assert (record.after is None) == full
        assert record.after is None or record.after > record.now


@given(policies, starts, st.integers(1, 50))
def test_steady_stream_at_the_rate_from_an_empty_state(
    policy: RatePolicy, start: int, count: int
) -> None:
    """One request per interval, starting from no state, always passes and never drains."""
    state: int | None = None
    for index in range(count):
        decision, state = decide(state, start + index * policy.interval_ns, policy)
        assert decision.allowed
        assert decision.remaining == policy.burst - 1


@given(policies, starts, st.integers(1, 50))
def test_steady_stream_at_the_rate_from_a_drained_bucket(
    policy: RatePolicy, start: int, count: int
) -> None:
    """After draining the bucket, one request per interval still always passes."""
    decision, state = decide(None, start, policy, policy.burst)
    assert decision.allowed
    for index in range(1, count + 1):
        decision, state = decide(state, start + index * policy.interval_ns, policy)
        assert decision.allowed
        assert decision.remaining == 0


@given(scenarios(), st.integers(1, 60 * NS))
def test_a_clock_going_back_never_creates_tokens(scenario: Scenario, back: int) -> None:
    """At an earlier instant there are never more tokens, and admitting still consumes them.

    For the state left by some traffic and any earlier instant: a peek finds no more tokens
    than at the later instant, a request denied later is denied earlier too, and a request
    admitted earlier moves the state on by its full cost.
    """
    policy = scenario.policy
    records = run(scenario)
    state = records[-1].after if records else None
    later = records[-1].now if records else scenario.start
    earlier = later - back
    assert peek(state, earlier, policy).remaining <= peek(state, later, policy).remaining
    for cost in range(policy.burst + 1):
        at_later, _ = decide(state, later, policy, cost)
        at_earlier, new_state = decide(state, earlier, policy, cost)
        assert at_later.allowed or not at_earlier.allowed
        if at_earlier.allowed and state is not None:
            assert new_state is not None
            assert new_state >= state + cost * policy.interval_ns


@given(scenarios(), st.integers(0, 60 * NS))
def test_remaining_is_never_negative_even_if_the_clock_goes_back(
    scenario: Scenario, back: int
) -> None:
    """`remaining` is a number of tokens, 0 to burst, at any instant (earlier ones included)."""
    policy = scenario.policy
    records = run(scenario)
    state = records[-1].after if records else None
    now = (records[-1].now if records else scenario.start) - back
    for cost in range(policy.burst + 1):
        decision, _ = decide(state, now, policy, cost)
        assert 0 <= decision.remaining <= policy.burst, decision


# --- refund ---------------------------------------------------------------------------------


@given(scenarios(), st.integers(0, 3 * NS))
def test_refund_undoes_an_admitted_charge(scenario: Scenario, later: int) -> None:
    """A refund right after an admitted charge restores the state before it (a full one as None).

    And at any later instant, the refunded state offers the tokens the bucket would have had if
    the charge had never been made.
    """
    policy = scenario.policy
    for record in run(scenario):
        if not record.decision.allowed or record.cost == 0:
            continue
        kept = record.before is not None and record.before > record.now
        assert refund(record.after, record.now, policy, record.cost) == (
            record.before if kept else None
        )
        at = record.now + later
        refunded = refund(record.after, at, policy, record.cost)
        assert peek(refunded, at, policy) == peek(record.before, at, policy)


@given(policies, st.one_of(st.none(), starts), starts, st.integers(0, 20))
def test_refund_never_creates_more_than_a_full_bucket(
    policy: RatePolicy, tat: int | None, now: int, drawn_cost: int
) -> None:
    """The refunded state is None (full) or still in the future: never more than burst tokens."""
    cost = min(drawn_cost, policy.burst)
    refunded = refund(tat, now, policy, cost)
    assert refunded is None or refunded > now
    assert peek(refunded, now, policy).remaining <= policy.burst
    assert peek(refunded, now, policy).remaining >= peek(tat, now, policy).remaining


def test_refund_refuses_a_cost_outside_zero_to_burst() -> None:
    """A refund of more than a burst is a caller's bug, refused like such a charge."""
    with pytest.raises(ValueError, match="cost"):
        refund(None, 0, RatePolicy(burst=2, interval_ns=NS), 3)


# --- KeyedLimiter ---------------------------------------------------------------------------


def test_keyed_limiter_rejects_max_keys_below_one() -> None:
    """max_keys must be at least 1."""
    with pytest.raises(ValueError, match="max_keys"):
        KeyedLimiter(RatePolicy(burst=1, interval_ns=NS), max_keys=0)


def test_keys_are_independent() -> None:
    """Draining one key's bucket leaves another key's bucket full."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=2, interval_ns=NS))
    assert [limiter.decide("a", 0).allowed for _ in range(3)] == [True, True, False]
    assert limiter.decide("b", 0) == Decision(True, 1, 0, 1)
    assert len(limiter) == 2


def test_keyed_limiter_matches_decide() -> None:
    """For one key, the limiter gives exactly the decisions of the pure function."""
    policy = RatePolicy(burst=3, interval_ns=NS)
    limiter: KeyedLimiter[str] = KeyedLimiter(policy)
    state: int | None = None
    for now, cost in [(0, 1), (0, 2), (0, 1), (NS, 1), (NS, 0), (5 * NS, 3), (5 * NS, 1)]:
        expected, state = decide(state, now, policy, cost)
        assert limiter.decide("k", now, cost) == expected


@given(
    policy=policies,
    start=starts,
    requests=st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 3 * NS), st.integers(0, 20)), max_size=60
    ),
)
def test_keyed_limiter_matches_decide_per_key(
    policy: RatePolicy, start: int, requests: list[tuple[str, int, int]]
) -> None:
    """With room for every key, the limiter decides each key exactly as decide() on its own."""
    limiter: KeyedLimiter[str] = KeyedLimiter(policy)
    states: dict[str, int | None] = {}
    now = start
    for key, increment, drawn_cost in requests:
        now += increment
        cost = min(drawn_cost, policy.burst)
        expected, states[key] = decide(states.get(key), now, policy, cost)
        assert limiter.decide(key, now, cost) == expected


@given(
    policy=policies,
    start=starts,
    requests=st.lists(
        st.tuples(
            st.sampled_from("abc"), st.integers(0, 3 * NS), st.integers(0, 20), st.booleans()
        ),
        max_size=60,
    ),
)
def test_keyed_limiter_refund_matches_refund_per_key(
    policy: RatePolicy, start: int, requests: list[tuple[str, int, int, bool]]
) -> None:
    """Charges and refunds mixed: the limiter keeps each key's state as decide() and refund()."""
    limiter: KeyedLimiter[str] = KeyedLimiter(policy)
    states: dict[str, int | None] = {}
    now = start
    for key, increment, drawn_cost, refunding in requests:
        now += increment
        cost = min(drawn_cost, policy.burst)
        if refunding:
            states[key] = refund(states.get(key), now, policy, cost)
            limiter.refund(key, now, cost)
        else:
            expected, states[key] = decide(states.get(key), now, policy, cost)
            assert limiter.decide(key, now, cost) == expected
    for key in "abc":
        assert limiter.decide(key, now, 0) == decide(states.get(key), now, policy, 0)[0]


def test_refund_makes_room_in_a_full_limiter() -> None:
    """A key whose charge was refunded holds no state, so a new key finds room at once."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=5, interval_ns=NS), max_keys=1)
    assert limiter.decide("a", 0).allowed
    assert not limiter.decide("b", 0).allowed
    limiter.refund("a", 0)
    assert len(limiter) == 0
    assert limiter.decide("b", 0).allowed


def test_keyed_limiter_refuses_a_cost_above_the_burst() -> None:
    """The limiter validates the cost like decide()."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=2, interval_ns=NS))
    with pytest.raises(ValueError, match="cost"):
        limiter.decide("a", 0, 3)


def test_refilled_state_disappears_as_other_keys_are_used() -> None:
    """A key whose bucket has refilled holds no state once other keys make requests."""
    policy = RatePolicy(burst=5, interval_ns=NS)
    limiter: KeyedLimiter[str] = KeyedLimiter(policy)
    for index in range(10):
        assert limiter.decide(f"k{index}", 0).allowed
    assert len(limiter) == 10
    for _ in range(10):
        limiter.decide("other", NS)
    assert len(limiter) == 1  # only "other", which is still refilling


def test_a_peek_does_not_create_state() -> None:
    """A peek by an unknown key is allowed and tracks nothing; a peek at a refilled key drops it."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=2, interval_ns=NS))
    assert limiter.decide("a", 0, 0) == Decision(True, 2, 0, 0)
    assert len(limiter) == 0
    limiter.decide("a", 0)
    assert len(limiter) == 1
    assert limiter.decide("a", NS, 0) == Decision(True, 2, 0, 0)
    assert len(limiter) == 0


def test_new_key_is_refused_while_every_tracked_bucket_refills() -> None:
    """Over max_keys, a new key waits for a slot; tracked keys keep their own quota."""
    policy = RatePolicy(burst=2, interval_ns=NS)
    limiter: KeyedLimiter[str] = KeyedLimiter(policy, max_keys=2)
    assert limiter.decide("a", 0, 2).allowed
    assert limiter.decide("b", NS // 2, 1).allowed  # b is full again at 1.5 s
    refused = limiter.decide("c", NS)
    # Its own bucket is untouched; it may try again when a slot frees, in 1 s.
    assert refused == Decision(False, 0, 1, 1)
    assert len(limiter) == 2
    # The tracked keys still get exactly their own quota, no more and no less.
    assert limiter.decide("b", NS).allowed
    assert not limiter.decide("b", NS).allowed
    assert limiter.decide("a", NS).allowed
    assert not limiter.decide("a", NS).allowed
    # Once a bucket has refilled there is room again.
    assert limiter.decide("c", 3 * NS).allowed


def test_new_key_passes_after_the_retry_after_it_was_given() -> None:
    """A new key refused for lack of room passes when retried retry_after_s later."""
    policy = RatePolicy(burst=3, interval_ns=NS)
    limiter: KeyedLimiter[int] = KeyedLimiter(policy, max_keys=3)
    for key in range(3):
        assert limiter.decide(key, key * NS // 3, 3).allowed
    refused = limiter.decide(99, NS)
    assert not refused.allowed
    assert refused.retry_after_s == 2  # key 0 is full again at 3 s
    assert limiter.decide(99, NS + refused.retry_after_s * NS).allowed
    assert len(limiter) == 3


def test_reset_and_clear_forget_state() -> None:
    """reset() refills one key's bucket, clear() every bucket."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=1, interval_ns=NS))
    for key in "abc":
        limiter.decide(key, 0)
    limiter.reset("a")
    limiter.reset("never-seen")
    assert len(limiter) == 2
    assert limiter.decide("a", 0).allowed
    assert not limiter.decide("b", 0).allowed
    limiter.clear()
    assert len(limiter) == 0
    assert limiter.decide("b", 0).allowed
    assert limiter.decide("c", 0).allowed


def test_reset_makes_room_for_a_new_key() -> None:
    """After reset() frees a slot at max_keys, a new key is admitted."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=1, interval_ns=NS), max_keys=1)
    assert limiter.decide("a", 0).allowed
    assert not limiter.decide("b", 0).allowed
    limiter.reset("a")
    assert limiter.decide("b", 0).allowed


def test_room_is_made_when_a_bucket_refills_after_a_reset() -> None:
    """After a reset, a new key is admitted as soon as some tracked bucket has refilled."""
    policy = RatePolicy(burst=3, interval_ns=NS)
    limiter: KeyedLimiter[str] = KeyedLimiter(policy, max_keys=2)
    assert limiter.decide("a", 0, 3).allowed  # full again at 3 s
    assert limiter.decide("b", 0, 3).allowed  # full again at 3 s
    assert not limiter.decide("c", 0).allowed  # no room until 3 s
    limiter.reset("a")
    assert limiter.decide("d", 0).allowed  # takes a's slot; full again at 1 s
    # At 1 s, d's bucket has refilled, so a new key must find room.
    decision = limiter.decide("e", NS)
    assert decision.allowed, decision


def test_remaining_is_never_negative_when_requests_arrive_out_of_order() -> None:
    """Threads read the clock before the lock: a slightly older now_ns still gets remaining >= 0."""
    policy = RatePolicy(burst=2, interval_ns=NS)
    limiter: KeyedLimiter[str] = KeyedLimiter(policy)
    assert limiter.decide("k", 1_000, 2).allowed  # this thread read the clock at 1000 ns
    decision = limiter.decide("k", 999)  # ... another thread read it 1 ns earlier
    assert not decision.allowed
    assert decision.remaining == 0, decision


def test_room_is_made_on_a_negative_clock() -> None:
    """A monotonic clock may have any origin: with negative now_ns, a refilled bucket makes room."""
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=1, interval_ns=NS), max_keys=1)
    assert limiter.decide("a", -10 * NS).allowed  # full again at -9 s
    decision = limiter.decide("b", -5 * NS)
    assert decision.allowed, decision


def test_threads_on_one_key_admit_exactly_the_burst() -> None:
    """Many threads deciding on one key at one instant admit exactly `burst` requests in total."""
    burst, threads, each = 1000, 8, 400
    limiter: KeyedLimiter[str] = KeyedLimiter(RatePolicy(burst=burst, interval_ns=NS))
    barrier = threading.Barrier(threads)
    results: list[bool] = []

    def worker() -> None:
        barrier.wait()
        outcomes = [limiter.decide("shared", 0).allowed for _ in range(each)]
        results.extend(outcomes)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(results) == threads * each
    assert sum(results) == burst


# --- KeyedLimiter: properties ---------------------------------------------------------------


class KeyedStep(NamedTuple):
    """One request of a keyed scenario, or (with reset) a reset of the key."""

    key: int
    increment: int
    cost: int
    reset: bool = False


class KeyedScenario(NamedTuple):
    """A policy, a key budget, a start time and keyed requests at non-decreasing times."""

    policy: RatePolicy
    max_keys: int
    start: int
    steps: list[KeyedStep]


@st.composite
def keyed_scenarios(draw: st.DrawFn, *, resets: bool = False) -> KeyedScenario:
    """Few keys, small budgets and short gaps: eviction pressure most of the time."""
    policy = draw(st.builds(RatePolicy, burst=st.integers(1, 5), interval_ns=st.integers(1, NS)))
    interval, burst = policy.interval_ns, policy.burst
    step = st.builds(
        KeyedStep,
        key=st.integers(0, 5),
        increment=st.one_of(
            st.just(0),
            st.integers(0, interval),
            st.integers(0, 2 * burst).map(lambda n: n * interval),
            st.integers(0, 2 * burst * interval),
        ),
        cost=st.one_of(st.just(1), st.just(burst), st.integers(0, burst)),
        reset=st.integers(0, 4).map(lambda n: n == 0) if resets else st.just(False),
    )
    steps = draw(st.lists(step, max_size=60))
    # Non-negative clocks here; negative ones have their own test below.
    return KeyedScenario(policy, draw(st.integers(1, 4)), draw(st.integers(0, 10**12)), steps)


def _tracked(limiter: KeyedLimiter[int]) -> dict[int, int]:
    """The limiter's per-key state, looked at on purpose."""
    return dict(limiter._tats)  # pyright: ignore[reportPrivateUsage]


def _refilling(reference: dict[int, int | None], now: int, other_than: int) -> int:
    return sum(
        1 for key, tat in reference.items() if key != other_than and tat is not None and tat > now
    )


@given(keyed_scenarios())
def test_keyed_limiter_under_eviction_pressure_matches_the_unbounded_model(
    scenario: KeyedScenario,
) -> None:
    """Bounded memory never costs a key its quota, nor lets it exceed it.

    Against a model with one unbounded state per key: every decision equals the model's,
    except that a new key may be refused, and only while max_keys other buckets are still
    refilling; the tracked state of a key always equals the model's; at most max_keys keys are
    tracked; and each key's admitted requests satisfy the window bound.
    """
    policy, max_keys = scenario.policy, scenario.max_keys
    limiter: KeyedLimiter[int] = KeyedLimiter(policy, max_keys=max_keys)
    reference: dict[int, int | None] = {}
    admitted: dict[int, list[tuple[int, int]]] = {}
    now = scenario.start
    for step in scenario.steps:
        now += step.increment
        expected, new_state = decide(reference.get(step.key), now, policy, step.cost)
        decision = limiter.decide(step.key, now, step.cost)
        if expected.allowed and not decision.allowed:
            assert step.key not in _tracked(limiter)
            assert _refilling(reference, now, step.key) >= max_keys
            assert decision.retry_after_s >= 1
            assert decision.remaining == 0
        else:
            assert decision == expected
            reference[step.key] = new_state
            if decision.allowed and step.cost:
                admitted.setdefault(step.key, []).append((now, step.cost))
        assert len(limiter) <= max_keys
        for key, tracked in _tracked(limiter).items():
            assert tracked == reference[key]
        for key, modelled in reference.items():
            if modelled is not None and modelled > now:
                assert key in _tracked(limiter)
    for times in admitted.values():
        assert_window_bound(times, policy)


@given(keyed_scenarios(resets=True))
@example(  # the shape of a bug hypothesis rarely finds unaided: refuse, reset, refill, new key
    KeyedScenario(
        RatePolicy(burst=3, interval_ns=NS),
        max_keys=1,
        start=0,
        steps=[
            KeyedStep(key=0, increment=0, cost=3),
            KeyedStep(key=1, increment=0, cost=1),  # refused: key 0 refills only at 3 s
            KeyedStep(key=0, increment=0, cost=0, reset=True),
            KeyedStep(key=1, increment=0, cost=1),  # takes the slot; refills at 1 s
            KeyedStep(key=2, increment=NS, cost=1),  # key 1 has refilled: there is room
        ],
    )
)
def test_new_key_is_refused_only_while_max_keys_buckets_refill(scenario: KeyedScenario) -> None:
    """With resets mixed in, a new key is refused only when max_keys buckets are refilling."""
    policy, max_keys = scenario.policy, scenario.max_keys
    limiter: KeyedLimiter[int] = KeyedLimiter(policy, max_keys=max_keys)
    reference: dict[int, int | None] = {}
    now = scenario.start
    for step in scenario.steps:
        now += step.increment
        if step.reset:
            limiter.reset(step.key)
            reference[step.key] = None
            continue
        expected, new_state = decide(reference.get(step.key), now, policy, step.cost)
        decision = limiter.decide(step.key, now, step.cost)
        if expected.allowed and not decision.allowed:
            assert _refilling(reference, now, step.key) >= max_keys, (now, reference)
        else:
            assert decision == expected
            reference[step.key] = new_state
        assert len(limiter) <= max_keys


@given(
    st.integers(1, 6),
    st.lists(
        st.tuples(st.text(max_size=3), st.integers(0, 2 * NS), st.integers(0, 2)), max_size=80
    ),
)
def test_keyed_limiter_never_tracks_more_than_max_keys(
    max_keys: int, requests: list[tuple[str, int, int]]
) -> None:
    """Whatever the keys and times, at most max_keys keys hold state."""
    limiter: KeyedLimiter[str] = KeyedLimiter(
        RatePolicy(burst=2, interval_ns=NS), max_keys=max_keys
    )
    now = 0
    for key, increment, cost in requests:
        now += increment
        limiter.decide(key, now, cost)
        assert len(limiter) <= max_keys


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("1/s", 1.0), ("30/min", 0.5), ("100/h", 100 / 3600), (" 2.5 / second ", 2.5)],
)
def test_parse_rate(text: str, per_second: float) -> None:
    """COUNT/UNIT with s, min or h gives tokens per second."""
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["fast", "0/s", "1/day", "-1/s", ""])
def test_parse_rate_refuses_with_an_example(text: str) -> None:
    """Anything else is a ValueError that shows the accepted forms."""
    with pytest.raises(ValueError, match=r"invalid rate .*e\.g\. 1/s, 30/min, 100/h"):
        parse_rate(text)
