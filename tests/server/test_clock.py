"""The clocks the app is given: the system's, and one that tests move by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bmserver import ManualClock, SystemClock


def test_system_clock_is_aware_utc_and_monotonic() -> None:
    """SystemClock gives aware UTC wall time and a monotonic time that never goes back."""
    clock = SystemClock()
    assert clock.now().utcoffset() == timedelta(0)
    first = clock.monotonic_ns()
    assert clock.monotonic_ns() >= first


def test_manual_clock_moves_both_readings_together() -> None:
    """advance() moves wall and monotonic time by the same amount, and nothing else does."""
    start = datetime(2024, 6, 4, 14, tzinfo=UTC)
    clock = ManualClock(start)
    assert (clock.now(), clock.monotonic_ns()) == (start, 0)
    clock.advance(2.25)
    assert clock.now() == start + timedelta(seconds=2.25)
    assert clock.monotonic_ns() == 2_250_000_000


def test_manual_clock_refuses_naive_start_and_going_back() -> None:
    """A naive start and a negative advance are programming errors, reported as such."""
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2024, 6, 4))  # noqa: DTZ001 - the naive datetime is the point
    clock = ManualClock(datetime(2024, 6, 4, tzinfo=UTC))
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
