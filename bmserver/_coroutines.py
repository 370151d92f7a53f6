"""Running a coroutine that never suspends to its end, here and now, without an event loop.

Some awaitables of bmserver never suspend by contract: a MemoryStore's methods (each works
under a threading.Lock), a SQLite session's statements. Their callers in a plain thread (the
fake issuing keys from a test, a store's writer thread) run them with :func:`run_unsuspended`
instead of starting a loop, which would fail inside a thread that already runs one.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_unsuspended"]

T = TypeVar("T")


def run_unsuspended(coroutine: Coroutine[Any, Any, T], *, refusal: str) -> T:
    """The coroutine's result, run to its end at once; RuntimeError(``refusal``) if it suspends.

    A coroutine that suspends waits for something no loop here would deliver: it is closed.

    >>> async def answer() -> int:
    ...     return 42
    >>> run_unsuspended(answer(), refusal="answer() suspended")
    42
    """
    try:
        coroutine.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    coroutine.close()
    raise RuntimeError(refusal)
