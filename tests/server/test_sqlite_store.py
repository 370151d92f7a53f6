"""What only SqliteStore has: its writer thread, WAL and its readers, its lock on migrations.

What it shares with PostgresStore (migrations, the batching writer, its lifecycle) is in
test_sql_stores.py; the contract every store keeps, in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import pytest
from _stores import NOW, backups_of, run, run_async

from bmserver.storage._contract import StoreError, WriteResult
from bmserver.storage._sql import Row, Session
from bmserver.storage._sqlite import SqliteStore
from bmserver.storage._sqlite_migrations import MIGRATIONS, apply_migrations, schema_version


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's database file goes."""
    return tmp_path / "bm.sqlite3"


@contextlib.contextmanager
def raw(path: Path) -> Generator[sqlite3.Connection]:
    """A plain connection to the file, in autocommit mode, always closed."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


# --- the writer: durability and batching ----------------------------------------------------------


@run_async
async def test_writes_from_several_threads(db: Path) -> None:
    """Event loops in several threads may share one store: each write resolves on its loop."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        results: list[list[WriteResult]] = [[], [], []]

        def writer(job: int) -> None:
            async def burst() -> None:
                writes = [
                    store.add_backup(account.id, run(index, job=f"job {job}"), now=NOW)
                    for index in range(100)
                ]
                results[job].extend(await asyncio.gather(*writes))

            asyncio.run(burst())

        threads = [threading.Thread(target=writer, args=(job,)) for job in range(3)]
        for thread in threads:
            thread.start()

        def join_all() -> None:
            for thread in threads:
                thread.join()

        await asyncio.to_thread(join_all)
        assert [len(mine) for mine in results] == [100, 100, 100]
        assert len(await backups_of(store, account.id)) == 300


@run_async
async def test_a_locked_database_fails_the_batch_not_the_writer(db: Path) -> None:
    """When another process holds the write lock too long, the batch fails; the next works."""
    async with SqliteStore(db, busy_timeout_s=0.05) as store:
        account = await store.create_account("acme", now=NOW)
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="could not be committed"):
                await store.add_backup(account.id, run(1), now=NOW)
            other.execute("ROLLBACK")
        written = await store.add_backup(account.id, run(1), now=NOW)
        assert not written.duplicate
        assert [item.id for item in await backups_of(store, account.id)] == [written.id]


# --- WAL and readers ------------------------------------------------------------------------------


@run_async
async def test_the_file_is_in_wal_mode(db: Path) -> None:
    """The database uses write-ahead logging, with a -wal file beside it while open."""
    async with SqliteStore(db) as store:
        await store.create_account("acme", now=NOW)
        with raw(db) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.with_name(db.name + "-wal").exists()


@run_async
async def test_a_long_read_does_not_block_writes(db: Path) -> None:
    """A reader holding a snapshot neither blocks a commit nor sees it until it reads anew."""
    async with SqliteStore(db, busy_timeout_s=0.2) as store:
        account = await store.create_account("acme", now=NOW)
        with raw(db) as reader:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM backups").fetchone() == (0,)
            written = await store.add_backup(account.id, run(1), now=NOW)
            assert reader.execute("SELECT count(*) FROM backups").fetchone() == (0,)
            reader.execute("COMMIT")
            assert reader.execute("SELECT count(*) FROM backups").fetchone() == (1,)
        assert [item.id for item in await backups_of(store, account.id)] == [written.id]


def _busy_on(thread: threading.Thread) -> Callable[[Session], Coroutine[Any, Any, tuple[int]]]:
    """A read that finds the file locked when run on ``thread``, and reads 1 elsewhere."""

    async def read(session: Session) -> tuple[int]:
        if threading.current_thread() is thread:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise busy
        row = await session.one("SELECT 1")
        assert row is not None
        return (int(row[0]),)

    return read


async def _no_table(session: Session) -> Row | None:
    return await session.one("SELECT * FROM no_table")


@run_async
async def test_a_quick_read_that_would_wait_moves_to_a_worker_thread(db: Path) -> None:
    """The key lookup runs on the loop's thread; a locked file sends it to a worker thread."""
    async with SqliteStore(db) as store:
        # No public call can make a WAL reader find the file locked: the read is called directly.
        quick_read = store._read_key  # pyright: ignore[reportPrivateUsage]
        assert await quick_read(_busy_on(threading.current_thread())) == (1,)
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await quick_read(_no_table)


@run_async
async def test_paths_that_need_quoting_in_a_uri(tmp_path: Path) -> None:
    """Readers open the file by URI: spaces, '#', '?' and '%' in the path must not matter."""
    directory = tmp_path / "my backups #1? 100%"
    directory.mkdir()
    async with SqliteStore(directory / "bm.sqlite3") as store:
        account = await store.create_account("acme", now=NOW)
        written = await store.add_backup(account.id, run(1), now=NOW)
        assert [item.id for item in await backups_of(store, account.id)] == [written.id]


# --- lifecycle ------------------------------------------------------------------------------------


@run_async
async def test_a_database_without_wal_is_refused() -> None:
    """A database that cannot use WAL (here, in memory) is refused at open()."""
    threads = threading.active_count()
    store = SqliteStore(":memory:")
    with pytest.raises(StoreError, match="WAL"):
        await store.open()
    assert threading.active_count() == threads
    with pytest.raises(StoreError, match="not open"):
        await store.count_accounts()


# --- migrations -----------------------------------------------------------------------------------


@run_async
async def test_a_newer_database_is_refused(db: Path) -> None:
    """A database from a newer bmserver is not touched: open() raises StoreError."""
    with raw(db) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(db).open()
    with raw(db) as connection:
        assert schema_version(connection) == 99
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_concurrent_migrations_apply_once(db: Path) -> None:
    """A second migrator that waited for the first finds the schema current and skips it."""
    applied: list[int] = []
    with raw(db) as first:
        first.execute("BEGIN IMMEDIATE")

        def second() -> None:
            with raw(db) as connection:
                applied.append(apply_migrations(connection))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.2)  # the second one is now waiting for the write lock
        for migration in MIGRATIONS:
            for statement in migration.statements:
                first.execute(statement)
        first.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        first.execute("COMMIT")
        thread.join()
    assert applied == [0]
    with raw(db) as connection:
        assert schema_version(connection) == len(MIGRATIONS)
