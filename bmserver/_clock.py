"""Where bmserver gets the time: passed in, so that tests and the fake can control it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """A wall clock for timestamps and a monotonic one for rate limits."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...

    def monotonic_ns(self) -> int:
        """A monotonic time in integer nanoseconds, for rate limiting."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        return datetime.now(UTC)

    def monotonic_ns(self) -> int:
        """time.monotonic_ns()."""
        return time.monotonic_ns()


class ManualClock:
    """A clock that moves only when told to; both readings advance together.

    >>> clock = ManualClock(datetime(2024, 6, 4, 12, tzinfo=UTC))
    >>> clock.advance(1.5)
    >>> clock.now().isoformat(), clock.monotonic_ns()
    ('2024-06-04T12:00:01.500000+00:00', 1500000000)
    """

    def __init__(self, start: datetime) -> None:
        if start.utcoffset() is None:
            msg = f"start must be an aware datetime, got {start!r}"
            raise ValueError(msg)
        self._start = start.astimezone(UTC)
        self._elapsed_ns = 0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The start time plus everything advanced so far."""
        with self._lock:
            return self._start + timedelta(microseconds=self._elapsed_ns // 1000)

    def monotonic_ns(self) -> int:
        """Nanoseconds advanced since the start."""
        with self._lock:
            return self._elapsed_ns

    def advance(self, seconds: float) -> None:
        """Move both clocks forward; a negative value is refused (a monotonic clock)."""
        if seconds < 0:
            msg = f"a clock only moves forward, got {seconds} seconds"
            raise ValueError(msg)
        with self._lock:
            self._elapsed_ns += round(seconds * 1_000_000_000)
