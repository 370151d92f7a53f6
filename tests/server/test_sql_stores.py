"""What SqliteStore and PostgresStore share beyond the contract: migrations, the batching writer.

Every test runs on both, each on a database of its own (``db``: a SQLite file, or a PostgreSQL
schema, skipped when no PostgreSQL is reachable). What only one of them has (WAL and its
readers, the writer thread; the migrations' advisory lock, several instances) is in
``test_sqlite_store.py`` and ``test_postgres_store.py``; the contract every store keeps, in
``test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from _databases import Database, database
from _first_release import Report, old_digest, old_tables
from _stores import BASE, NOW, backups_of, run, run_async
from hypothesis import given
from hypothesis import strategies as st

import bmcore
from bmcore import canonical_name
from bmserver.storage._contract import (
    BackupQuery,
    ConflictError,
    NotificationQuery,
    StoreError,
    WriteResult,
)
from bmserver.storage._migrations import Migration, rekey_devices_and_jobs
from bmserver.storage._sql_store import SqlStore


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The test's database: a SQLite file, or a PostgreSQL schema of its own."""
    return database(request, str(request.param), tmp_path)


async def stored_ids(db: Database) -> set[str]:
    """The ids of every backup of account acme, read by a new store (as after a restart)."""
    async with db.store() as store:
        account = await store.create_account("acme", now=NOW)
        return {stored.id for stored in await backups_of(store, account.id)}


def names(db: Database) -> set[str]:
    """The names of the database's tables and indexes."""
    return {name for name, _ in db.catalog()}


# --- migrations -----------------------------------------------------------------------------------

_TABLES = {"accounts", "api_keys", "devices", "jobs", "backups", "notifications"}
_READ_INDEXES = {"backups_newest", "notifications_newest", "jobs_newest", "devices_newest"}


@run_async
async def test_a_new_database_gets_every_migration(db: Database) -> None:
    """An empty database is brought to the latest version, with every table and index."""
    async with db.store() as store:
        assert store.migrations_applied == len(db.migrations) == 5
    assert db.versions() == [1, 2, 3, 4, 5]
    assert names(db) >= _TABLES | db.bookkeeping
    assert names(db) >= _READ_INDEXES


@run_async
async def test_reopening_migrates_nothing(db: Database) -> None:
    """Opening a current database applies nothing and changes nothing."""
    async with db.store():
        pass
    before = db.catalog()
    async with db.store() as store:
        assert store.migrations_applied == 0
    assert db.catalog() == before
    assert db.versions() == [1, 2, 3, 4, 5]


@run_async
async def test_an_old_database_is_upgraded(db: Database) -> None:
    """A database at version 1, with data, is upgraded to the latest at open() and keeps it."""
    async with db.migrator() as migrator:
        assert await migrator.apply(db.migrations[:1]) == 1
    epoch = db.dialect.instant_of_us(0)
    db.write(
        "INSERT INTO accounts (id, name, {created}, created_offset) VALUES (?, ?, ?, ?)",
        [("acc_0000000000000001", "acme", epoch, 60)],
    )
    assert "backups_newest" not in names(db)
    async with db.store() as store:
        assert store.migrations_applied == len(db.migrations) - 1
        account = await store.create_account("acme", now=NOW)
        assert account.id == "acc_0000000000000001"
        assert account.created_at == datetime(1970, 1, 1, tzinfo=UTC)
        assert account.created_at.utcoffset() == timedelta(hours=1)
        await store.add_backup(account.id, run(1), now=NOW)
    assert db.versions() == [1, 2, 3, 4, 5]
    assert "backups_newest" in names(db)


@run_async
async def test_a_failed_migration_is_rolled_back_alone(db: Database) -> None:
    """Each migration is its own transaction: a failure undoes only that one, version included."""
    broken = Migration(
        version=2, description="broken", statements=("CREATE TABLE extra (x integer)", "NOT SQL")
    )
    async with db.migrator() as migrator:
        with pytest.raises(db.syntax_error):
            await migrator.apply((db.migrations[0], broken))
        assert db.versions() == [1]
        assert migrator.idle()
        assert "accounts" in names(db)
        assert "extra" not in names(db)
        assert await migrator.apply(db.migrations) == len(db.migrations) - 1
        assert await migrator.apply(db.migrations) == 0


@run_async
async def test_migration_versions_are_consecutive(db: Database) -> None:
    """A list whose versions skip or repeat is refused before anything runs."""
    skipping = (Migration(version=2, description="two", statements=()),)
    async with db.migrator() as migrator:
        with pytest.raises(ValueError, match="version 2, not 1"):
            await migrator.apply(skipping)
    assert db.catalog() == []
    assert [migration.version for migration in db.migrations] == list(
        range(1, len(db.migrations) + 1)
    )


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


async def _at_version_2(db: Database, reports: Sequence[Report]) -> None:
    """A database as the first release left it: two migrations, rows keyed by the old rule.

    Each report is stored as a backup, an hour after the one before (``run <index>``), and as
    a notification at the same time (``note <index>``) that names the job for an even index.
    """
    async with db.migrator() as migrator:
        assert await migrator.apply(db.migrations[:2]) == 2
    device_rows, job_rows = old_tables(reports)
    job_at = {(row[1], row[3]): (row[2], row[0]) for row in job_rows}
    base = db.dialect.instant(BASE, bmcore.split_instant(BASE)[0])
    accounts = sorted({report[0] for report in reports})
    db.write(
        "INSERT INTO accounts (id, name, {created}, created_offset) VALUES (?, ?, ?, 0)",
        [(account, account, base) for account in accounts],
    )
    db.write(
        "INSERT INTO devices (id, account_id, digest, sender, device_name, {created},"
        " created_offset, {last_seen}, last_seen_offset) VALUES (?, ?, ?, ?, ?, ?, 0, ?, 0)",
        [(*row, base, base) for row in device_rows],
    )
    db.write(
        "INSERT INTO jobs (id, account_id, device_id, digest, sender, device_name, job_name,"
        " {created}, created_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
        [(*row, base) for row in job_rows],
    )
    backups: list[tuple[object, ...]] = []
    notes: list[tuple[object, ...]] = []
    for index, (account, sender, device, job) in enumerate(reports):
        entry = attrs.evolve(run(index, job=job, device=device), sender=sender)
        device_id, job_id = job_at[account, old_digest("job", sender, device, job)]
        instant = db.dialect.moment(entry.timestamp)
        backups.append(
            (
                *(f"bk_{index:016x}", account, device_id, job_id, *instant),
                *(sender, device, job, entry.status, entry.outcome.value, entry.message),
                hashlib.sha256(bmcore.encode_backup(entry)).digest(),
                base,
            )
        )
        note = _note(index, entry)
        job_of_note = None if note.job_name is None else job_id
        notes.append(
            (
                *(f"nt_{index:016x}", account, device_id, job_of_note, *instant),
                *(sender, device, note.job_name, note.severity.value, note.type, note.message),
                hashlib.sha256(bmcore.encode_notification(note)).digest(),
                base,
            )
        )
    db.write(
        "INSERT INTO backups (id, account_id, device_id, job_id, {ts}, ts_offset, sender,"
        " device_name, job_name, status, outcome, message, content_hash, {received},"
        " received_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        backups,
    )
    db.write(
        "INSERT INTO notifications (id, account_id, device_id, job_id, {ts}, ts_offset, sender,"
        " device_name, job_name, severity, type, message, content_hash, {received},"
        " received_offset) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        notes,
    )


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


async def _messages(store: SqlStore, query: BackupQuery) -> list[str]:
    page = await store.list_backups("acme", query, limit=100, cursor=None)
    return [stored.entry.message for stored in page.items]


@run_async
async def test_an_upgrade_from_version_2_rekeys_and_fills_the_name_filters(db: Database) -> None:
    """After the upgrade, old rows are found by any spelling, and reports match re-keyed rows.

    srv<U+200B>01 and srv01 were two devices: both stay, with every entry; new reports of
    either spelling go to srv01, and a filter of either spelling lists the entries of both.
    """
    await _at_version_2(
        db,
        [
            ("acme", "s", "srv\u200b01", "Nightly"),  # run 0: the device that is retired
            ("acme", "s", "srv01", "nightly"),  # run 1
            ("acme", "s", "FiltDev", "Weekly"),  # run 2
            ("acme", "s", "FILTDEV", "WEEKLY"),  # run 3
            ("acme", "s", "srv\u2060 02", "Weekly"),  # run 4: re-keyed, no collision
        ],
    )
    async with db.store() as store:
        assert store.migrations_applied == 3
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
            "acme", attrs.evolve(run(10, job="weekly", device="SRV 02"), sender="s"), now=NOW
        )
        assert (moved.device_created, moved.job_created) == (False, False)
        assert moved.job_id == jobs.items[0].id
        # Both spellings of srv01 go to the device that held srv01's digest.
        invisible = await store.add_backup(
            "acme", attrs.evolve(run(11, device="srv\u200b01"), sender="s"), now=NOW
        )
        assert invisible.device_id == "dev_0000000000000001"
        assert invisible.job_id == "job_0000000000000001"
        assert await _messages(store, BackupQuery(device_name="SRV01")) == [
            "run 11",
            "run 1",
            "run 0",
        ]
        visible = await store.add_backup(
            "acme", attrs.evolve(run(12, device="srv01"), sender="s"), now=NOW
        )
        assert visible.device_id == invisible.device_id == "dev_0000000000000001"
        assert visible.job_id == invisible.job_id == "job_0000000000000001"
        assert await _messages(store, BackupQuery(device_name="srv01")) == [
            "run 12",
            "run 11",
            "run 1",
            "run 0",
        ]
    assert db.versions() == [1, 2, 3, 4, 5]
    rows = db.rows(
        "SELECT sender, device_name, job_name, sender_key, device_name_key, job_name_key"
        " FROM jobs UNION ALL SELECT sender, device_name, job_name, sender_key,"
        " device_name_key, job_name_key FROM backups UNION ALL SELECT sender, device_name,"
        " job_name, sender_key, device_name_key, job_name_key FROM notifications"
    )
    assert len(rows) == 4 + 8 + 5  # every job, backup and notification, old and new
    for sender, device, job, *keys in rows:
        job_key = None if job is None else canonical_name(job)
        assert keys == [canonical_name(sender), canonical_name(device), job_key]


# --- the writer: durability and batching ----------------------------------------------------------


@run_async
async def test_a_burst_is_committed_in_batches(db: Database) -> None:
    """A burst of gathered writes: all acknowledged, in fewer commits, all there after a restart.

    500 on SQLite, 300 on PostgreSQL, where each write is a few round trips more.
    """
    count = 500 if db.kind == "sqlite" else 300
    async with db.store() as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        results = await asyncio.gather(
            *(store.add_backup(account.id, run(index), now=NOW) for index in range(count))
        )
        commits = store.commit_count - before
    assert not any(result.duplicate for result in results)
    assert 1 <= commits < count
    assert await stored_ids(db) == {result.id for result in results}


@run_async
async def test_writes_queued_together_commit_once(db: Database) -> None:
    """What queues while the writer is held is committed as one transaction."""
    async with db.store() as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        with store.hold_writes():
            tasks = [
                asyncio.create_task(store.add_backup(account.id, run(index), now=NOW))
                for index in range(50)
            ]
            await asyncio.sleep(0)  # every task runs up to its queued write
        results = await asyncio.gather(*tasks)
        assert store.commit_count == before + 1
        assert len(await backups_of(store, account.id)) == len(set(results)) == 50


@run_async
async def test_a_batch_holds_at_most_max_batch_writes(db: Database) -> None:
    """A longer queue is committed in several batches of at most MAX_BATCH."""
    async with db.store() as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        with store.hold_writes():
            tasks = [
                asyncio.create_task(store.add_backup(account.id, run(index), now=NOW))
                for index in range(db.max_batch + 10)
            ]
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert store.commit_count == before + 2


@run_async
async def test_a_conflict_in_a_batch_spares_the_others(db: Database) -> None:
    """A failing write is undone alone; the rest of its batch commits and sees earlier writes."""
    async with db.store() as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        with store.hold_writes():
            writes = [
                store.add_backup(account.id, run(1), now=NOW),
                store.add_backup(account.id, run(1, status="Error"), now=NOW),
                store.add_backup(account.id, run(2), now=NOW),
                store.add_backup(account.id, run(1), now=NOW),
                store.add_backup("acc_nope", run(3), now=NOW),
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
        stored = await backups_of(store, account.id)
        assert [item.id for item in stored] == [second.id, first.id]
    assert await stored_ids(db) == {first.id, second.id}


@run_async
async def test_close_drains_queued_writes(db: Database) -> None:
    """close() commits every write accepted before it, and refuses those after it."""
    store = db.store()
    await store.open()
    account = await store.create_account("acme", now=NOW)
    with store.hold_writes():
        tasks = [
            asyncio.create_task(store.add_backup(account.id, run(index), now=NOW))
            for index in range(100)
        ]
        await asyncio.sleep(0)
        closing = asyncio.create_task(store.close())
        await asyncio.sleep(0)  # close() has stopped accepting and queued its stop marker
        with pytest.raises(StoreError, match="not open"):
            await store.add_backup(account.id, run(1000), now=NOW)
        with pytest.raises(StoreError, match="already closing"):
            await store.open()
    await closing
    results = await asyncio.gather(*tasks)
    assert await stored_ids(db) == {result.id for result in results}


@run_async
async def test_a_cancelled_write_is_still_committed(db: Database) -> None:
    """Cancelling a caller does not undo its queued write, nor disturb the writer."""
    async with db.store() as store:
        account = await store.create_account("acme", now=NOW)
        with store.hold_writes():
            task = asyncio.create_task(store.add_backup(account.id, run(1), now=NOW))
            await asyncio.sleep(0)
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        later = await store.add_backup(account.id, run(2), now=NOW)
        stored = await backups_of(store, account.id)
        assert [item.entry.message for item in stored] == ["run 2", "run 1"]
        assert stored[0].id == later.id


# --- lifecycle ------------------------------------------------------------------------------------


@run_async
async def test_closed_store_refuses_work_and_can_reopen(db: Database) -> None:
    """Before open and after close, reads and writes raise StoreError; open() again works."""
    store = db.store()
    with pytest.raises(StoreError, match="not open"):
        await store.count_accounts()
    with pytest.raises(StoreError, match="not open"):
        await store.find_api_key("sha256:aa")  # SQLite reads it on the caller's thread
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
        await store.find_api_key("sha256:aa")
    with pytest.raises(StoreError, match="not open"):
        await store.add_backup(account.id, run(1), now=NOW)
    await store.open()
    assert store.migrations_applied == 0
    assert await store.count_accounts() == 1
    await store.close()


@run_async
async def test_reads_in_flight_at_close_complete(db: Database) -> None:
    """Reads already running when the store closes still complete; close() waits for them."""
    async with db.store(few_connections=True) as store:
        account = await store.create_account("acme", now=NOW)
        await store.add_backup(account.id, run(1), now=NOW)
        reads = [asyncio.create_task(backups_of(store, account.id)) for _ in range(5)]
        await asyncio.sleep(0)
    assert [len(items) for items in await asyncio.gather(*reads)] == [1] * 5
