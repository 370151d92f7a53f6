"""The embedded default store: one SQLite file in WAL mode, one writer thread, pooled readers.

What it keeps and how it reads is the SQL stores' shared code (:mod:`bmserver.storage._sql_store`,
in the SQLite dialect of :mod:`bmserver.storage._sql`); this module is how it runs.

Writes: every write is queued for the batching writer of :mod:`bmserver.storage._writer`, here
one thread that owns the only write connection. It takes everything pending (up to
:data:`MAX_BATCH`) as one batch, runs each write in its own SAVEPOINT, COMMITs once, and only
then resolves each caller's future on the caller's event loop: a write's coroutine returns only
after its commit. The shared statements are coroutines of a session; on a ``sqlite3``
connection they never wait for anything, so the writer and the readers run each to its end at
once (:func:`bmserver._coroutines.run_unsuspended`) and need no event loop of their own.

Reads run in worker threads (``asyncio.to_thread``) on read-only connections from a small
pool. In WAL mode readers see the last committed state and neither block the writer nor wait
for it. The one read of every request, its API key, runs on the caller's thread instead (see
:meth:`SqliteStore._read_key`).

The schema and its migrations are in :mod:`bmserver.storage._sqlite_migrations`; they are
applied by the writer thread before :meth:`SqliteStore.open` returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import ClassVar, Final, LiteralString, TypeVar

from bmserver._coroutines import run_unsuspended
from bmserver.storage import _writer
from bmserver.storage._contract import StoreError
from bmserver.storage._sql import SQLITE, Dialect, Row
from bmserver.storage._sql_store import Order, Run, SqlStore
from bmserver.storage._sqlite_migrations import apply_migrations
from bmserver.storage._writer import State, Write

__all__ = ["BUSY_TIMEOUT_S", "MAX_BATCH", "SqliteStore"]

T = TypeVar("T")

#: The most writes committed together: bounds the latency one batch adds to its last write.
MAX_BATCH: Final = 500
#: How long a connection waits for a lock held by another process (say ``bmserver keys``).
BUSY_TIMEOUT_S: Final = 5.0

_SUSPENDED: Final = "a SQLite store's statement suspended; only its session may be awaited"


class SqliteStore(SqlStore):
    """A :class:`~bmserver.Store` on one SQLite file (created if absent).

    ``busy_timeout_s`` is how long a connection waits for a lock that another process holds
    (``bmserver keys`` writing while the server runs); a batch that cannot start or commit in
    that time fails as a whole, and its callers get StoreError.

    ``open()`` applies pending migrations and starts the writer thread; ``close()`` refuses new
    writes, commits everything already queued, stops the thread and closes every connection.
    The store can be opened again after ``close()``. It may be used from several event loops
    and threads: each write resolves on the loop that awaited it.
    """

    dialect: ClassVar[Dialect] = SQLITE

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        self.path: Final = os.fspath(path)
        self.busy_timeout_s: Final = busy_timeout_s
        self.commit_count = 0
        self.migrations_applied = 0
        self._queue: queue.SimpleQueue[Write | None] = queue.SimpleQueue()  # None: stop
        # Guards the open/closed state together with the queue, so that no write can slip in
        # behind the stop marker and wait forever.
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._hold = threading.Lock()
        self._readers_lock = threading.Lock()
        # Readers are kept as sessions: a read then allocates nothing to reach its connection.
        self._idle_readers: list[_Session] = []
        self._quick_readers: list[_Session] = []  # see _read_key
        self._reading = False
        # Fixed now, relative to the current directory, like the writer's own path.
        self._reader_uri = Path(self.path).absolute().as_uri() + "?mode=ro"

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the file, apply pending migrations, start the writer thread."""
        with self._lock:
            if self._state is not State.CLOSED:
                raise StoreError(f"the store is already {self._state.value}")
            self._state = State.OPENING
            ready: concurrent.futures.Future[int] = concurrent.futures.Future()
            thread = threading.Thread(
                target=self._writer_main, args=(ready,), name="bmserver-sqlite-writer", daemon=True
            )
            self._thread = thread
        thread.start()
        try:
            self.migrations_applied = await asyncio.wrap_future(ready)
        except BaseException:
            # Failed (or cancelled) while migrating: stop the thread if it got that far.
            with self._lock:
                self._thread = None
                self._accepting = False
                self._queue.put(None)
            thread.join()
            _writer.drain(self._queue.get_nowait)
            with self._lock:
                self._state = State.CLOSED
            raise
        with self._lock:
            self._state = State.OPEN
        with self._readers_lock:
            self._reading = True

    async def close(self) -> None:
        """Refuse new writes, commit every queued one, stop the writer, close all connections.

        Closing a store that is not open does nothing; a second concurrent close() waits for
        the first.
        """
        with self._lock:
            thread = self._thread
            if thread is None or self._state not in {State.OPEN, State.CLOSING}:
                return
            if self._state is State.OPEN:
                self._state = State.CLOSING
                self._accepting = False
                self._queue.put(None)  # after every accepted write: the writer drains them first
        await asyncio.to_thread(thread.join)
        with self._lock:
            if self._state is State.CLOSING:
                self._state = State.CLOSED
                self._thread = None
        with self._readers_lock:
            self._reading = False
            idle = [*self._idle_readers, *self._quick_readers]
            self._idle_readers, self._quick_readers = [], []
        for session in idle:
            session.connection.close()

    @contextlib.contextmanager
    def hold_writes(self) -> Generator[None]:
        """Keep the writer from starting a batch while held; what queues meanwhile is one batch.

        For tests and benchmarks that need a known batch. Do not await a write inside the
        block: it cannot complete before the block ends.
        """
        with self._hold:
            yield

    # --- the writer thread --------------------------------------------------------------------

    def _connect_writer(self) -> sqlite3.Connection:
        # Autocommit mode (isolation_level=None): transactions are exactly the BEGIN/COMMIT
        # below, never ones the sqlite3 module opens implicitly.
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout_s)
        try:
            _use_wal(connection, self.path)
            # FULL: a commit is on disk, not only in the WAL's OS buffers, before it is acked.
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            connection.close()
            raise
        return connection

    def _writer_main(self, ready: concurrent.futures.Future[int]) -> None:
        try:
            connection = self._connect_writer()
        except BaseException as error:  # noqa: BLE001 - open() raises it
            ready.set_exception(error)
            return
        try:
            try:
                applied = apply_migrations(connection)
            except BaseException as error:  # noqa: BLE001 - open() raises it
                ready.set_exception(error)
                return
            with self._lock:
                # Unless open() gave up meanwhile (it clears _thread): then only stop.
                self._accepting = self._thread is threading.current_thread()
            ready.set_result(applied)
            self._write_loop(connection)
        finally:
            connection.close()
            # Normally the queue is empty here; after an unexpected failure of the loop itself,
            # no write may wait forever.
            with self._lock:
                self._accepting = False
            stopped = StoreError("the store's writer has stopped")
            _writer.settle(
                [(write, None, stopped) for write in _writer.drain(self._queue.get_nowait)]
            )

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            with self._hold:
                batch, stop = _writer.take_batch(first, self._queue.get_nowait, MAX_BATCH)
            if batch:
                self._commit_batch(connection, batch)
            if stop:
                return

    def _commit_batch(self, connection: sqlite3.Connection, batch: Sequence[Write]) -> None:
        session = _Session(connection)
        settled: list[_writer.Settlement] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for write in batch:
                connection.execute("SAVEPOINT write")
                try:
                    result = run_unsuspended(write.run(session), refusal=_SUSPENDED)
                except Exception as error:  # noqa: BLE001 - the caller gets it, the batch goes on
                    connection.execute("ROLLBACK TO write")
                    connection.execute("RELEASE write")
                    settled.append((write, *_writer.outcome(error)))
                else:
                    connection.execute("RELEASE write")
                    settled.append((write, result, None))
            connection.execute("COMMIT")
        except Exception as batch_error:  # noqa: BLE001 - BEGIN, COMMIT or a savepoint failed
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            _writer.settle(_writer.batch_failed(batch, batch_error))
            return
        self._committed(len(batch))
        _writer.settle(settled)

    async def _write(self, order: Order, run: Run[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if not self._accepting:
                raise StoreError("the store is not open")
            self._queue.put(Write(run, order, loop, future))
        return await future

    # --- readers ------------------------------------------------------------------------------

    async def _read(self, run: Run[T]) -> T:
        if not self._reading:
            raise StoreError("the store is not open")
        return await asyncio.to_thread(self._read_now, run, quick=False)

    async def _read_key(self, run: Run[T]) -> T:
        """A read of a row by index, on the caller's thread; in a worker thread if it must wait.

        For the read every request makes, its API key: the hop to a worker thread and back
        costs about ten times the lookup itself (some 70 µs of CPU against 7 µs, measured),
        and the event loop pays for it. In WAL mode a reader does not wait for the writer; a
        lock that would make it wait (another process recovering the file after a crash, say)
        makes these connections, which have no busy timeout, fail at once, and the read is then
        done in a worker thread, where waiting holds up no other request.
        """
        if not self._reading:
            raise StoreError("the store is not open")
        try:
            return self._read_now(run, quick=True)
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF not in {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}:
                raise
        return await self._read(run)

    def _read_now(self, run: Run[T], *, quick: bool) -> T:
        with self._readers_lock:
            pool = self._quick_readers if quick else self._idle_readers
            session = pool.pop() if pool else None
        if session is None:
            # Read-only: a reader can never write, by mistake or otherwise. The pool hands
            # connections between threads, one thread at a time.
            connection = sqlite3.connect(
                self._reader_uri,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=0 if quick else self.busy_timeout_s,
            )
            session = _Session(connection)
        try:
            return run_unsuspended(run(session), refusal=_SUSPENDED)
        finally:
            self._release_reader(session, quick=quick)

    def _release_reader(self, session: _Session, *, quick: bool) -> None:
        with self._readers_lock:
            if self._reading:
                (self._quick_readers if quick else self._idle_readers).append(session)
                return
        session.connection.close()  # the store was closed while this read ran


class _Session:
    """A ``sqlite3`` connection as the shared statements use it; its coroutines never wait."""

    __slots__ = ("connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection: Final = connection

    async def one(self, query: LiteralString, params: Sequence[object] = ()) -> Row | None:
        """The first row of the answer, or None."""
        row: Row | None = self.connection.execute(query, params).fetchone()
        return row

    async def all(self, query: LiteralString, params: Sequence[object] = ()) -> list[Row]:
        """Every row of the answer."""
        return self.connection.execute(query, params).fetchall()

    async def run(self, query: LiteralString, params: Sequence[object] = ()) -> int:
        """Run an INSERT or UPDATE; how many rows it changed."""
        return self.connection.execute(query, params).rowcount


def _use_wal(connection: sqlite3.Connection, path: str) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        msg = f"{path}: cannot use WAL mode here (the journal mode stays {mode!r})"
        raise StoreError(msg)
