"""The embedded default store: one SQLite file in WAL mode, one writer thread, pooled readers.

Writes: every write becomes a closure on a thread-safe queue. One writer thread owns the only
write connection; it takes everything pending (up to :data:`MAX_BATCH`) as one batch, runs each
write inside its own SAVEPOINT (so a write that fails, such as a conflict, is undone alone and
the rest of the batch stands), COMMITs once, and only then resolves each caller's future on
the caller's event loop. A write's coroutine therefore returns only after its commit: the HTTP
layer never acknowledges an entry that a crash could still lose. Batching is what keeps that
affordable: one fsync covers every write that arrived while the previous batch committed, so
the commit rate adapts to the load without any timer.

Reads run in worker threads (``asyncio.to_thread``) on read-only connections from a small
pool. In WAL mode readers see the last committed state and neither block the writer nor wait
for it. The one read of every request, its API key, runs on the caller's thread instead (see
:meth:`SqliteStore._read_quick`).

The schema and its migrations are in :mod:`bmserver._migrations`; they are applied by the
writer thread before :meth:`SqliteStore.open` returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Generator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NamedTuple, Self, TypeVar

import bmcore
from bmserver._memory import (
    EntryFacts,
    NameFilter,
    TimeWindow,
    backup_facts,
    check_limit,
    decode_cursor,
    encode_cursor,
    join_datetime,
    new_id,
    notification_facts,
    split_datetime,
)
from bmserver._migrations import apply_migrations
from bmserver._rows import RowReader
from bmserver._store import (
    Account,
    ApiKeyRecord,
    BackupQuery,
    ConflictError,
    DeviceRecord,
    JobRecord,
    NotificationQuery,
    Page,
    Scope,
    StoredBackup,
    StoredNotification,
    StoreError,
    UnknownKeyError,
    WriteResult,
)

__all__ = ["BUSY_TIMEOUT_S", "MAX_BATCH", "SqliteStore"]

T = TypeVar("T")
R = TypeVar("R")

#: The most writes committed together: bounds the latency one batch adds to its last write.
MAX_BATCH: Final = 500
#: How long a connection waits for a lock held by another process (say ``bmserver keys``).
BUSY_TIMEOUT_S: Final = 5.0

_Row = Any  # a row from sqlite3: a tuple of the selected columns


class _State(enum.Enum):
    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


class _Write(NamedTuple):
    """A queued write: what to run on the write connection, and whom to tell the result."""

    run: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


#: A write and how it ended: its result, or the error its caller gets.
_Settlement = tuple[_Write, object, BaseException | None]
#: The same for the write's future, on the writer's loop.
_Outcome = tuple[asyncio.Future[Any], object, BaseException | None]


class SqliteStore:
    """A :class:`~bmserver.Store` on one SQLite file (created if absent).

    ``busy_timeout_s`` is how long a connection waits for a lock that another process holds
    (``bmserver keys`` writing while the server runs); a batch that cannot start or commit in
    that time fails as a whole, and its callers get StoreError.

    ``open()`` applies pending migrations and starts the writer thread; ``close()`` refuses new
    writes, commits everything already queued, stops the thread and closes every connection.
    The store can be opened again after ``close()``. It may be used from several event loops
    and threads: each write resolves on the loop that awaited it.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        self.path: Final = os.fspath(path)
        self.busy_timeout_s: Final = busy_timeout_s
        #: How many transactions the writer has committed (a test checks that it batches).
        self.commit_count = 0
        #: How many migrations the last ``open()`` applied (0 when the schema was current).
        self.migrations_applied = 0
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()  # None: stop
        # Guards the open/closed state together with the queue, so that no write can slip in
        # behind the stop marker and wait forever.
        self._lock = threading.Lock()
        self._state = _State.CLOSED
        self._thread: threading.Thread | None = None
        self._accepting = False
        self._hold = threading.Lock()
        self._readers_lock = threading.Lock()
        self._idle_readers: list[sqlite3.Connection] = []
        self._quick_readers: list[sqlite3.Connection] = []  # see _read_quick
        self._reading = False
        # Fixed now, relative to the current directory, like the writer's own path.
        self._reader_uri = Path(self.path).absolute().as_uri() + "?mode=ro"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the file, apply pending migrations, start the writer thread."""
        with self._lock:
            if self._state is not _State.CLOSED:
                raise StoreError(f"the store is already {self._state.value}")
            self._state = _State.OPENING
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
            _drain(self._queue)
            with self._lock:
                self._state = _State.CLOSED
            raise
        with self._lock:
            self._state = _State.OPEN
        with self._readers_lock:
            self._reading = True

    async def close(self) -> None:
        """Refuse new writes, commit every queued one, stop the writer, close all connections.

        Closing a store that is not open does nothing; a second concurrent close() waits for
        the first.
        """
        with self._lock:
            thread = self._thread
            if thread is None or self._state not in {_State.OPEN, _State.CLOSING}:
                return
            if self._state is _State.OPEN:
                self._state = _State.CLOSING
                self._accepting = False
                self._queue.put(None)  # after every accepted write: the writer drains them first
        await asyncio.to_thread(thread.join)
        with self._lock:
            if self._state is _State.CLOSING:
                self._state = _State.CLOSED
                self._thread = None
        with self._readers_lock:
            self._reading = False
            idle = [*self._idle_readers, *self._quick_readers]
            self._idle_readers, self._quick_readers = [], []
        for connection in idle:
            connection.close()

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
            _settle([(write, None, stopped) for write in _drain(self._queue)])

    def _write_loop(self, connection: sqlite3.Connection) -> None:
        while True:
            first = self._queue.get()
            with self._hold:
                batch, stop = self._take_batch(first)
            if batch:
                self._commit_batch(connection, batch)
            if stop:
                return

    def _take_batch(self, first: _Write | None) -> tuple[list[_Write], bool]:
        batch: list[_Write] = []
        item = first
        while item is not None:
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _commit_batch(self, connection: sqlite3.Connection, batch: Sequence[_Write]) -> None:
        results: list[tuple[object, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for write in batch:
                connection.execute("SAVEPOINT write")
                try:
                    result = write.run(connection)
                except Exception as error:  # noqa: BLE001 - the caller gets it, the batch goes on
                    connection.execute("ROLLBACK TO write")
                    connection.execute("RELEASE write")
                    results.append((None, error))
                else:
                    connection.execute("RELEASE write")
                    results.append((result, None))
            connection.execute("COMMIT")
        except Exception as batch_error:  # noqa: BLE001 - BEGIN, COMMIT or a savepoint failed
            # Nothing of this batch is durable: every caller gets an error, none an ack.
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            failures: list[_Settlement] = []
            for write in batch:
                failure = StoreError(f"the write could not be committed: {batch_error}")
                failure.__cause__ = batch_error
                failures.append((write, None, failure))
            _settle(failures)
            return
        self.commit_count += 1
        _settle([(write, *outcome) for write, outcome in zip(batch, results, strict=True)])

    async def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if not self._accepting:
                raise StoreError("the store is not open")
            self._queue.put(_Write(run, loop, future))
        return await future

    # --- readers ------------------------------------------------------------------------------

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        if not self._reading:
            raise StoreError("the store is not open")
        return await asyncio.to_thread(self._read_now, run, quick=False)

    async def _read_quick(self, run: Callable[[sqlite3.Connection], T]) -> T:
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

    def _read_now(self, run: Callable[[sqlite3.Connection], T], *, quick: bool) -> T:
        with self._readers_lock:
            pool = self._quick_readers if quick else self._idle_readers
            connection = pool.pop() if pool else None
        if connection is None:
            # Read-only: a reader can never write, by mistake or otherwise. The pool hands
            # connections between threads, one thread at a time.
            connection = sqlite3.connect(
                self._reader_uri,
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=0 if quick else self.busy_timeout_s,
            )
        try:
            return run(connection)
        finally:
            self._release_reader(connection, quick=quick)

    def _release_reader(self, connection: sqlite3.Connection, *, quick: bool) -> None:
        with self._readers_lock:
            if self._reading:
                (self._quick_readers if quick else self._idle_readers).append(connection)
                return
        connection.close()  # the store was closed while this read ran

    # --- accounts and keys --------------------------------------------------------------------

    async def create_account(self, name: str, *, now: datetime) -> Account:
        """Create an account (names are unique; an existing name returns that account)."""
        created_us, created_offset = split_datetime(now)

        def run(connection: sqlite3.Connection) -> Account:
            row = connection.execute(
                "SELECT id, name, created_us, created_offset FROM accounts WHERE name = ?",
                (name,),
            ).fetchone()
            if row is not None:
                return _account(row)
            account_id = new_id("acc")
            connection.execute(
                "INSERT INTO accounts (id, name, created_us, created_offset) VALUES (?, ?, ?, ?)",
                (account_id, name, created_us, created_offset),
            )
            return _account((account_id, name, created_us, created_offset))

        return await self._write(run)

    async def count_accounts(self) -> int:
        """How many accounts exist (0 on a new database)."""

        def run(connection: sqlite3.Connection) -> int:
            (count,) = connection.execute("SELECT count(*) FROM accounts").fetchone()
            return int(count)

        return await self._read(run)

    async def add_api_key(
        self,
        *,
        account_id: str,
        key_hash: str,
        prefix: str,
        scopes: frozenset[Scope],
        now: datetime,
    ) -> ApiKeyRecord:
        """Store a new key's hash; StoreError for an unknown account or a hash already stored."""
        created_us, created_offset = split_datetime(now)
        scope_text = " ".join(sorted(scope.value for scope in scopes))

        def run(connection: sqlite3.Connection) -> ApiKeyRecord:
            _require_account(connection, account_id)
            if connection.execute(
                "SELECT 1 FROM api_keys WHERE key_hash = ?", (key_hash,)
            ).fetchone():
                raise StoreError("a key with this hash is already stored")
            key_id = new_id("key")
            row = (key_id, account_id, key_hash, prefix, scope_text, created_us, created_offset)
            row_with_revocation = (*row, None, None)
            connection.execute(_INSERT_KEY, row_with_revocation)
            return _api_key(row_with_revocation)

        return await self._write(run)

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The unrevoked key with this hash, or None."""

        def run(connection: sqlite3.Connection) -> ApiKeyRecord | None:
            row = connection.execute(
                _SELECT_KEYS + " WHERE key_hash = ? AND revoked_us IS NULL",
                (key_hash,),
            ).fetchone()
            return None if row is None else _api_key(row)

        return await self._read_quick(run)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""

        def run(connection: sqlite3.Connection) -> list[ApiKeyRecord]:
            rows = connection.execute(_SELECT_KEYS + " ORDER BY created_us, seq").fetchall()
            return [_api_key(row) for row in rows]

        return await self._read(run)

    async def revoke_api_key(self, prefix: str, *, now: datetime) -> ApiKeyRecord:
        """Revoke the unrevoked keys with this display prefix and return the oldest of them.

        A prefix is 8 random characters, so two keys share one only by a rare accident; both
        are then revoked rather than guessing which one the operator meant.
        """
        revoked_us, revoked_offset = split_datetime(now)

        def run(connection: sqlite3.Connection) -> ApiKeyRecord:
            rows = connection.execute(
                _SELECT_KEYS + " WHERE prefix = ? AND revoked_us IS NULL ORDER BY created_us, seq",
                (prefix,),
            ).fetchall()
            if not rows:
                raise UnknownKeyError(f"no active key has the prefix {prefix!r}")
            connection.execute(
                "UPDATE api_keys SET revoked_us = ?, revoked_offset = ?"
                " WHERE prefix = ? AND revoked_us IS NULL",
                (revoked_us, revoked_offset, prefix),
            )
            return _api_key((*rows[0][:7], revoked_us, revoked_offset))

        return await self._write(run)

    # --- entries ------------------------------------------------------------------------------

    async def add_backup(
        self, account_id: str, entry: bmcore.BackupEntry, *, now: datetime
    ) -> WriteResult:
        """Store a backup, or recognise an idempotent repeat; ConflictError on a clash."""
        # Everything that needs no database is done here, off the writer thread.
        facts = backup_facts(entry)
        received = split_datetime(now)

        def run(connection: sqlite3.Connection) -> WriteResult:
            # Under load the event loop holds the GIL most of the time, and the writer waits
            # for it around every statement: a known job, the common case, takes one query,
            # one UPDATE and the INSERT instead of six statements.
            found = connection.execute(
                _FIND_JOB_AND_BACKUP, (facts.ts_us, account_id, facts.job_digest)
            ).fetchone()
            if found is None:
                _require_account(connection, account_id)
                device_id, device_created = _ensure_device(
                    connection, account_id, entry, facts, received
                )
                names = (entry.sender, entry.device_name, entry.job_name)
                job_id, job_created = _ensure_job(
                    connection,
                    (account_id, device_id),
                    (names, facts.name_keys),
                    facts.job_digest,
                    received,
                )
            else:
                job_id, device_id, existing = found[0], found[1], found[2:]
                if existing[0] is not None:
                    if existing[1] != facts.content_hash:
                        raise ConflictError(existing[0])
                    return _duplicate(existing)
                # The job exists, so its account does (a foreign key), and its device is the
                # one this entry names: a job's key extends its device's key.
                _touch_device(connection, device_id, received)
                device_created = job_created = False
            entry_id = new_id("bk")
            connection.execute(
                _INSERT_BACKUP,
                (
                    *(entry_id, account_id, device_id, job_id, facts.ts_us, facts.ts_offset),
                    *(entry.sender, entry.device_name, entry.job_name, entry.status),
                    *(entry.outcome.value, entry.message, facts.content_hash, *received),
                    *facts.name_keys,
                ),
            )
            return WriteResult(
                id=entry_id,
                received_at=join_datetime(*received),
                device_id=device_id,
                device_created=device_created,
                job_id=job_id,
                job_created=job_created,
                duplicate=False,
            )

        return await self._write(run)

    async def add_notification(
        self, account_id: str, notification: bmcore.Notification, *, now: datetime
    ) -> WriteResult:
        """Store a notification, or recognise an identical one as an idempotent repeat."""
        facts = notification_facts(notification)
        received = split_datetime(now)

        def run(connection: sqlite3.Connection) -> WriteResult:
            _require_account(connection, account_id)
            existing = connection.execute(
                "SELECT id, content_hash, received_us, received_offset, device_id, job_id"
                " FROM notifications WHERE account_id = ? AND content_hash = ?",
                (account_id, facts.content_hash),
            ).fetchone()
            if existing is not None:
                return _duplicate(existing)
            device_id, device_created = _ensure_device(
                connection, account_id, notification, facts, received
            )
            job_id: str | None = None
            job_created = False
            job_name, job_name_key = notification.job_name, facts.name_keys[2]
            if job_name is not None and job_name_key is not None and facts.job_digest is not None:
                names = (notification.sender, notification.device_name, job_name)
                keys = (*facts.name_keys[:2], job_name_key)
                job_id, job_created = _ensure_job(
                    connection, (account_id, device_id), (names, keys), facts.job_digest, received
                )
            entry_id = new_id("nt")
            connection.execute(
                _INSERT_NOTIFICATION,
                (
                    *(entry_id, account_id, device_id, job_id, facts.ts_us, facts.ts_offset),
                    *(notification.sender, notification.device_name, notification.job_name),
                    *(notification.severity.value, notification.type, notification.message),
                    *(facts.content_hash, *received),
                    *facts.name_keys,
                ),
            )
            return WriteResult(
                id=entry_id,
                received_at=join_datetime(*received),
                device_id=device_id,
                device_created=device_created,
                job_id=job_id,
                job_created=job_created,
                duplicate=False,
            )

        return await self._write(run)

    # --- read side ----------------------------------------------------------------------------

    async def list_devices(
        self, account_id: str, *, limit: int, cursor: str | None
    ) -> Page[DeviceRecord]:
        """Devices of one account, newest first."""
        select = _Select(
            "devices",
            _SELECT_DEVICES,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            table="devices",
            time_column="created_us",
        )
        return await self._read(lambda connection: select.page(connection, _device))

    async def list_jobs(
        self, account_id: str, *, device_name: str | None, limit: int, cursor: str | None
    ) -> Page[JobRecord]:
        """Jobs of one account with their latest backup, newest first."""
        select = _Select(
            "jobs",
            _JOBS_WITH_LATEST,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            table="jobs",
            time_column="created_us",
        )
        names = NameFilter.of(sender=None, device_name=device_name, job_name=None)
        select.where("jobs.device_name_key", names.device_name)
        return await self._read(lambda connection: select.page(connection, _job))

    async def get_backup(self, account_id: str, entry_id: str) -> StoredBackup | None:
        """One backup of the account by id, or None."""
        select = _Select(
            "backups",
            _SELECT_BACKUPS,
            account_id=account_id,
            limit=1,
            cursor=None,
            table="backups",
            time_column="ts_us",
        )
        select.where("id", entry_id)
        page = await self._read(lambda connection: select.page(connection, _backup))
        return page.items[0] if page.items else None

    async def get_notification(self, account_id: str, entry_id: str) -> StoredNotification | None:
        """One notification of the account by id, or None."""
        select = _Select(
            "notifications",
            _SELECT_NOTIFICATIONS,
            account_id=account_id,
            limit=1,
            cursor=None,
            table="notifications",
            time_column="ts_us",
        )
        select.where("id", entry_id)
        page = await self._read(lambda connection: select.page(connection, _notification))
        return page.items[0] if page.items else None

    async def list_backups(
        self, account_id: str, query: BackupQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredBackup]:
        """Backups of one account, newest timestamp first."""
        select = _Select(
            "backups",
            _SELECT_BACKUPS,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            table="backups",
            time_column="ts_us",
        )
        select.window(TimeWindow.of(query.since, query.until))
        names = NameFilter.of(
            sender=query.sender, device_name=query.device_name, job_name=query.job_name
        )
        select.where("sender_key", names.sender)
        select.where("device_name_key", names.device_name)
        select.where("job_name_key", names.job_name)
        select.where("outcome", query.outcome)
        select.where("status", query.status)
        return await self._read(lambda connection: select.page(connection, _backup))

    async def list_notifications(
        self, account_id: str, query: NotificationQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredNotification]:
        """Notifications of one account, newest timestamp first."""
        select = _Select(
            "notifications",
            _SELECT_NOTIFICATIONS,
            account_id=account_id,
            limit=limit,
            cursor=cursor,
            table="notifications",
            time_column="ts_us",
        )
        select.window(TimeWindow.of(query.since, query.until))
        names = NameFilter.of(
            sender=query.sender, device_name=query.device_name, job_name=query.job_name
        )
        select.where("sender_key", names.sender)
        select.where("device_name_key", names.device_name)
        select.where("job_name_key", names.job_name)  # NULL without a job: it equals no name
        select.where("severity", query.severity)
        select.where("type", query.type)
        return await self._read(lambda connection: select.page(connection, _notification))


# --- the writer's helpers -------------------------------------------------------------------------


def _settle(settled: Sequence[_Settlement]) -> None:
    """Resolve the writes' futures, each on its own loop (futures are not thread-safe).

    One callback per loop, not one per write: each call_soon_threadsafe wakes the loop with a
    write to its self-pipe, and under load a batch holds dozens of writes from the same loop.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for write, result, error in settled:
        by_loop.setdefault(write.loop, []).append((write.future, result, error))
    for loop, outcomes in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve_all, outcomes)
        except RuntimeError:  # that loop is closed: nobody is waiting for these answers any more
            continue


def _resolve_all(outcomes: Sequence[_Outcome]) -> None:
    for future, result, error in outcomes:
        _resolve(future, result, error)


def _resolve(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.cancelled():  # the caller gave up; the write itself stands (or failed) anyway
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _drain(pending: queue.SimpleQueue[_Write | None]) -> list[_Write]:
    writes: list[_Write] = []
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return writes
        if item is not None:
            writes.append(item)


def _use_wal(connection: sqlite3.Connection, path: str) -> None:
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        msg = f"{path}: cannot use WAL mode here (the journal mode stays {mode!r})"
        raise StoreError(msg)


def _require_account(connection: sqlite3.Connection, account_id: str) -> None:
    if connection.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone() is None:
        raise StoreError(f"unknown account {account_id!r}")


def _ensure_device(
    connection: sqlite3.Connection,
    account_id: str,
    entry: bmcore.BackupEntry | bmcore.Notification,
    facts: EntryFacts[str] | EntryFacts[str | None],
    now: tuple[int, int],
) -> tuple[str, bool]:
    """The matched device's id and whether it was created; a new entry is a sign of life."""
    row = connection.execute(
        "SELECT id FROM devices WHERE account_id = ? AND digest = ?",
        (account_id, facts.device_digest),
    ).fetchone()
    if row is None:
        device_id = new_id("dev")
        connection.execute(
            "INSERT INTO devices (id, account_id, digest, sender, device_name, sender_key,"
            " device_name_key, created_us, created_offset, last_seen_us, last_seen_offset)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                device_id,
                account_id,
                facts.device_digest,
                entry.sender,
                entry.device_name,
                *facts.name_keys[:2],
                *now,
                *now,
            ),
        )
        return device_id, True
    _touch_device(connection, row[0], now)
    return str(row[0]), False


def _touch_device(connection: sqlite3.Connection, device_id: str, now: tuple[int, int]) -> None:
    """Record a sign of life of the device, never back in time when clocks disagree."""
    connection.execute(
        "UPDATE devices SET last_seen_us = ?, last_seen_offset = ?"
        " WHERE id = ? AND last_seen_us < ?",
        (*now, device_id, now[0]),
    )


def _ensure_job(
    connection: sqlite3.Connection,
    device: tuple[str, str],
    names: tuple[tuple[str, str, str], tuple[str, str, str]],
    digest: str,
    now: tuple[int, int],
) -> tuple[str, bool]:
    """The matched job's id and whether it was created, with the names this entry sent.

    ``device`` is (account id, device id) of the device the job runs on; ``names`` are the
    (sender, device name, job name) as sent and in canonical form.
    """
    account_id, device_id = device
    row = connection.execute(
        "SELECT id FROM jobs WHERE account_id = ? AND digest = ?", (account_id, digest)
    ).fetchone()
    if row is not None:
        return str(row[0]), False
    job_id = new_id("job")
    sent, canonical = names
    connection.execute(
        "INSERT INTO jobs (id, account_id, device_id, digest, sender, device_name, job_name,"
        " sender_key, device_name_key, job_name_key, created_us, created_offset)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job_id, account_id, device_id, digest, *sent, *canonical, *now),
    )
    return job_id, True


# --- the readers' helpers -------------------------------------------------------------------------


class _Select:
    """A listing query built from fixed fragments; every value is a bound parameter.

    The sort key is (``time_column``, ``seq``) descending, which the table's indexes yield in
    order, and the next page holds the rows strictly after the cursor's place (keyset
    pagination: no OFFSET over the list, so a page costs the same however deep it is).

    ``seq`` is shared by every account, so it never leaves the store: a cursor holds a place,
    (time, rank among the account's rows with that time; see
    :func:`~bmserver._memory.encode_cursor`), and a read turns it back into a sort key within
    the caller's account. Both steps read only the rows of one account at one exact time, a
    short range of the read indexes (account_id, time), whose entries end with the rowid.
    """

    def __init__(
        self,
        kind: str,
        select: str,
        *,
        account_id: str,
        limit: int,
        cursor: str | None,
        table: str,
        time_column: str,
    ) -> None:
        check_limit(limit)
        # Decoded here, so that a bad cursor is refused before any read.
        self._place = None if cursor is None else decode_cursor(kind, cursor)
        self._kind = kind
        self._select = select
        self._limit = limit
        self._account_id = account_id
        self._table = table
        self._time = f"{table}.{time_column}"
        self._seq = f"{table}.seq"
        self._clauses = [f"{table}.account_id = ?"]
        self._params: list[object] = [account_id]

    def where(self, column: str, value: str | None) -> None:
        """Keep the rows whose ``column`` equals ``value``, unless it is None."""
        if value is not None:
            self._clauses.append(f"{column} = ?")
            self._params.append(value)

    def window(self, window: TimeWindow) -> None:
        """Keep the rows whose time lies in the window."""
        if window.since_us is not None:
            self._clauses.append(f"{self._time} >= ?")
            self._params.append(window.since_us)
        if window.until_us is not None:
            self._clauses.append(f"{self._time} < ?")
            self._params.append(window.until_us)

    def page(
        self, connection: sqlite3.Connection, convert: Callable[[_Row], tuple[R, tuple[int, int]]]
    ) -> Page[R]:
        """Run the query: one page of converted rows and the cursor of the next page."""
        clauses, params = list(self._clauses), list(self._params)
        if self._place is not None:
            clause, values = self._after(connection, *self._place)
            clauses.append(clause)
            params.extend(values)
        sql = (
            f"{self._select} WHERE {' AND '.join(clauses)}"
            f" ORDER BY {self._time} DESC, {self._seq} DESC LIMIT ?"
        )
        # One more row than asked tells whether there is a next page.
        rows = connection.execute(sql, (*params, self._limit + 1)).fetchall()
        converted = [convert(row) for row in rows[: self._limit]]
        more = len(rows) > self._limit
        next_cursor = None
        if more:
            last_us, last_seq = converted[-1][1]
            place = last_us, self._rank(connection, last_us, last_seq)
            next_cursor = encode_cursor(self._kind, place)
        return Page(items=[item for item, _ in converted], next_cursor=next_cursor)

    def _after(
        self, connection: sqlite3.Connection, utc_us: int, rank: int
    ) -> tuple[str, tuple[int, ...]]:
        """The clause that keeps the rows strictly after a place, in the list's order."""
        if rank == 0:  # before the first row at that time: only earlier times follow
            return f"{self._time} < ?", (utc_us,)
        find = _PLACES[self._table].find
        found = connection.execute(find, (self._account_id, utc_us, rank - 1)).fetchone()
        if found is None:  # fewer rows at that time: all of them follow the place
            return f"{self._time} <= ?", (utc_us,)
        # A row value comparison, which SQLite turns into a range on the index.
        return f"({self._time}, {self._seq}) < (?, ?)", (utc_us, found[0])

    def _rank(self, connection: sqlite3.Connection, utc_us: int, seq: int) -> int:
        """The rank of the row ``seq`` among the account's rows with its time, from 1."""
        count = _PLACES[self._table].rank
        (rank,) = connection.execute(count, (self._account_id, utc_us, seq)).fetchone()
        return int(rank)


class _Places(NamedTuple):
    """The two queries of a list's places, with literal table and column names."""

    #: The ``seq`` of the account's row at a place: (account id, time, rank - 1).
    find: str
    #: The rank of a row among the account's rows with its time: (account id, time, seq).
    rank: str


#: Each list table's queries of places: both read one account's rows at one time, a short range
#: of the read index (account_id, time) whose entries end with the rowid, in seq order.
_PLACES: Final = {
    "devices": _Places(
        find="SELECT seq FROM devices WHERE account_id = ? AND created_us = ?"
        " ORDER BY seq LIMIT 1 OFFSET ?",
        rank="SELECT count(*) FROM devices WHERE account_id = ? AND created_us = ? AND seq <= ?",
    ),
    "jobs": _Places(
        find="SELECT seq FROM jobs WHERE account_id = ? AND created_us = ?"
        " ORDER BY seq LIMIT 1 OFFSET ?",
        rank="SELECT count(*) FROM jobs WHERE account_id = ? AND created_us = ? AND seq <= ?",
    ),
    "backups": _Places(
        find="SELECT seq FROM backups WHERE account_id = ? AND ts_us = ?"
        " ORDER BY seq LIMIT 1 OFFSET ?",
        rank="SELECT count(*) FROM backups WHERE account_id = ? AND ts_us = ? AND seq <= ?",
    ),
    "notifications": _Places(
        find="SELECT seq FROM notifications WHERE account_id = ? AND ts_us = ?"
        " ORDER BY seq LIMIT 1 OFFSET ?",
        rank="SELECT count(*) FROM notifications WHERE account_id = ? AND ts_us = ? AND seq <= ?",
    ),
}

_SELECT_KEYS: Final = (
    "SELECT id, account_id, key_hash, prefix, scopes, created_us, created_offset,"
    " revoked_us, revoked_offset FROM api_keys"
)
_INSERT_KEY: Final = (
    "INSERT INTO api_keys (id, account_id, key_hash, prefix, scopes, created_us, created_offset,"
    " revoked_us, revoked_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_DEVICES: Final = (
    "SELECT id, account_id, sender, device_name, created_us, created_offset,"
    " last_seen_us, last_seen_offset, seq FROM devices"
)
_INSERT_BACKUP: Final = (
    "INSERT INTO backups (id, account_id, device_id, job_id, ts_us, ts_offset, sender,"
    " device_name, job_name, status, outcome, message, content_hash, received_us,"
    " received_offset, sender_key, device_name_key, job_name_key)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A backup's job, with the job's entry at the backup's timestamp if there is one (the
# idempotency check): both in one probe of UNIQUE (account_id, digest) and UNIQUE (job_id, ts_us).
_FIND_JOB_AND_BACKUP: Final = (
    "SELECT jobs.id, jobs.device_id, backups.id, backups.content_hash, backups.received_us,"
    " backups.received_offset, backups.device_id, backups.job_id"
    " FROM jobs LEFT JOIN backups ON backups.job_id = jobs.id AND backups.ts_us = ?"
    " WHERE jobs.account_id = ? AND jobs.digest = ?"
)
_SELECT_BACKUPS: Final = (
    "SELECT id, account_id, device_id, job_id, ts_us, ts_offset, sender, device_name,"
    " job_name, status, message, received_us, received_offset, seq FROM backups"
)
_INSERT_NOTIFICATION: Final = (
    "INSERT INTO notifications (id, account_id, device_id, job_id, ts_us, ts_offset, sender,"
    " device_name, job_name, severity, type, message, content_hash, received_us,"
    " received_offset, sender_key, device_name_key, job_name_key)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT_NOTIFICATIONS: Final = (
    "SELECT id, account_id, device_id, job_id, ts_us, ts_offset, sender, device_name,"
    " job_name, severity, type, message, received_us, received_offset, seq FROM notifications"
)
# The latest backup of a job is found through UNIQUE (job_id, ts_us): one index probe per job.
_JOBS_WITH_LATEST: Final = """
    SELECT jobs.id, jobs.account_id, jobs.device_id, jobs.sender, jobs.device_name,
           jobs.job_name, jobs.created_us, jobs.created_offset, jobs.seq,
           latest.id, latest.ts_us, latest.ts_offset, latest.status, latest.outcome
    FROM jobs
    LEFT JOIN backups AS latest ON latest.seq = (
        SELECT seq FROM backups WHERE job_id = jobs.id ORDER BY ts_us DESC LIMIT 1
    )
"""


def _api_key(row: _Row) -> ApiKeyRecord:
    key_id, account_id, key_hash, prefix, scopes, created_us, created_offset = row[:7]
    revoked_us, revoked_offset = row[7:]
    return ApiKeyRecord(
        id=key_id,
        account_id=account_id,
        key_hash=key_hash,
        prefix=prefix,
        scopes=frozenset(Scope(value) for value in str(scopes).split()),
        created_at=join_datetime(created_us, created_offset),
        revoked_at=None if revoked_us is None else join_datetime(revoked_us, revoked_offset),
    )


# --- rows to records ------------------------------------------------------------------------------

# SQLite keeps an instant as integer UTC microseconds beside its offset.
_ROWS: Final = RowReader[int](shown=join_datetime, micros=int)
_account: Final = _ROWS.account
_duplicate: Final = _ROWS.duplicate
_device: Final = _ROWS.device
_job: Final = _ROWS.job
_backup: Final = _ROWS.backup
_notification: Final = _ROWS.notification
