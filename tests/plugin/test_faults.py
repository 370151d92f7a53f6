"""Faults as typed values: their validation, how the journal shows them, and the plan's order."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_bm import Delay, Drop, Fail, Interrupted, Throttle
from pytest_bm._faults import Fault, FaultPlan

_FAULTS: st.SearchStrategy[Fault] = st.one_of(
    st.builds(Fail, st.integers(400, 599)),
    st.builds(Throttle, st.integers(0, 3600)),
    st.builds(Delay, st.floats(0, 3600, allow_nan=False)),
    st.just(Drop()),
)


@given(st.lists(st.tuples(_FAULTS, st.integers(1, 4)), max_size=8))
def test_a_plan_applies_faults_in_planned_order_each_its_times(
    planned: list[tuple[Fault, int]],
) -> None:
    """pending() and take() give every fault, first planned first, as often as planned."""
    plan = FaultPlan()
    for fault, times in planned:
        plan.add(fault, times)
    expected = [fault for fault, times in planned for _ in range(times)]
    assert plan.pending() == expected
    assert [plan.take() for _ in expected] == expected
    assert plan.take() is None
    assert plan.pending() == []


@given(_FAULTS)
def test_only_fail_throttle_and_drop_answer_in_the_apps_place(fault: Fault) -> None:
    """A delayed request is answered by the app (or dropped at a reset); the others are not."""
    assert fault.replaces_answer is not isinstance(fault, Delay)
    if isinstance(fault, Delay):
        assert not Interrupted(fault, by="reset").replaces_answer


def test_labels_are_what_the_journal_always_showed() -> None:
    """The labels of FakeIngest.pending_faults and RecordedRequest.fault, one per kind."""
    assert [fault.label for fault in (Fail(503), Throttle(2), Delay(0.5), Drop())] == [
        "fail 503",
        "throttle retry_after=2",
        "delay 0.5s",
        "drop",
    ]
    assert Interrupted(Delay(3600), by="stop").label == "delay 3600s, dropped at stop"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Fail(399), "error status from 400 to 599, got 399"),
        (lambda: Fail(600), "error status from 400 to 599, got 600"),
        (lambda: Throttle(-1), "retry_after must be 0 or more seconds, got -1"),
        (lambda: Delay(-0.1), "a delay must be 0 or more seconds"),
        (lambda: Delay(math.inf), "a delay must be 0 or more seconds"),
    ],
)
def test_an_impossible_fault_cannot_be_made(make: Callable[[], Fault], message: str) -> None:
    """A fault that makes no sense is a ValueError when it is made, not when it is applied."""
    with pytest.raises(ValueError, match=message):
        make()


def test_a_plan_refuses_fewer_than_one_time() -> None:
    """times=0 plans nothing and says so."""
    plan = FaultPlan()
    with pytest.raises(ValueError, match="times must be at least 1, got 0"):
        plan.add(Drop(), 0)
    assert plan.pending() == []
