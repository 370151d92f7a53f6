"""What only SqliteStore has: durability, the batching writer, WAL, migrations, lifecycle.

The behaviour both stores share is in test_store_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Generator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec

import attrs
import pytest
from _first_release import Report, old_digest, old_tables
from hypothesis import given
from hypothesis import strategies as st

import bmcore
from bmcore import canonical_name
from bmserver._memory import split_datetime
from bmserver._migrations import (
    MIGRATIONS,
    Migration,
    apply_migrations,
    rekey_devices_and_jobs,
    schema_version,
)
from bmserver._sqlite import MAX_BATCH, SqliteStore
from bmserver._store import (
    BackupQuery,
    ConflictError,
    NotificationQuery,
    StoredBackup,
    StoreError,
    WriteResult,
)

P = ParamSpec("P")

NOW = datetime(2024, 6, 4, 12, 5, tzinfo=UTC)
BASE = datetime(2024, 1, 1, tzinfo=UTC)


def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test function in a fresh event loop (no pytest async plugin needed)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Where the test's database file goes."""
    return tmp_path / "bm.sqlite3"


@contextlib.contextmanager
def raw(path: Path) -> Generator[sqlite3.Connection]:
    """A plain connection to the file, in autocommit mode, always closed."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        yield connection


def backup(index: int, *, job: str = "Nightly", status: str = "Success") -> bmcore.BackupEntry:
    """The index-th backup of a job: one hour after the previous one."""
    return bmcore.BackupEntry(
        device_name="srv01",
        job_name=job,
        timestamp=BASE + timedelta(hours=index),
        status=status,
        message=f"run {index}",
        sender="script-srv01",
    )


async def all_backups(store: SqliteStore, account_id: str) -> list[StoredBackup]:
    """Every backup of the account, following the cursors."""
    items: list[StoredBackup] = []
    cursor: str | None = None
    while True:
        page = await store.list_backups(account_id, BackupQuery(), limit=1000, cursor=cursor)
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


async def stored_ids(path: Path) -> set[str]:
    """The ids of every backup in the file, read by a new store (as after a restart)."""
    async with SqliteStore(path) as store:
        account = await store.create_account("acme", now=NOW)
        return {stored.id for stored in await all_backups(store, account.id)}


# --- the writer: durability and batching ----------------------------------------------------------


@run_async
async def test_a_burst_is_committed_in_batches(db: Path) -> None:
    """500 gathered writes: all acknowledged, in fewer commits, all there after a restart."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        results = await asyncio.gather(
            *(store.add_backup(account.id, backup(index), now=NOW) for index in range(500))
        )
        commits = store.commit_count - before
    assert not any(result.duplicate for result in results)
    assert 1 <= commits < 500
    assert await stored_ids(db) == {result.id for result in results}


@run_async
async def test_writes_queued_together_commit_once(db: Path) -> None:
    """What queues while the writer is held is committed as one transaction."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        with store.hold_writes():
            tasks = [
                asyncio.create_task(store.add_backup(account.id, backup(index), now=NOW))
                for index in range(50)
            ]
            await asyncio.sleep(0)  # every task runs up to its queued write
        results = await asyncio.gather(*tasks)
        assert store.commit_count == before + 1
        assert len(await all_backups(store, account.id)) == len(set(results)) == 50


@run_async
async def test_a_batch_holds_at_most_max_batch_writes(db: Path) -> None:
    """A longer queue is committed in several batches of at most MAX_BATCH."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        with store.hold_writes():
            tasks = [
                asyncio.create_task(store.add_backup(account.id, backup(index), now=NOW))
                for index in range(MAX_BATCH + 10)
            ]
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert store.commit_count == before + 2


@run_async
async def test_a_conflict_in_a_batch_spares_the_others(db: Path) -> None:
    """A failing write is undone alone; the rest of its batch commits and sees earlier writes."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        with store.hold_writes():
            writes = [
                store.add_backup(account.id, backup(1), now=NOW),
                store.add_backup(account.id, backup(1, status="Error"), now=NOW),
                store.add_backup(account.id, backup(2), now=NOW),
                store.add_backup(account.id, backup(1), now=NOW),
                store.add_backup("acc_nope", backup(3), now=NOW),
            ]
            tasks = [asyncio.create_task(write) for write in writes]
            await asyncio.sleep(0)
        first, conflict, second, repeat, unknown = await asyncio.gather(
            *tasks, return_exceptions=True
        )
        assert store.commit_count == before + 1
        assert isinstance(first, WriteResult)
        assert isinstance(second, WriteResult)
        assert isinstance(conflict, ConflictError)
        assert conflict.existing_id == first.id
        assert isinstance(repeat, WriteResult)
        assert (repeat.duplicate, repeat.id) == (True, first.id)
        assert isinstance(unknown, StoreError)
        stored = await all_backups(store, account.id)
        assert [item.id for item in stored] == [second.id, first.id]
    assert await stored_ids(db) == {first.id, second.id}


@run_async
async def test_close_drains_queued_writes(db: Path) -> None:
    """close() commits every write accepted before it, and refuses those after it."""
    store = SqliteStore(db)
    await store.open()
    account = await store.create_account("acme", now=NOW)
    with store.hold_writes():
        tasks = [
            asyncio.create_task(store.add_backup(account.id, backup(index), now=NOW))
            for index in range(100)
        ]
        await asyncio.sleep(0)
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0)  # close() has stopped accepting and queued its stop marker
        with pytest.raises(StoreError, match="not open"):
            await store.add_backup(account.id, backup(1000), now=NOW)
        with pytest.raises(StoreError, match="already closing"):
            await store.open()
    await closing
    results = await asyncio.gather(*tasks)
    assert await stored_ids(db) == {result.id for result in results}


@run_async
async def test_writes_from_several_threads(db: Path) -> None:
    """Event loops in several threads may share one store: each write resolves on its loop."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        results: list[list[WriteResult]] = [[], [], []]

        def writer(job: int) -> None:
            async def burst() -> None:
                writes = [
                    store.add_backup(account.id, backup(index, job=f"job {job}"), now=NOW)
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
        assert len(await all_backups(store, account.id)) == 300


@run_async
async def test_a_cancelled_write_is_still_committed(db: Path) -> None:
    """Cancelling a caller does not undo its queued write, nor disturb the writer."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        with store.hold_writes():
            task = asyncio.create_task(store.add_backup(account.id, backup(1), now=NOW))
            await asyncio.sleep(0)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        later = await store.add_backup(account.id, backup(2), now=NOW)
        stored = await all_backups(store, account.id)
        assert [item.entry.message for item in stored] == ["run 2", "run 1"]
        assert stored[0].id == later.id


@run_async
async def test_a_locked_database_fails_the_batch_not_the_writer(db: Path) -> None:
    """When another process holds the write lock too long, the batch fails; the next works."""
    async with SqliteStore(db, busy_timeout_s=0.05) as store:
        account = await store.create_account("acme", now=NOW)
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="could not be committed"):
                await store.add_backup(account.id, backup(1), now=NOW)
            other.execute("ROLLBACK")
        written = await store.add_backup(account.id, backup(1), now=NOW)
        assert not written.duplicate
        assert [item.id for item in await all_backups(store, account.id)] == [written.id]


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
            written = await store.add_backup(account.id, backup(1), now=NOW)
            assert reader.execute("SELECT count(*) FROM backups").fetchone() == (0,)
            reader.execute("COMMIT")
            assert reader.execute("SELECT count(*) FROM backups").fetchone() == (1,)
        assert [item.id for item in await all_backups(store, account.id)] == [written.id]


def _busy_on(thread: threading.Thread) -> Callable[[sqlite3.Connection], tuple[int]]:
    """A read that finds the file locked when run on ``thread``, and reads 1 elsewhere."""

    def run(connection: sqlite3.Connection) -> tuple[int]:
        if threading.current_thread() is thread:
            busy = sqlite3.OperationalError("database is locked")
            busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
            raise busy
        (one,) = connection.execute("SELECT 1").fetchone()
        return (int(one),)

    return run


@run_async
async def test_a_quick_read_that_would_wait_moves_to_a_worker_thread(db: Path) -> None:
    """The key lookup runs on the loop's thread; a locked file sends it to a worker thread."""
    async with SqliteStore(db) as store:
        # No public call can make a WAL reader find the file locked: the read is called directly.
        quick_read = store._read_quick  # pyright: ignore[reportPrivateUsage]
        assert await quick_read(_busy_on(threading.current_thread())) == (1,)
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await quick_read(lambda connection: connection.execute("SELECT * FROM no_table"))


@run_async
async def test_paths_that_need_quoting_in_a_uri(tmp_path: Path) -> None:
    """Readers open the file by URI: spaces, '#', '?' and '%' in the path must not matter."""
    directory = tmp_path / "my backups #1? 100%"
    directory.mkdir()
    async with SqliteStore(directory / "bm.sqlite3") as store:
        account = await store.create_account("acme", now=NOW)
        written = await store.add_backup(account.id, backup(1), now=NOW)
        assert [item.id for item in await all_backups(store, account.id)] == [written.id]


# --- lifecycle ------------------------------------------------------------------------------------


@run_async
async def test_closed_store_refuses_work_and_can_reopen(db: Path) -> None:
    """Before open and after close, reads and writes raise StoreError; open() again works."""
    store = SqliteStore(db)
    with pytest.raises(StoreError, match="not open"):
        await store.count_accounts()
    with pytest.raises(StoreError, match="not open"):
        await store.find_api_key("sha256:aa")  # read on the caller's thread, not a worker's
    with pytest.raises(StoreError, match="not open"):
        await store.create_account("acme", now=NOW)
    await store.open()
    with pytest.raises(StoreError, match="already open"):
        await store.open()
    account = await store.create_account("acme", now=NOW)
    await asyncio.gather(store.close(), store.close())  # concurrent closes
    await store.close()  # and closing a closed store are harmless
    with pytest.raises(StoreError, match="not open"):
        await store.count_accounts()
    with pytest.raises(StoreError, match="not open"):
        await store.add_backup(account.id, backup(1), now=NOW)
    await store.open()
    assert store.migrations_applied == 0
    assert await store.count_accounts() == 1
    await store.close()


@run_async
async def test_reads_in_flight_at_close_complete(db: Path) -> None:
    """Reads already running when the store closes still complete."""
    async with SqliteStore(db) as store:
        account = await store.create_account("acme", now=NOW)
        await store.add_backup(account.id, backup(1), now=NOW)
        reads = [asyncio.create_task(all_backups(store, account.id)) for _ in range(5)]
        await asyncio.sleep(0)
    assert [len(items) for items in await asyncio.gather(*reads)] == [1] * 5


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


def _schema(path: Path) -> list[tuple[str, str]]:
    with raw(path) as connection:
        rows = connection.execute(
            "SELECT name, coalesce(sql, '') FROM sqlite_master ORDER BY name"
        ).fetchall()
    return [(str(name), str(sql)) for name, sql in rows]


@run_async
async def test_a_new_database_gets_every_migration(db: Path) -> None:
    """A new file is brought to the latest version, with every table and index."""
    async with SqliteStore(db) as store:
        assert store.migrations_applied == len(MIGRATIONS)
    with raw(db) as connection:
        assert schema_version(connection) == len(MIGRATIONS) == 4
    names = {name for name, _ in _schema(db)}
    assert {"accounts", "api_keys", "devices", "jobs", "backups", "notifications"} <= names
    assert {"backups_newest", "notifications_newest", "jobs_newest", "devices_newest"} <= names


@run_async
async def test_reopening_migrates_nothing(db: Path) -> None:
    """Opening a current database applies nothing and changes nothing."""
    async with SqliteStore(db):
        pass
    before = _schema(db)
    async with SqliteStore(db) as store:
        assert store.migrations_applied == 0
    assert _schema(db) == before


@run_async
async def test_an_old_database_is_upgraded(db: Path) -> None:
    """A database at version 1, with data, is upgraded to the latest at open() and keeps it."""
    with raw(db) as connection:
        assert apply_migrations(connection, MIGRATIONS[:1]) == 1
        connection.execute(
            "INSERT INTO accounts (id, name, created_us, created_offset)"
            " VALUES ('acc_0000000000000001', 'acme', 0, 60)"
        )
    assert "backups_newest" not in {name for name, _ in _schema(db)}
    async with SqliteStore(db) as store:
        assert store.migrations_applied == len(MIGRATIONS) - 1
        account = await store.create_account("acme", now=NOW)
        assert account.id == "acc_0000000000000001"
        assert account.created_at == datetime(1970, 1, 1, tzinfo=UTC)
        assert account.created_at.utcoffset() == timedelta(hours=1)
        await store.add_backup(account.id, backup(1), now=NOW)
    with raw(db) as connection:
        assert schema_version(connection) == len(MIGRATIONS)
    assert "backups_newest" in {name for name, _ in _schema(db)}


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


def test_a_failed_migration_is_rolled_back_alone(db: Path) -> None:
    """Each migration is its own transaction: a failure undoes only that one, version included."""
    broken = Migration(
        version=2, description="broken", statements=("CREATE TABLE extra (x)", "NOT SQL")
    )
    with raw(db) as connection:
        with pytest.raises(sqlite3.OperationalError):
            apply_migrations(connection, (MIGRATIONS[0], broken))
        assert schema_version(connection) == 1
        assert not connection.in_transaction
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        assert "accounts" in tables
        assert "extra" not in tables
        assert apply_migrations(connection, MIGRATIONS) == len(MIGRATIONS) - 1
        assert apply_migrations(connection, MIGRATIONS) == 0


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


def test_migration_versions_are_consecutive(db: Path) -> None:
    """A list whose versions skip or repeat is refused before anything runs."""
    skipping = (Migration(version=2, description="two", statements=()),)
    with raw(db) as connection:
        with pytest.raises(ValueError, match="version 2, not 1"):
            apply_migrations(connection, skipping)
        assert schema_version(connection) == 0
    assert [migration.version for migration in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


# --- migration 3: canonical names, and keys without invisible characters --------------------------


def _rekeyed(reports: Sequence[Report]) -> tuple[dict[str, tuple[object, ...]], ...]:
    """The plan's updates for these reports' rows, by row id."""
    device_updates, job_updates = rekey_devices_and_jobs(old_tables(reports))
    return (
        {str(update[-1]): tuple(update[:-1]) for update in device_updates},
        {str(update[-1]): tuple(update[:-1]) for update in job_updates},
    )


def _new_digest(*names: str) -> str:
    if len(names) == 2:  # sender and device name
        return bmcore.DeviceKey.of(*names).digest
    return bmcore.JobKey.of(*names).digest


def test_rekeying_keeps_current_digests_and_fills_canonical_names() -> None:
    """Rows without invisible characters keep their digests; every row gets canonical names."""
    devices, jobs = _rekeyed([("acc", "Script", "SRV01 ", "Nightly  Full")])
    assert devices == {
        "dev_0000000000000000": (old_digest("device", "Script", "SRV01"), "script", "srv01")
    }
    assert jobs == {
        "job_0000000000000000": (
            old_digest("job", "Script", "SRV01", "Nightly Full"),
            "script",
            "srv01",
            "nightly full",
        )
    }


def test_rekeying_gives_invisible_names_the_key_of_the_visible_name() -> None:
    """A device and job stored under srv<U+200B>01 take the digests reports of srv01 compute."""
    devices, jobs = _rekeyed([("acc", "s", "srv\u200b01", "Nightly\u00ad")])
    assert devices["dev_0000000000000000"] == (_new_digest("s", "srv01"), "s", "srv01")
    assert jobs["job_0000000000000000"][0] == _new_digest("s", "srv01", "Nightly")


def test_rekeying_leaves_the_row_that_holds_the_digest_and_retires_the_other() -> None:
    """srv01 and srv<U+200B>01 stored apart: srv01 keeps the key; the other keeps its old one.

    Whichever is older: the row that already holds the digest is what reports of that name
    match. The retired device's jobs keep their old digests too, so that no job of a live key
    belongs to a retired device.
    """
    reports = [
        ("acc", "s", "srv\u200b01", "Nightly"),  # the older device and job
        ("acc", "s", "srv01", "Nightly"),
        ("acc", "s", "srv\u200b01", "Weekly"),  # a job whose new digest nobody holds
    ]
    devices, jobs = _rekeyed(reports)
    assert devices["dev_0000000000000000"][0] == old_digest("device", "s", "srv\u200b01")
    assert devices["dev_0000000000000001"][0] == _new_digest("s", "srv01")
    assert jobs["job_0000000000000000"][0] == old_digest("job", "s", "srv\u200b01", "Nightly")
    assert jobs["job_0000000000000001"][0] == _new_digest("s", "srv01", "Nightly")
    assert jobs["job_0000000000000002"][0] == old_digest("job", "s", "srv\u200b01", "Weekly")
    # Canonical names are every row's own, retired or not: the name filters find them all.
    assert {update[1:] for update in devices.values()} == {("s", "srv01")}


def test_rekeying_gives_a_free_digest_to_the_oldest_row_that_needs_it() -> None:
    """Two invisible spellings and no visible one: the older row takes the digest."""
    devices, jobs = _rekeyed(
        [
            ("acc", "s", "srv\u200c03", "J"),
            ("acc", "s", "srv\u200d03", "J"),
            ("b", "s", "srv03", "J"),
        ]
    )
    assert devices["dev_0000000000000000"][0] == _new_digest("s", "srv03")
    assert devices["dev_0000000000000001"][0] == old_digest("device", "s", "srv\u200d03")
    assert jobs["job_0000000000000000"][0] == _new_digest("s", "srv03", "J")
    assert jobs["job_0000000000000001"][0] == old_digest("job", "s", "srv\u200d03", "J")
    # Another account's row is another key: it collides with nothing.
    assert devices["dev_0000000000000002"][0] == _new_digest("s", "srv03")


_REPORTS = st.lists(
    st.tuples(
        st.sampled_from(["acc", "other"]),
        st.sampled_from(["s", "S ", "s\u200b"]),
        st.sampled_from(["srv01", "SRV01", "srv\u200b01", "srv\u2060\u200b01", "srv02"]),
        st.sampled_from(["Nightly", "night\u00adly", "Weekly"]),
    ),
    max_size=20,
)


@given(_REPORTS)
def test_rekeying_upholds_the_store_s_invariants(reports: list[Report]) -> None:
    """The updates keep the store's invariants, whatever the rows.

    Run in order, they keep digests unique; every report's key has a live row afterwards; only
    digests that change move; a live job belongs to the live device of its device key.
    """
    device_rows, job_rows = old_tables(reports)
    device_updates, job_updates = rekey_devices_and_jobs((device_rows, job_rows))
    assert [update[-1] for update in device_updates] == [row[0] for row in device_rows]
    assert [update[-1] for update in job_updates] == [row[0] for row in job_rows]
    held = {(row[1], row[2]) for row in device_rows}
    digest_of = {row[0]: row[2] for row in device_rows}
    for row, (digest, sender_key, device_name_key, _) in zip(
        device_rows, device_updates, strict=True
    ):
        device_id, account, old, sender, device = row
        assert digest in {old, _new_digest(sender, device)}
        if digest != old:  # each update, at its turn, must find the digest free
            assert (account, digest) not in held
            held.remove((account, old))
            held.add((account, digest))
        digest_of[device_id] = digest
        assert (sender_key, device_name_key) == (canonical_name(sender), canonical_name(device))
    live = {(row[1], digest_of[row[0]]): row[0] for row in device_rows}
    for account, sender, device, _ in reports:
        assert (account, _new_digest(sender, device)) in live  # every report's key has a row
    held = {(row[1], row[3]) for row in job_rows}
    for row, (digest, *keys, _) in zip(job_rows, job_updates, strict=True):
        _, account, device_id, old, sender, device, job = row
        assert digest in {old, _new_digest(sender, device, job)}
        if digest != old:
            assert (account, digest) not in held
            held.remove((account, old))
            held.add((account, digest))
        if digest == _new_digest(sender, device, job):
            assert live[account, _new_digest(sender, device)] == device_id
        assert keys == [canonical_name(sender), canonical_name(device), canonical_name(job)]


def _database_at_version_2(path: Path, reports: Sequence[Report]) -> None:
    """A database as the first release left it: two migrations, rows keyed by the old rule.

    Each report is stored as a backup, an hour after the one before (``run <index>``), and as
    a notification at the same time (``note <index>``) that names the job for an even index.
    """
    device_rows, job_rows = old_tables(reports)
    job_at = {(row[1], row[3]): (row[2], row[0]) for row in job_rows}
    with raw(path) as connection:
        apply_migrations(connection, MIGRATIONS[:2])
        connection.execute("BEGIN")
        for account in sorted({report[0] for report in reports}):
            connection.execute(
                "INSERT INTO accounts (id, name, created_us, created_offset) VALUES (?, ?, 0, 0)",
                (account, account),
            )
        connection.executemany(
            "INSERT INTO devices (id, account_id, digest, sender, device_name, created_us,"
            " created_offset, last_seen_us, last_seen_offset)"
            " VALUES (?, ?, ?, ?, ?, 0, 0, 0, 0)",
            device_rows,
        )
        connection.executemany(
            "INSERT INTO jobs (id, account_id, device_id, digest, sender, device_name,"
            " job_name, created_us, created_offset) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)",
            job_rows,
        )
        for index, (account, sender, device, job) in enumerate(reports):
            entry = attrs.evolve(backup(index, job=job), sender=sender, device_name=device)
            device_id, job_id = job_at[account, old_digest("job", sender, device, job)]
            connection.execute(
                "INSERT INTO backups (id, account_id, device_id, job_id, ts_us, ts_offset,"
                " sender, device_name, job_name, status, outcome, message, content_hash,"
                " received_us, received_offset)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
                (
                    *(f"bk_{index:016x}", account, device_id, job_id),
                    *split_datetime(entry.timestamp),
                    *(sender, device, job, entry.status, entry.outcome.value, entry.message),
                    hashlib.sha256(bmcore.encode_backup(entry)).digest(),
                ),
            )
            note = _note(index, entry)
            connection.execute(
                "INSERT INTO notifications (id, account_id, device_id, job_id, ts_us, ts_offset,"
                " sender, device_name, job_name, severity, type, message, content_hash,"
                " received_us, received_offset)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0)",
                (
                    *(
                        f"nt_{index:016x}",
                        account,
                        device_id,
                        None if note.job_name is None else job_id,
                    ),
                    *split_datetime(note.timestamp),
                    *(sender, device, note.job_name, note.severity.value, note.type, note.message),
                    hashlib.sha256(bmcore.encode_notification(note)).digest(),
                ),
            )
        connection.execute("COMMIT")


def _note(index: int, entry: bmcore.BackupEntry) -> bmcore.Notification:
    """The notification of a report: at its backup's time, naming the job for an even index."""
    return bmcore.Notification(
        device_name=entry.device_name,
        timestamp=entry.timestamp,
        severity=bmcore.Severity.INFO,
        type="report",
        job_name=None if index % 2 else entry.job_name,
        message=f"note {index}",
        sender=entry.sender,
    )


async def _messages(store: SqliteStore, query: BackupQuery) -> list[str]:
    page = await store.list_backups("acme", query, limit=100, cursor=None)
    return [stored.entry.message for stored in page.items]


@run_async
async def test_an_upgrade_from_version_2_rekeys_and_fills_the_name_filters(db: Path) -> None:
    """After the upgrade, old rows are found by any spelling, and reports match re-keyed rows.

    srv<U+200B>01 and srv01 were two devices: both stay, with every entry; new reports of
    either spelling go to srv01, and a filter of either spelling lists the entries of both.
    """
    _database_at_version_2(
        db,
        [
            ("acme", "s", "srv\u200b01", "Nightly"),  # run 0: the device that is retired
            ("acme", "s", "srv01", "nightly"),  # run 1
            ("acme", "s", "FiltDev", "Weekly"),  # run 2
            ("acme", "s", "FILTDEV", "WEEKLY"),  # run 3
            ("acme", "s", "srv\u2060 02", "Weekly"),  # run 4: re-keyed, no collision
        ],
    )
    async with SqliteStore(db) as store:
        assert store.migrations_applied == 2
        assert await _messages(store, BackupQuery(device_name="filtdev")) == ["run 3", "run 2"]
        notes = await store.list_notifications(
            "acme",
            NotificationQuery(device_name="FiltDev", job_name="weekly"),
            limit=10,
            cursor=None,
        )
        assert [note.notification.message for note in notes.items] == ["note 2"]
        notes = await store.list_notifications(
            "acme", NotificationQuery(device_name="srv01"), limit=10, cursor=None
        )
        assert [note.notification.message for note in notes.items] == ["note 1", "note 0"]
        assert await _messages(store, BackupQuery(device_name="SRV01")) == ["run 1", "run 0"]
        assert await _messages(store, BackupQuery(device_name="srv\u200b01")) == ["run 1", "run 0"]
        devices = await store.list_devices("acme", limit=100, cursor=None)
        assert len(devices.items) == 4  # nothing merged, nothing lost
        jobs = await store.list_jobs("acme", device_name="SRV 02", limit=100, cursor=None)
        assert [job.device_name for job in jobs.items] == ["srv\u2060 02"]
        # A report now spelled without the invisible character lands on the re-keyed rows.
        moved = await store.add_backup(
            "acme",
            attrs.evolve(backup(10, job="weekly"), device_name="SRV 02", sender="s"),
            now=NOW,
        )
        assert (moved.device_created, moved.job_created) == (False, False)
        assert moved.job_id == jobs.items[0].id
        # Both spellings of srv01 go to the device that held srv01's digest.
        visible = await store.add_backup(
            "acme", attrs.evolve(backup(11), device_name="srv01", sender="s"), now=NOW
        )
        invisible = await store.add_backup(
            "acme", attrs.evolve(backup(12), device_name="srv\u200b01", sender="s"), now=NOW
        )
        assert visible.device_id == invisible.device_id == "dev_0000000000000001"
        assert visible.job_id == invisible.job_id == "job_0000000000000001"
        assert await _messages(store, BackupQuery(device_name="srv01")) == [
            "run 12",
            "run 11",
            "run 1",
            "run 0",
        ]
    with raw(db) as connection:
        assert schema_version(connection) == len(MIGRATIONS)
        rows = connection.execute(
            "SELECT sender, device_name, job_name, sender_key, device_name_key, job_name_key"
            " FROM jobs UNION ALL SELECT sender, device_name, job_name, sender_key,"
            " device_name_key, job_name_key FROM backups UNION ALL SELECT sender, device_name,"
            " job_name, sender_key, device_name_key, job_name_key FROM notifications"
        ).fetchall()
    assert len(rows) == 4 + 8 + 5  # every job, backup and notification, old and new
    for sender, device, job, *keys in rows:
        job_key = None if job is None else canonical_name(job)
        assert keys == [canonical_name(sender), canonical_name(device), job_key]
