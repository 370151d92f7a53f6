"""The store for several bmserver instances: PostgreSQL through psycopg 3 and a connection pool.

The same contract as :class:`~bmserver.SqliteStore`, and the same design where it carries
over. Writes: every write becomes a coroutine function on an asyncio queue. One writer task per
store takes everything pending (up to :data:`MAX_BATCH`) as one batch, runs each write inside
its own SAVEPOINT (so that a write that fails, such as a conflict, is undone alone and the rest
of the batch stands), COMMITs once, and only then resolves each caller's future. A write's
coroutine therefore returns only after its commit: the HTTP layer never acknowledges an entry
that a crash could still lose, and one commit (one WAL flush) covers every write that arrived
while the previous batch was committing.

Unlike SQLite's single writer, several processes write to one database at once (instances
behind a load balancer), so nothing here relies on an in-process check. Every identity is a
UNIQUE constraint (an account's name, a key's hash, a device's and a job's matching key, a
backup's job and instant, a notification's content) and every insert of one is ``INSERT ... ON
CONFLICT DO NOTHING``. A write whose row another instance inserted first waits for that
instance's commit, reads the winner, undoes what it did itself, and answers as a repeat (the
winner's id) or a conflict, exactly as if the two writes had arrived one after the other.

A batch holds its row locks until it commits, and two instances' batches may touch the same
device, job or entry: each batch runs its writes sorted by the key of what they lock
(:func:`_entry_order`), so that every instance takes its locks in one global order and two
batches cannot deadlock. A write that still fails on a deadlock or a serialization failure
(another client of the database, say) is run again in a new transaction, at most
:data:`WRITE_ATTEMPTS` times.

Reads use the pool's other connections, in autocommit mode: each statement sees everything
committed when it starts, by this instance or any other. A listing is one statement, plus one
that finds the cursor's place in the caller's account and one that ranks the page's last row
for the next cursor (see :class:`_Select`).

Every failure of the database or of the pool reaches the caller as :class:`StoreError`, which
the HTTP layer answers with 503 and Retry-After, with psycopg's error as its ``__cause__``: in
open(), in every read, and in every write, be it the batch's (a lost connection) or one write's
own (a statement time-out). That includes the pool's PoolTimeout, when no connection is free
within ``pool_timeout_s`` because every one is busy or the server does not answer.

The pool belongs to the event loop that opened the store (psycopg's async connections and the
pool's workers live there); use the store from that loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Generator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Final, LiteralString, NamedTuple, Self, TypeVar

import attrs
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

import bmcore
from bmserver._memory import (
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
from bmserver._postgres_migrations import apply_migrations
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

__all__ = ["MAX_BATCH", "OPEN_TIMEOUT_S", "POOL_TIMEOUT_S", "WRITE_ATTEMPTS", "PostgresStore"]

T = TypeVar("T")
R = TypeVar("R")

#: The most writes committed together. Past a few dozen, a bigger batch saves no more commit
#: time, and it would hold its row locks longer while another instance waits for them.
MAX_BATCH: Final = 100
#: How many transactions a write may take when it keeps failing on a deadlock.
WRITE_ATTEMPTS: Final = 3
#: How long open() waits for the pool's first connections.
OPEN_TIMEOUT_S: Final = 30.0
#: How long a read or a batch waits for a free connection of the pool (psycopg_pool's default).
POOL_TIMEOUT_S: Final = 30.0

_Connection = AsyncConnection[TupleRow]
_Row = tuple[Any, ...]
#: The position of a write in its batch: what it locks, as a key of one global order.
_Order = tuple[str, ...]
#: An instant as the tables hold it: the aware datetime and its UTC offset in minutes.
_Moment = tuple[datetime, int]
# Errors after which running the same write again, in a new transaction, can succeed.
_TRANSIENT: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class _State(enum.Enum):
    CLOSED = "closed"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"


class _Write(NamedTuple):
    """A queued write: where it goes in its batch, what to run, and whom to tell the result."""

    order: _Order
    run: Callable[[_Connection], Awaitable[Any]]
    future: asyncio.Future[Any]


class _Repeat(Exception):  # noqa: N818 - not an error: a write's answer that must undo its work
    """Raised inside a write's savepoint: undo what the write did, and answer ``result``.

    For an entry that another instance stored first, found only when this write's INSERT
    conflicts: the device row this write touched must not move for a repeat.
    """

    def __init__(self, result: WriteResult) -> None:
        super().__init__("an idempotent repeat")
        self.result = result


@attrs.define
class _Running:
    """What an open store holds; made by open(), released by close()."""

    loop: asyncio.AbstractEventLoop
    pool: AsyncConnectionPool[_Connection]
    queue: asyncio.Queue[_Write | None] = attrs.field(factory=asyncio.Queue[_Write | None])
    #: Cleared while hold_writes() is held: the writer does not start a batch.
    released: asyncio.Event = attrs.field(factory=asyncio.Event)
    #: Set whenever no read is in flight: close() waits for it before closing the pool.
    no_reads: asyncio.Event = attrs.field(factory=asyncio.Event)
    reads: int = 0
    writer: asyncio.Task[None] | None = None
    closing: asyncio.Future[None] | None = None


class PostgresStore:
    """A :class:`~bmserver.Store` on a PostgreSQL database, which several processes may share.

    ``url`` is a libpq connection string or URL (``postgresql://user@host:5432/db``).
    ``schema``, if given, is where the tables are (it must exist): every connection's
    ``search_path`` is set to it; by default, the tables go where the URL's search path puts
    them (usually ``public``). ``min_size`` and ``max_size`` bound the connection pool; one
    connection at a time writes, the others read. A read or a batch of writes that finds no
    free connection within ``pool_timeout_s`` seconds fails with StoreError.

    ``open()`` applies pending migrations (one process at a time, however many start at once),
    opens the pool and starts the writer; ``close()`` refuses new work, commits everything
    already queued, waits for reads in flight and closes the pool. The store can be opened
    again after ``close()``, from another event loop too, but is used from the loop that
    opened it.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        pool_timeout_s: float = POOL_TIMEOUT_S,
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            msg = f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            raise ValueError(msg)
        if not pool_timeout_s > 0:
            msg = f"pool_timeout_s must be positive, got {pool_timeout_s}"
            raise ValueError(msg)
        self.url: Final = url
        self.schema: Final = schema
        self.min_size: Final = min_size
        self.max_size: Final = max_size
        self.pool_timeout_s: Final = pool_timeout_s
        #: How many transactions the writer has committed (a test checks that it batches).
        self.commit_count = 0
        #: How many migrations the last ``open()`` applied (0 when the schema was current).
        self.migrations_applied = 0
        self._state = _State.CLOSED
        self._running: _Running | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Apply pending migrations, open the connection pool, start the writer."""
        if self._state is not _State.CLOSED:
            raise StoreError(f"the store is already {self._state.value}")
        self._state = _State.OPENING
        try:
            self.migrations_applied = await self._migrate()
            pool = await self._open_pool()
        except BaseException:
            self._state = _State.CLOSED
            raise
        running = _Running(loop=asyncio.get_running_loop(), pool=pool)
        running.released.set()
        running.no_reads.set()
        running.writer = asyncio.create_task(
            self._write_loop(running), name="bmserver-postgres-writer"
        )
        self._running = running
        self._state = _State.OPEN

    async def close(self) -> None:
        """Refuse new work, commit every queued write, wait for reads in flight, close the pool.

        Closing a store that is not open does nothing; a second concurrent close() waits for
        the first.
        """
        running = self._running
        if running is None:
            return
        if self._state is _State.OPEN:
            self._state = _State.CLOSING
            running.closing = asyncio.ensure_future(self._shut_down(running))
        if running.closing is not None:
            # Shielded: a caller that gives up waiting does not stop the shutdown half-way.
            await asyncio.shield(running.closing)

    async def _shut_down(self, running: _Running) -> None:
        try:
            running.queue.put_nowait(None)  # after every accepted write: the writer drains them
            writer = running.writer
            if writer is not None:
                await asyncio.wait((writer,))  # raises nothing, even for a writer that failed
                if not writer.cancelled() and (error := writer.exception()) is not None:
                    raise error  # a bug in the writer: shown, once the pool is closed
        finally:
            await running.no_reads.wait()
            await running.pool.close()
            self._running = None
            self._state = _State.CLOSED

    @contextlib.contextmanager
    def hold_writes(self) -> Generator[None]:
        """Keep the writer from starting a batch while held; what queues meanwhile is one batch.

        For tests and benchmarks that need a known batch (of at most MAX_BATCH writes). Do not
        await a write inside the block: it cannot complete before the block ends.
        """
        running = self._require_open()
        running.released.clear()
        try:
            yield
        finally:
            running.released.set()

    async def _configure(self, connection: _Connection) -> None:
        """Prepare a new connection: UTC for the datetimes it returns, and the schema."""
        await connection.execute("SET TIME ZONE 'UTC'")
        if self.schema is not None:
            await connection.execute(
                sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
            )

    async def _migrate(self) -> int:
        # A connection of its own rather than the pool's: a pool that cannot connect retries
        # in the background until its timeout, where this fails at once with libpq's reason.
        try:
            connection = await AsyncConnection.connect(self.url, autocommit=True)
        except psycopg.OperationalError as error:
            raise StoreError(f"cannot connect to PostgreSQL: {error}") from error
        try:
            async with connection:
                await self._configure(connection)
                return await apply_migrations(connection)
        except psycopg.Error as error:
            raise StoreError(f"cannot bring the schema up to date: {error}") from error

    async def _open_pool(self) -> AsyncConnectionPool[_Connection]:
        pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
            self.url,
            kwargs={"autocommit": True},  # transactions are exactly the writer's, never implicit
            min_size=self.min_size,
            max_size=self.max_size,
            timeout=self.pool_timeout_s,
            open=False,
            configure=self._configure,
            name="bmserver",
        )
        try:
            await pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
        except BaseException as error:
            await pool.close()
            if isinstance(error, psycopg.Error):  # PoolTimeout among them
                raise StoreError(f"cannot open connections to PostgreSQL: {error}") from error
            raise
        return pool

    def _require_open(self) -> _Running:
        running = self._running
        if running is None or self._state is not _State.OPEN:
            raise StoreError("the store is not open")
        if asyncio.get_running_loop() is not running.loop:
            raise StoreError("the store was opened on another event loop; use it there")
        return running

    # --- the writer ---------------------------------------------------------------------------

    async def _write_loop(self, running: _Running) -> None:
        taken: list[_Write] = []  # out of the queue, maybe not settled: for the finally below
        try:
            while True:
                first = await running.queue.get()
                taken = [] if first is None else [first]
                await running.released.wait()
                taken, stop = _take_batch(running.queue, first)
                if taken:
                    await self._run_batch(running.pool, taken)
                if stop:
                    return
        finally:
            # Normally everything is settled; after an unexpected failure of the loop itself
            # (or its cancellation), no write may wait forever.
            stopped = StoreError("the store's writer has stopped")
            for write in [*taken, *_drain(running.queue)]:
                _resolve(write.future, None, stopped)

    async def _run_batch(
        self, pool: AsyncConnectionPool[_Connection], batch: Sequence[_Write]
    ) -> None:
        # A stable sort: writes with the same key keep their order of arrival.
        pending = sorted(batch, key=lambda write: write.order)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            pending = await self._commit(pool, pending, retry=attempt < WRITE_ATTEMPTS)
            if not pending:
                return

    async def _commit(
        self, pool: AsyncConnectionPool[_Connection], batch: Sequence[_Write], *, retry: bool
    ) -> list[_Write]:
        """Run the writes in one transaction and settle them; return those to run again."""
        outcomes: list[tuple[_Write, object, BaseException | None]] = []
        again: list[_Write] = []
        try:
            async with pool.connection() as connection, connection.transaction():
                for write in batch:
                    result, error = await _run_in_savepoint(connection, write)
                    if retry and isinstance(error, _TRANSIENT):
                        again.append(write)
                    else:
                        outcomes.append((write, result, _storage_error(error)))
        except Exception as batch_error:  # noqa: BLE001 - BEGIN, COMMIT or the connection failed
            # Nothing of this transaction is durable: every caller gets an error, none an ack.
            for write in batch:
                failure = StoreError(f"the write could not be committed: {batch_error}")
                failure.__cause__ = batch_error
                _resolve(write.future, None, failure)
            return []
        self.commit_count += 1
        for write, result, error in outcomes:
            _resolve(write.future, result, error)
        return again

    async def _write(self, order: _Order, run: Callable[[_Connection], Awaitable[T]]) -> T:
        running = self._require_open()
        if running.writer is None or running.writer.done():  # it failed: nothing would answer
            raise StoreError("the store's writer has stopped")
        future: asyncio.Future[T] = running.loop.create_future()
        running.queue.put_nowait(_Write(order, run, future))
        return await future

    # --- readers ------------------------------------------------------------------------------

    async def _read(self, run: Callable[[_Connection], Awaitable[T]]) -> T:
        running = self._require_open()
        running.reads += 1
        running.no_reads.clear()
        try:
            async with running.pool.connection() as connection:
                return await run(connection)
        except psycopg.Error as error:  # PoolTimeout among them
            raise StoreError(f"the read failed: {error}") from error
        finally:
            running.reads -= 1
            if not running.reads:
                running.no_reads.set()

    # --- accounts and keys --------------------------------------------------------------------

    async def create_account(self, name: str, *, now: datetime) -> Account:
        """Create an account (names are unique; an existing name returns that account)."""
        created = _moment(now)

        async def run(connection: _Connection) -> Account:
            inserted = await _fetch(
                connection,
                "INSERT INTO accounts (id, name, created_at, created_offset)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING"
                " RETURNING id, name, created_at, created_offset",
                (new_id("acc"), name, *created),
            )
            if inserted is not None:
                return _account(inserted)
            existing = await _fetch(
                connection,
                "SELECT id, name, created_at, created_offset FROM accounts WHERE name = %s",
                (name,),
            )
            return _account(_required(existing))

        return await self._write(("account", name), run)

    async def count_accounts(self) -> int:
        """How many accounts exist (0 on a new database)."""

        async def run(connection: _Connection) -> int:
            row = await _fetch(connection, "SELECT count(*) FROM accounts", ())
            return int(_required(row)[0])

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
        created = _moment(now)
        scope_values = sorted(scope.value for scope in scopes)

        async def run(connection: _Connection) -> ApiKeyRecord:
            await _require_account(connection, account_id)
            row = await _fetch(
                connection,
                _INSERT_KEY,
                (new_id("key"), account_id, key_hash, prefix, scope_values, *created),
            )
            if row is None:
                raise StoreError("a key with this hash is already stored")
            return _api_key(row)

        return await self._write(("key", key_hash), run)

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The unrevoked key with this hash, or None."""

        async def run(connection: _Connection) -> ApiKeyRecord | None:
            row = await _fetch(
                connection,
                _SELECT_KEYS + " WHERE key_hash = %s AND revoked_at IS NULL",
                (key_hash,),
            )
            return None if row is None else _api_key(row)

        return await self._read(run)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""

        async def run(connection: _Connection) -> list[ApiKeyRecord]:
            cursor = await connection.execute(_SELECT_KEYS + " ORDER BY created_at, seq")
            return [_api_key(row) for row in await cursor.fetchall()]

        return await self._read(run)

    async def revoke_api_key(self, prefix: str, *, now: datetime) -> ApiKeyRecord:
        """Revoke the unrevoked keys with this display prefix and return the oldest of them.

        A prefix is 8 random characters, so two keys share one only by a rare accident; both
        are then revoked rather than guessing which one the operator meant.
        """
        revoked = _moment(now)

        async def run(connection: _Connection) -> ApiKeyRecord:
            # Two instances revoking at once: the second waits for the first's row locks, then
            # finds the keys revoked and updates nothing, as if it had come second.
            cursor = await connection.execute(_REVOKE_KEYS, (*revoked, prefix))
            rows = sorted(await cursor.fetchall(), key=lambda row: (row[5], row[-1]))
            if not rows:
                raise UnknownKeyError(f"no active key has the prefix {prefix!r}")
            return _api_key(rows[0])

        return await self._write(("revoke", prefix), run)

    # --- entries ------------------------------------------------------------------------------

    async def add_backup(
        self, account_id: str, entry: bmcore.BackupEntry, *, now: datetime
    ) -> WriteResult:
        """Store a backup, or recognise an idempotent repeat; ConflictError on a clash."""
        # Everything that needs no database is done here, before the write queues.
        facts = backup_facts(entry)
        received = _moment(now)
        stamp = (entry.timestamp, facts.ts_offset)
        names = (entry.sender, entry.device_name, entry.job_name)
        keys = facts.name_keys
        order = _entry_order(account_id, facts.device_digest, facts.job_digest, f"b{facts.ts_us}")

        async def run(connection: _Connection) -> WriteResult:
            # A known job, the common case, takes one query, one UPDATE and the INSERT.
            found = await _fetch(
                connection, _FIND_JOB_AND_BACKUP, (entry.timestamp, account_id, facts.job_digest)
            )
            if found is None:
                await _require_account(connection, account_id)
                device_id, device_created = await _ensure_device(
                    connection, account_id, (*names[:2], *keys[:2]), facts.device_digest, received
                )
                job_id, job_created = await _insert_job(
                    connection, (account_id, device_id), (names, keys), facts.job_digest, received
                )
            else:
                job_id, device_id, existing = found[0], found[1], found[2:]
                if existing[0] is not None:
                    return _repeat_or_conflict(existing, facts.content_hash)
                # The job exists, so its account does (a foreign key), and its device is the
                # one this entry names: a job's key extends its device's key.
                await _touch_device(connection, device_id, received)
                device_created = job_created = False
            entry_id = new_id("bk")
            values = (
                *(entry_id, account_id, device_id, job_id, *stamp),
                *(entry.sender, entry.device_name, entry.job_name, entry.status),
                *(entry.outcome.value, entry.message, facts.content_hash, *received),
                *keys,
            )
            if await _fetch(connection, _INSERT_BACKUP, values) is None:
                # Another instance stored this job's entry at this instant since the query above.
                theirs = await _fetch(connection, _FIND_BACKUP, (job_id, entry.timestamp))
                raise _Repeat(_repeat_or_conflict(_required(theirs), facts.content_hash))
            return WriteResult(
                id=entry_id,
                received_at=_shown(*received),
                device_id=device_id,
                device_created=device_created,
                job_id=job_id,
                job_created=job_created,
                duplicate=False,
            )

        return await self._write(order, run)

    async def add_notification(
        self, account_id: str, notification: bmcore.Notification, *, now: datetime
    ) -> WriteResult:
        """Store a notification, or recognise an identical one as an idempotent repeat."""
        facts = notification_facts(notification)
        received = _moment(now)
        stamp = (notification.timestamp, facts.ts_offset)
        order = _entry_order(
            account_id, facts.device_digest, facts.job_digest or "", f"n{facts.content_hash.hex()}"
        )

        async def run(connection: _Connection) -> WriteResult:
            await _require_account(connection, account_id)
            existing = await _fetch(
                connection, _FIND_NOTIFICATION, (account_id, facts.content_hash)
            )
            if existing is not None:
                return _duplicate(existing)
            device_id, device_created = await _ensure_device(
                connection,
                account_id,
                (notification.sender, notification.device_name, *facts.name_keys[:2]),
                facts.device_digest,
                received,
            )
            job_id: str | None = None
            job_created = False
            job_name, job_name_key = notification.job_name, facts.name_keys[2]
            if job_name is not None and job_name_key is not None and facts.job_digest is not None:
                names = (notification.sender, notification.device_name, job_name)
                keys = (*facts.name_keys[:2], job_name_key)
                job_id, job_created = await _ensure_job(
                    connection, (account_id, device_id), (names, keys), facts.job_digest, received
                )
            entry_id = new_id("nt")
            values = (
                *(entry_id, account_id, device_id, job_id, *stamp),
                *(notification.sender, notification.device_name, notification.job_name),
                *(notification.severity.value, notification.type, notification.message),
                *(facts.content_hash, *received),
                *facts.name_keys,
            )
            if await _fetch(connection, _INSERT_NOTIFICATION, values) is None:
                # Another instance stored the same notification since the query above.
                theirs = await _fetch(
                    connection, _FIND_NOTIFICATION, (account_id, facts.content_hash)
                )
                raise _Repeat(_duplicate(_required(theirs)))
            return WriteResult(
                id=entry_id,
                received_at=_shown(*received),
                device_id=device_id,
                device_created=device_created,
                job_id=job_id,
                job_created=job_created,
                duplicate=False,
            )

        return await self._write(order, run)

    # --- read side ----------------------------------------------------------------------------

    async def list_devices(
        self, account_id: str, *, limit: int, cursor: str | None
    ) -> Page[DeviceRecord]:
        """Devices of one account, newest first."""
        select = _Select("devices", _SELECT_DEVICES, account_id, limit=limit, cursor=cursor)
        return await self._read(lambda connection: select.page(connection, _device))

    async def list_jobs(
        self, account_id: str, *, device_name: str | None, limit: int, cursor: str | None
    ) -> Page[JobRecord]:
        """Jobs of one account with their latest backup, newest first."""
        select = _Select("jobs", _JOBS_WITH_LATEST, account_id, limit=limit, cursor=cursor)
        names = NameFilter.of(sender=None, device_name=device_name, job_name=None)
        select.where("device_name_key", names.device_name)
        return await self._read(lambda connection: select.page(connection, _job))

    async def get_backup(self, account_id: str, entry_id: str) -> StoredBackup | None:
        """One backup of the account by id, or None."""
        select = _Select("backups", _SELECT_BACKUPS, account_id, limit=1, cursor=None)
        select.where("id", entry_id)
        page = await self._read(lambda connection: select.page(connection, _backup))
        return page.items[0] if page.items else None

    async def get_notification(self, account_id: str, entry_id: str) -> StoredNotification | None:
        """One notification of the account by id, or None."""
        select = _Select("notifications", _SELECT_NOTIFICATIONS, account_id, limit=1, cursor=None)
        select.where("id", entry_id)
        page = await self._read(lambda connection: select.page(connection, _notification))
        return page.items[0] if page.items else None

    async def list_backups(
        self, account_id: str, query: BackupQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredBackup]:
        """Backups of one account, newest timestamp first."""
        select = _Select("backups", _SELECT_BACKUPS, account_id, limit=limit, cursor=cursor)
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
            "notifications", _SELECT_NOTIFICATIONS, account_id, limit=limit, cursor=cursor
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


def _entry_order(account_id: str, device_digest: str, job_digest: str, identity: str) -> _Order:
    """The lock order of an entry's write: its device, then its job, then the entry itself.

    A write locks its device row (new, or its last_seen moved), then its job row, then its
    entry's unique key, in that order; sorting a batch by (account, device, job, entry) makes
    every batch of every instance acquire its locks in one global order, so none can wait for
    another in a cycle. Equal keys mean the same rows (the same content has the same names).
    """
    return ("entry", account_id, device_digest, job_digest, identity)


async def _run_in_savepoint(
    connection: _Connection, write: _Write
) -> tuple[object, BaseException | None]:
    """Run one write of a batch in its own savepoint: (its result, None) or (None, its error)."""
    try:
        async with connection.transaction():
            result = await write.run(connection)
    except _Repeat as repeat:  # rolled back, and answered
        return repeat.result, None
    except Exception as error:  # noqa: BLE001 - the caller gets it; the batch goes on
        return None, error
    return result, None


def _take_batch(
    pending: asyncio.Queue[_Write | None], first: _Write | None
) -> tuple[list[_Write], bool]:
    batch: list[_Write] = []
    item = first
    while item is not None:
        batch.append(item)
        if len(batch) >= MAX_BATCH:
            return batch, False
        try:
            item = pending.get_nowait()
        except asyncio.QueueEmpty:
            return batch, False
    return batch, True


def _drain(pending: asyncio.Queue[_Write | None]) -> list[_Write]:
    writes: list[_Write] = []
    while True:
        try:
            item = pending.get_nowait()
        except asyncio.QueueEmpty:
            return writes
        if item is not None:
            writes.append(item)


def _storage_error(error: BaseException | None) -> BaseException | None:
    """A write's own error as its caller gets it: a failure of the database is a StoreError."""
    if isinstance(error, psycopg.Error):
        failure = StoreError(f"the write failed: {error}")
        failure.__cause__ = error
        return failure
    return error


def _resolve(future: asyncio.Future[Any], result: object, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (the write stands, or failed, anyway), or settled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _moment(value: datetime) -> _Moment:
    """An aware datetime with its offset in minutes; ValueError as split_datetime raises it."""
    return value, split_datetime(value)[1]


def _shown(instant: datetime, offset: int) -> datetime:
    """A stored instant at the offset it was sent with."""
    return instant.astimezone(timezone(timedelta(minutes=offset)))


def _required(row: _Row | None) -> _Row:
    """A row that the constraints guarantee (say, the winner of a lost ON CONFLICT)."""
    if row is None:
        raise StoreError("a row that must exist was not found; the database changed underneath")
    return row


async def _fetch(
    connection: _Connection, query: LiteralString | sql.Composed, params: Sequence[object]
) -> _Row | None:
    """The first row of a query's answer, or None."""
    cursor = await connection.execute(query, params)
    return await cursor.fetchone()


async def _require_account(connection: _Connection, account_id: str) -> None:
    if await _fetch(connection, "SELECT 1 FROM accounts WHERE id = %s", (account_id,)) is None:
        raise StoreError(f"unknown account {account_id!r}")


async def _ensure_device(
    connection: _Connection,
    account_id: str,
    names: tuple[str, str, str, str],
    digest: str,
    now: _Moment,
) -> tuple[str, bool]:
    """The matched device's id and whether it was created; a new entry is a sign of life.

    ``names`` are the entry's (sender, device name) as sent and in canonical form, kept as the
    device's if it is new.
    """
    found = await _fetch(
        connection,
        "SELECT id FROM devices WHERE account_id = %s AND digest = %s",
        (account_id, digest),
    )
    if found is None:
        device_id = new_id("dev")
        values = (device_id, account_id, digest, *names, *now, *now)
        if await _fetch(connection, _INSERT_DEVICE, values) is not None:
            return device_id, True
        # Another instance created it since the query above.
        found = await _fetch(
            connection,
            "SELECT id FROM devices WHERE account_id = %s AND digest = %s",
            (account_id, digest),
        )
    device_id = str(_required(found)[0])
    await _touch_device(connection, device_id, now)
    return device_id, False


async def _touch_device(connection: _Connection, device_id: str, now: _Moment) -> None:
    """Record a sign of life of the device, never back in time when clocks disagree."""
    await connection.execute(
        "UPDATE devices SET last_seen_at = %s, last_seen_offset = %s"
        " WHERE id = %s AND last_seen_at < %s",
        (*now, device_id, now[0]),
    )


async def _ensure_job(
    connection: _Connection,
    device: tuple[str, str],
    names: tuple[tuple[str, str, str], tuple[str, str, str]],
    digest: str,
    now: _Moment,
) -> tuple[str, bool]:
    """The matched job's id and whether it was created (``device``: account id, device id).

    ``names`` are the entry's (sender, device name, job name) as sent and in canonical form.
    """
    found = await _fetch(
        connection, "SELECT id FROM jobs WHERE account_id = %s AND digest = %s", (device[0], digest)
    )
    if found is not None:
        return str(found[0]), False
    return await _insert_job(connection, device, names, digest, now)


async def _insert_job(
    connection: _Connection,
    device: tuple[str, str],
    names: tuple[tuple[str, str, str], tuple[str, str, str]],
    digest: str,
    now: _Moment,
) -> tuple[str, bool]:
    """A job that was not found: created, or found again if another instance just created it."""
    account_id, device_id = device
    job_id = new_id("job")
    sent, canonical = names
    values = (job_id, account_id, device_id, digest, *sent, *canonical, *now)
    if await _fetch(connection, _INSERT_JOB, values) is not None:
        return job_id, True
    found = await _fetch(
        connection,
        "SELECT id FROM jobs WHERE account_id = %s AND digest = %s",
        (account_id, digest),
    )
    return str(_required(found)[0]), False


def _repeat_or_conflict(existing: _Row, content_hash: bytes) -> WriteResult:
    """The answer to a backup whose job already has an entry at its instant.

    ``existing`` is (id, content hash, received at, offset, device id, job id).
    """
    if existing[1] != content_hash:
        raise ConflictError(existing[0])
    return _duplicate(existing)


# --- the readers' helpers -------------------------------------------------------------------------


class _Select:
    """A listing query composed from fixed fragments; every value is a bound parameter.

    The sort key is (the list's time, ``seq``) descending, which the read indexes yield in
    order, and the next page holds the rows strictly after the cursor's place (keyset
    pagination: no OFFSET over the list, so a page costs the same however deep it is).

    ``seq`` is shared by every account, so it never leaves the store: a cursor holds a place,
    (time in UTC microseconds, rank among the account's rows with that time; see
    :func:`~bmserver._memory.encode_cursor`), and a read turns it back into a sort key within
    the caller's account. Both steps read only the rows of one account at one exact time, a
    short range of the read index (account_id, time, seq).

    Rows are never deleted, so a rank only grows if a row of the same account, time and list
    with a smaller ``seq`` commits later: two instances inserting at once may commit out of
    ``seq`` order. A walk through the list then skips that late row if its cursor was at that
    very time, as keyset pagination skips any row committed behind its cursor; it never shows
    a row twice.
    """

    def __init__(
        self, kind: str, select: sql.Composable, account_id: str, *, limit: int, cursor: str | None
    ) -> None:
        check_limit(limit)
        table, time_column = _LISTS[kind]
        # Decoded here, so that a bad cursor is refused before any read.
        self._place = None if cursor is None else decode_cursor(kind, cursor)
        self._kind = kind
        self._select = select
        self._limit = limit
        self._account_id = account_id
        self._table = table
        self._time = sql.Identifier(table, time_column)
        self._seq = sql.Identifier(table, "seq")
        self._clauses: list[sql.Composable] = []
        self._params: list[object] = []
        self.where("account_id", account_id)

    def where(self, column: str, value: str | None) -> None:
        """Keep the rows whose ``column`` (of the list's table) equals ``value``, unless None."""
        if value is not None:
            self._clauses.append(sql.SQL("{} = %s").format(sql.Identifier(self._table, column)))
            self._params.append(value)

    def window(self, window: TimeWindow) -> None:
        """Keep the rows whose time lies in the window."""
        if window.since_us is not None:
            self._clauses.append(sql.SQL("{} >= %s").format(self._time))
            self._params.append(join_datetime(window.since_us, 0))
        if window.until_us is not None:
            self._clauses.append(sql.SQL("{} < %s").format(self._time))
            self._params.append(join_datetime(window.until_us, 0))

    async def page(
        self, connection: _Connection, convert: Callable[[_Row], tuple[R, tuple[int, int]]]
    ) -> Page[R]:
        """Run the query: one page of converted rows and the cursor of the next page."""
        clauses, params = list(self._clauses), list(self._params)
        if self._place is not None:
            clause, values = await self._after(connection, *self._place)
            clauses.append(clause)
            params.extend(values)
        query = sql.SQL("{} WHERE {} ORDER BY {} DESC, {} DESC LIMIT %s").format(
            self._select, sql.SQL(" AND ").join(clauses), self._time, self._seq
        )
        # One more row than asked tells whether there is a next page.
        cursor = await connection.execute(query, (*params, self._limit + 1))
        rows = await cursor.fetchall()
        converted = [convert(row) for row in rows[: self._limit]]
        more = len(rows) > self._limit
        next_cursor = None
        if more:
            last_us, last_seq = converted[-1][1]
            place = last_us, await self._rank(connection, join_datetime(last_us, 0), last_seq)
            next_cursor = encode_cursor(self._kind, place)
        return Page(items=[item for item, _ in converted], next_cursor=next_cursor)

    async def _after(
        self, connection: _Connection, utc_us: int, rank: int
    ) -> tuple[sql.Composable, tuple[object, ...]]:
        """The clause that keeps the rows strictly after a place, in the list's order."""
        try:
            instant = join_datetime(utc_us, 0)
        except OverflowError:
            # A place beyond the years a datetime holds (a cursor made by hand, since no row's
            # time could be read back into one): every row lies before a place after year 9999,
            # none before a place before year 1, as the other stores' integer comparison says.
            return sql.SQL("true" if utc_us >= 0 else "false"), ()
        if rank == 0:  # before the first row at that time: only earlier times follow
            return sql.SQL("{} < %s").format(self._time), (instant,)
        query = sql.SQL(
            "SELECT seq FROM {} WHERE account_id = %s AND {} = %s ORDER BY seq LIMIT 1 OFFSET %s"
        ).format(sql.Identifier(self._table), self._time)
        found = await _fetch(connection, query, (self._account_id, instant, rank - 1))
        if found is None:  # fewer rows at that time: all of them follow the place
            return sql.SQL("{} <= %s").format(self._time), (instant,)
        return sql.SQL("({}, {}) < (%s, %s)").format(self._time, self._seq), (instant, found[0])

    async def _rank(self, connection: _Connection, instant: datetime, seq: int) -> int:
        """The rank of the row ``seq`` among the account's rows with its time, from 1."""
        query = sql.SQL(
            "SELECT count(*) FROM {} WHERE account_id = %s AND {} = %s AND seq <= %s"
        ).format(sql.Identifier(self._table), self._time)
        counted = _required(await _fetch(connection, query, (self._account_id, instant, seq)))
        return int(counted[0])


#: Each list's table and the column of its time (the first part of its sort key).
_LISTS: Final = {
    "devices": ("devices", "created_at"),
    "jobs": ("jobs", "created_at"),
    "backups": ("backups", "ts"),
    "notifications": ("notifications", "ts"),
}

_SELECT_KEYS: Final = (
    "SELECT id, account_id, key_hash, prefix, scopes, created_at, created_offset,"
    " revoked_at, revoked_offset, seq FROM api_keys"
)
_INSERT_KEY: Final = (
    "INSERT INTO api_keys (id, account_id, key_hash, prefix, scopes, created_at, created_offset)"
    " VALUES (%s, %s, %s, %s, %s::text[], %s, %s) ON CONFLICT (key_hash) DO NOTHING"
    " RETURNING id, account_id, key_hash, prefix, scopes, created_at, created_offset,"
    " revoked_at, revoked_offset, seq"
)
_REVOKE_KEYS: Final = (
    "UPDATE api_keys SET revoked_at = %s, revoked_offset = %s"
    " WHERE prefix = %s AND revoked_at IS NULL"
    " RETURNING id, account_id, key_hash, prefix, scopes, created_at, created_offset,"
    " revoked_at, revoked_offset, seq"
)
_INSERT_DEVICE: Final = (
    "INSERT INTO devices (id, account_id, digest, sender, device_name, sender_key,"
    " device_name_key, created_at, created_offset, last_seen_at, last_seen_offset)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (account_id, digest) DO NOTHING RETURNING id"
)
_INSERT_JOB: Final = (
    "INSERT INTO jobs (id, account_id, device_id, digest, sender, device_name, job_name,"
    " sender_key, device_name_key, job_name_key, created_at, created_offset)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (account_id, digest) DO NOTHING RETURNING id"
)
_INSERT_BACKUP: Final = (
    "INSERT INTO backups (id, account_id, device_id, job_id, ts, ts_offset, sender,"
    " device_name, job_name, status, outcome, message, content_hash, received_at,"
    " received_offset, sender_key, device_name_key, job_name_key)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (job_id, ts) DO NOTHING RETURNING id"
)
# A backup's job, with the job's entry at the backup's timestamp if there is one (the
# idempotency check): both in one probe of UNIQUE (account_id, digest) and UNIQUE (job_id, ts).
_FIND_JOB_AND_BACKUP: Final = (
    "SELECT jobs.id, jobs.device_id, backups.id, backups.content_hash, backups.received_at,"
    " backups.received_offset, backups.device_id, backups.job_id"
    " FROM jobs LEFT JOIN backups ON backups.job_id = jobs.id AND backups.ts = %s"
    " WHERE jobs.account_id = %s AND jobs.digest = %s"
)
_FIND_BACKUP: Final = (
    "SELECT id, content_hash, received_at, received_offset, device_id, job_id"
    " FROM backups WHERE job_id = %s AND ts = %s"
)
_INSERT_NOTIFICATION: Final = (
    "INSERT INTO notifications (id, account_id, device_id, job_id, ts, ts_offset, sender,"
    " device_name, job_name, severity, type, message, content_hash, received_at,"
    " received_offset, sender_key, device_name_key, job_name_key)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (account_id, content_hash) DO NOTHING RETURNING id"
)
_FIND_NOTIFICATION: Final = (
    "SELECT id, content_hash, received_at, received_offset, device_id, job_id"
    " FROM notifications WHERE account_id = %s AND content_hash = %s"
)
_SELECT_DEVICES: Final = sql.SQL(
    "SELECT id, account_id, sender, device_name, created_at, created_offset,"
    " last_seen_at, last_seen_offset, seq FROM devices"
)
_SELECT_BACKUPS: Final = sql.SQL(
    "SELECT id, account_id, device_id, job_id, ts, ts_offset, sender, device_name,"
    " job_name, status, message, received_at, received_offset, seq FROM backups"
)
_SELECT_NOTIFICATIONS: Final = sql.SQL(
    "SELECT id, account_id, device_id, job_id, ts, ts_offset, sender, device_name,"
    " job_name, severity, type, message, received_at, received_offset, seq FROM notifications"
)
# The latest backup of a job is found through UNIQUE (job_id, ts): one index probe per job.
_JOBS_WITH_LATEST: Final = sql.SQL(
    "SELECT jobs.id, jobs.account_id, jobs.device_id, jobs.sender, jobs.device_name,"
    " jobs.job_name, jobs.created_at, jobs.created_offset, jobs.seq,"
    " latest.id, latest.ts, latest.ts_offset, latest.status, latest.outcome"
    " FROM jobs LEFT JOIN LATERAL ("
    "   SELECT id, ts, ts_offset, status, outcome FROM backups"
    "   WHERE backups.job_id = jobs.id ORDER BY ts DESC LIMIT 1"
    " ) AS latest ON true"
)


def _api_key(row: _Row) -> ApiKeyRecord:
    key_id, account_id, key_hash, prefix, scopes, created_at, created_offset = row[:7]
    revoked_at, revoked_offset = row[7:9]
    return ApiKeyRecord(
        id=key_id,
        account_id=account_id,
        key_hash=key_hash,
        prefix=prefix,
        scopes=frozenset(Scope(value) for value in scopes),
        created_at=_shown(created_at, created_offset),
        revoked_at=None if revoked_at is None else _shown(revoked_at, revoked_offset),
    )


# --- rows to records ------------------------------------------------------------------------------


def _utc_micros(instant: datetime) -> int:
    return split_datetime(instant)[0]


# PostgreSQL keeps an instant as timestamptz beside its offset.
_ROWS: Final = RowReader[datetime](shown=_shown, micros=_utc_micros)
_account: Final = _ROWS.account
_duplicate: Final = _ROWS.duplicate
_device: Final = _ROWS.device
_job: Final = _ROWS.job
_backup: Final = _ROWS.backup
_notification: Final = _ROWS.notification
