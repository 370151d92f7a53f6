"""Faults a test plans for the next ingest requests, as typed values, and the plan that queues them.

- :class:`Fail`: answer the planned status with a problem+json body; the app never sees it.
- :class:`Throttle`: answer 429 with ``Retry-After`` and the RateLimit headers, as bmserver does.
- :class:`Delay`: wait on the server's loop, then let the app answer as usual.
- :class:`Drop`: close the connection without any answer.

A delayed request that a reset or a stop ends is journaled with :class:`Interrupted`. Each
fault says how the journal shows it (``label``) and whether it answers in the app's place
(``replaces_answer``); nothing reads a label back. The ASGI layer that applies them is
:mod:`pytest_bm._layer`. This module imports no web framework: records refer to its types.
"""

from __future__ import annotations

import collections
import math
import threading
from typing import ClassVar, Literal, TypeAlias

import attrs

__all__ = ["AppliedFault", "Delay", "Drop", "Fail", "Fault", "FaultPlan", "Interrupted", "Throttle"]


def _error_status(_: object, __: attrs.Attribute[int], status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"fail_next needs an error status from 400 to 599, got {status}")


def _retry_after(_: object, __: attrs.Attribute[int], seconds: int) -> None:
    if seconds < 0:
        raise ValueError(f"retry_after must be 0 or more seconds, got {seconds}")


def _delay(_: object, __: attrs.Attribute[float], seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"a delay must be 0 or more seconds, got {seconds}")


@attrs.frozen
class Fail:
    """Answer ``status`` (400-599) with a problem+json body; nothing is stored.

    >>> Fail(503).label
    'fail 503'
    """

    status: int = attrs.field(validator=_error_status)
    replaces_answer: ClassVar[bool] = True

    @property
    def label(self) -> str:
        """How the journal shows this fault."""
        return f"fail {self.status}"


@attrs.frozen
class Throttle:
    """Answer 429 with ``Retry-After: retry_after`` and the RateLimit headers."""

    retry_after: int = attrs.field(validator=_retry_after)
    replaces_answer: ClassVar[bool] = True

    @property
    def label(self) -> str:
        """How the journal shows this fault."""
        return f"throttle retry_after={self.retry_after}"


@attrs.frozen
class Delay:
    """Wait ``seconds`` on the server's loop, then answer as usual."""

    seconds: float = attrs.field(validator=_delay)
    replaces_answer: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """How the journal shows this fault."""
        return f"delay {self.seconds:g}s"


@attrs.frozen
class Drop:
    """Close the connection without any answer."""

    replaces_answer: ClassVar[bool] = True

    @property
    def label(self) -> str:
        """How the journal shows this fault."""
        return "drop"


@attrs.frozen
class Interrupted:
    """A request held by ``delay`` that a reset or a stop ended: it was never answered.

    Its test is over (reset) or the server is going (stop); storing it then would leak an
    entry into the next test. Like any delayed request it is not answered by a fault, so
    failure messages show its body.

    >>> Interrupted(Delay(0.5), by="stop").label
    'delay 0.5s, dropped at stop'
    """

    delay: Delay
    by: Literal["reset", "stop"] = attrs.field(kw_only=True)
    replaces_answer: ClassVar[bool] = False

    @property
    def label(self) -> str:
        """How the journal shows this fault."""
        return f"{self.delay.label}, dropped at {self.by}"


#: What a test can plan.
Fault: TypeAlias = Fail | Throttle | Delay | Drop
#: What the journal records as applied to a request.
AppliedFault: TypeAlias = Fault | Interrupted


class FaultPlan:
    """The faults planned for the next ingest requests, first planned first applied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: collections.deque[Fault] = collections.deque()

    def add(self, fault: Fault, times: int) -> None:
        """Plan ``fault`` for the next ``times`` ingest requests, after those already planned."""
        if times < 1:
            raise ValueError(f"times must be at least 1, got {times}")
        with self._lock:
            self._queue.extend([fault] * times)

    def take(self) -> Fault | None:
        """The fault for the request that just arrived, or None."""
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        """Forget every planned fault."""
        with self._lock:
            self._queue.clear()

    def pending(self) -> list[Fault]:
        """The faults not applied yet, in order."""
        with self._lock:
            return list(self._queue)
