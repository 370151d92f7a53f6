"""The batching writer of the SQL stores: the queue, its batches, and how each write is settled.

Both SQL stores write the same way. Every write is a coroutine function of a
:class:`~bmserver.storage._sql.Session`, queued as a :class:`Write` with the future its caller
awaits. One writer per store takes everything pending (up to the store's ``MAX_BATCH``) as one
batch (:func:`take_batch`), runs each write inside its own SAVEPOINT (so that a write that
fails, such as a conflict, is undone alone and the rest of the batch stands), COMMITs once, and
only then settles each write's future (:func:`settle`). A write's coroutine therefore returns
only after its commit: the HTTP layer never acknowledges an entry that a crash could still
lose. One commit (one fsync, one WAL flush) covers every write that arrived while the previous
batch committed, so the commit rate adapts to the load without any timer.

What differs is only the execution model, kept by each store: SQLite's writer is a thread on
a ``queue.SimpleQueue`` that runs each write's coroutine to its end at once (its session never
suspends), PostgreSQL's an asyncio task on an ``asyncio.Queue`` that awaits psycopg and also
orders and retries its batches (several instances write at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import queue
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NamedTuple

from bmserver.storage._contract import StoreError, WriteResult

__all__ = [
    "Repeat",
    "Settlement",
    "State",
    "Write",
    "batch_failed",
    "drain",
    "outcome",
    "settle",
    "take_batch",
]


class State(enum.Enum):
    """Where a store is in its life: writes are accepted only while it is OPEN."""

    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


class Write(NamedTuple):
    """A queued write: what to run, where it goes in its batch, and whom to tell the result."""

    run: Callable[[Any], Coroutine[Any, Any, Any]]
    #: What the write locks, as a key of one global order (PostgreSQL sorts its batches by it).
    order: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


#: A write and how it ended: its result, or the error its caller gets.
Settlement = tuple[Write, object, BaseException | None]

#: What a queue's get_nowait raises when it is empty (a thread's queue, or an asyncio one).
_EMPTY = (queue.Empty, asyncio.QueueEmpty)


class Repeat(Exception):  # noqa: N818 - not an error: a write's answer that must undo its work
    """Raised inside a write's savepoint: undo what the write did, and answer ``result``.

    For an entry that another PostgreSQL instance stored first, found only when this write's
    INSERT conflicts: the device row that this write touched must not move for a repeat.
    """

    def __init__(self, result: WriteResult) -> None:
        super().__init__("an idempotent repeat")
        self.result = result


def outcome(error: Exception) -> tuple[object, BaseException | None]:
    """How a write that raised ``error`` in its savepoint ends: (its result, its caller's error)."""
    if isinstance(error, Repeat):  # rolled back, and answered
        return error.result, None
    return None, error


def take_batch(
    first: Write | None, get_nowait: Callable[[], Write | None], limit: int
) -> tuple[list[Write], bool]:
    """The batch that starts with ``first``: what is queued behind it, up to ``limit`` writes.

    Also whether the writer is to stop: None in the queue is the stop marker, queued by close()
    after every write it accepted.
    """
    batch: list[Write] = []
    item = first
    while item is not None:
        batch.append(item)
        if len(batch) >= limit:
            return batch, False
        try:
            item = get_nowait()
        except _EMPTY:
            return batch, False
    return batch, True


def drain(get_nowait: Callable[[], Write | None]) -> list[Write]:
    """Every write still queued, the queue emptied (stop markers are dropped)."""
    writes: list[Write] = []
    while True:
        try:
            item = get_nowait()
        except _EMPTY:
            return writes
        if item is not None:
            writes.append(item)


def batch_failed(batch: Sequence[Write], error: BaseException) -> list[Settlement]:
    """A batch whose transaction failed (BEGIN, COMMIT, the connection): nothing is durable.

    Every caller gets a StoreError, none an acknowledgement.
    """
    failures: list[Settlement] = []
    for write in batch:
        failure = StoreError(f"the write could not be committed: {error}")
        failure.__cause__ = error
        failures.append((write, None, failure))
    return failures


def settle(settled: Sequence[Settlement]) -> None:
    """Resolve the writes' futures, each on its own loop (futures are not thread-safe).

    A future of the loop running here is resolved at once (PostgreSQL's writer task). Another
    loop's (SQLite's writer thread resolves them all so) gets one callback per loop, not one per
    write: each ``call_soon_threadsafe`` wakes the loop with a write to its self-pipe, and under
    load a batch holds dozens of writes from the same loop.
    """
    here: asyncio.AbstractEventLoop | None = None
    with contextlib.suppress(RuntimeError):  # no loop runs in this thread
        here = asyncio.get_running_loop()
    by_loop: dict[asyncio.AbstractEventLoop, list[Settlement]] = {}
    for settlement in settled:
        by_loop.setdefault(settlement[0].loop, []).append(settlement)
    for loop, settlements in by_loop.items():
        if loop is here:
            _resolve_all(settlements)
            continue
        try:
            loop.call_soon_threadsafe(_resolve_all, settlements)
        except RuntimeError:  # that loop is closed: nobody is waiting for these answers any more
            continue


def _resolve_all(settled: Sequence[Settlement]) -> None:
    for write, result, error in settled:
        future = write.future
        if future.done():  # the caller gave up: the write stands (or failed) anyway
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
