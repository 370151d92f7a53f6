"""The store for several bmserver instances: PostgreSQL through psycopg 3 and a connection pool.

What it keeps and how it reads is the SQL stores' shared code (:mod:`bmserver.storage._sql_store`,
in the PostgreSQL dialect of :mod:`bmserver.storage._sql`), the same as
:class:`~bmserver.SqliteStore`'s; this module is how it runs.

Writes: every write is queued for the batching writer of :mod:`bmserver.storage._writer`, here
one asyncio task per store that takes everything pending (up to :data:`MAX_BATCH`) as one batch,
runs each write in its own SAVEPOINT, COMMITs once, and only then resolves each caller's
future. Several processes write to one database at once, which a single SQLite writer never
meets: every insert of an identity is ``INSERT ... ON CONFLICT DO NOTHING``, and a write that
lost such a race answers as the winner's repeat or conflict (see the shared code).

A batch holds its row locks until it commits, and two instances' batches may touch the same
device, job or entry: each batch runs its writes sorted by the key of what they lock
(``Write.order``), so that every instance takes its locks in one global order and two batches
cannot deadlock. A write that still fails on a deadlock or a serialization failure (another
client of the database, say) is run again in a new transaction, at most :data:`WRITE_ATTEMPTS`
times.

Reads use the pool's other connections, in autocommit mode: each statement sees everything
committed when it starts, by this instance or any other. A listing is one statement, plus one
that finds the cursor's place in the caller's account and one that ranks the page's last row
for the next cursor (see :class:`~bmserver.storage._sql.Select`).

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
from collections.abc import Generator, Sequence
from typing import ClassVar, Final, LiteralString, TypeVar

import attrs
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from bmserver.storage import _writer
from bmserver.storage._contract import StoreError
from bmserver.storage._postgres_migrations import apply_migrations
from bmserver.storage._sql import POSTGRES, Dialect, Row
from bmserver.storage._sql_store import Order, Run, SqlStore
from bmserver.storage._writer import State, Write

__all__ = ["MAX_BATCH", "OPEN_TIMEOUT_S", "POOL_TIMEOUT_S", "WRITE_ATTEMPTS", "PostgresStore"]

T = TypeVar("T")

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
# Errors after which running the same write again, in a new transaction, can succeed.
_TRANSIENT: Final = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


@attrs.define
class _Running:
    """What an open store holds; made by open(), released by close()."""

    loop: asyncio.AbstractEventLoop
    pool: AsyncConnectionPool[_Connection]
    queue: asyncio.Queue[Write | None] = attrs.field(factory=asyncio.Queue[Write | None])
    #: Cleared while hold_writes() is held: the writer does not start a batch.
    released: asyncio.Event = attrs.field(factory=asyncio.Event)
    #: Set whenever no read is in flight: close() waits for it before closing the pool.
    no_reads: asyncio.Event = attrs.field(factory=asyncio.Event)
    reads: int = 0
    writer: asyncio.Task[None] | None = None
    closing: asyncio.Future[None] | None = None


class PostgresStore(SqlStore):
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

    dialect: ClassVar[Dialect] = POSTGRES
    orders_batches: ClassVar[bool] = True

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
        self.commit_count = 0
        self.migrations_applied = 0
        self._state = State.CLOSED
        self._running: _Running | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Apply pending migrations, open the connection pool, start the writer."""
        if self._state is not State.CLOSED:
            raise StoreError(f"the store is already {self._state.value}")
        self._state = State.OPENING
        try:
            self.migrations_applied = await self._migrate()
            pool = await self._open_pool()
        except BaseException:
            self._state = State.CLOSED
            raise
        running = _Running(loop=asyncio.get_running_loop(), pool=pool)
        running.released.set()
        running.no_reads.set()
        running.writer = asyncio.create_task(
            self._write_loop(running), name="bmserver-postgres-writer"
        )
        self._running = running
        self._state = State.OPEN

    async def close(self) -> None:
        """Refuse new work, commit every queued write, wait for reads in flight, close the pool.

        Closing a store that is not open does nothing; a second concurrent close() waits for
        the first.
        """
        running = self._running
        if running is None:
            return
        if self._state is State.OPEN:
            self._state = State.CLOSING
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
            self._state = State.CLOSED

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
        if running is None or self._state is not State.OPEN:
            raise StoreError("the store is not open")
        if asyncio.get_running_loop() is not running.loop:
            raise StoreError("the store was opened on another event loop; use it there")
        return running

    # --- the writer ---------------------------------------------------------------------------

    async def _write_loop(self, running: _Running) -> None:
        taken: list[Write] = []  # out of the queue, maybe not settled: for the finally below
        try:
            while True:
                first = await running.queue.get()
                taken = [] if first is None else [first]
                await running.released.wait()
                taken, stop = _writer.take_batch(first, running.queue.get_nowait, MAX_BATCH)
                if taken:
                    await self._run_batch(running.pool, taken)
                if stop:
                    return
        finally:
            # Normally everything is settled; after an unexpected failure of the loop itself
            # (or its cancellation), no write may wait forever.
            stopped = StoreError("the store's writer has stopped")
            left = [*taken, *_writer.drain(running.queue.get_nowait)]
            _writer.settle([(write, None, stopped) for write in left])

    async def _run_batch(
        self, pool: AsyncConnectionPool[_Connection], batch: Sequence[Write]
    ) -> None:
        # In one global lock order (see Write.order); a stable sort, so that writes with the
        # same key keep their order of arrival.
        pending = sorted(batch, key=lambda write: write.order)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            pending = await self._commit(pool, pending, retry=attempt < WRITE_ATTEMPTS)
            if not pending:
                return

    async def _commit(
        self, pool: AsyncConnectionPool[_Connection], batch: Sequence[Write], *, retry: bool
    ) -> list[Write]:
        """Run the writes in one transaction and settle them; return those to run again."""
        settled: list[_writer.Settlement] = []
        again: list[Write] = []
        try:
            async with pool.connection() as connection, connection.transaction():
                session = _Session(connection)
                for write in batch:
                    result, error = await _run_in_savepoint(connection, session, write)
                    if retry and isinstance(error, _TRANSIENT):
                        again.append(write)
                    else:
                        settled.append((write, result, _storage_error(error)))
        except Exception as batch_error:  # noqa: BLE001 - BEGIN, COMMIT or the connection failed
            _writer.settle(_writer.batch_failed(batch, batch_error))
            return []
        self._committed(len(batch))
        _writer.settle(settled)
        return again

    async def _write(self, order: Order, run: Run[T]) -> T:
        running = self._require_open()
        if running.writer is None or running.writer.done():  # it failed: nothing would answer
            raise StoreError("the store's writer has stopped")
        future: asyncio.Future[T] = running.loop.create_future()
        running.queue.put_nowait(Write(run, order, running.loop, future))
        return await future

    # --- readers ------------------------------------------------------------------------------

    async def _read(self, run: Run[T]) -> T:
        running = self._require_open()
        running.reads += 1
        running.no_reads.clear()
        try:
            async with running.pool.connection() as connection:
                return await run(_Session(connection))
        except psycopg.Error as error:  # PoolTimeout among them
            raise StoreError(f"the read failed: {error}") from error
        finally:
            running.reads -= 1
            if not running.reads:
                running.no_reads.set()


class _Session:
    """A psycopg connection as the shared statements use it."""

    __slots__ = ("_connection",)

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def one(self, query: LiteralString, params: Sequence[object] = ()) -> Row | None:
        """The first row of the answer, or None."""
        return await (await self._connection.execute(query, params)).fetchone()

    async def all(self, query: LiteralString, params: Sequence[object] = ()) -> list[Row]:
        """Every row of the answer."""
        return await (await self._connection.execute(query, params)).fetchall()

    async def run(self, query: LiteralString, params: Sequence[object] = ()) -> int:
        """Run an INSERT or UPDATE; how many rows it changed."""
        return (await self._connection.execute(query, params)).rowcount


async def _run_in_savepoint(
    connection: _Connection, session: _Session, write: Write
) -> tuple[object, BaseException | None]:
    """Run one write of a batch in its own savepoint: (its result, None) or (None, its error)."""
    try:
        async with connection.transaction():
            result = await write.run(session)
    except Exception as error:  # noqa: BLE001 - the caller gets it; the batch goes on
        return _writer.outcome(error)
    return result, None


def _storage_error(error: BaseException | None) -> BaseException | None:
    """A write's own error as its caller gets it: a failure of the database is a StoreError."""
    if isinstance(error, psycopg.Error):
        failure = StoreError(f"the write failed: {error}")
        failure.__cause__ = error
        return failure
    return error
