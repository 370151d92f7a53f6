"""What only PostgresStore has: migrations under a lock, the batching writer, several instances.

The behaviour every store shares is in test_store_contract.py. Each test has a PostgreSQL
schema of its own (``postgres_schema``) and is skipped when no PostgreSQL is reachable. Two
stores on one schema stand for two bmserver processes: each has its own pool, its own writer
and its own connections, so the database sees them as two clients, exactly as it would two
processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ParamSpec
from urllib.parse import quote

import attrs
import psycopg
import pytest
from _first_release import Report, old_digest, old_tables
from _postgres_tables import connect, empty_schema
from _services import schema_named
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import PoolTimeout

import bmcore
from bmcore import canonical_name
from bmserver._memory import MemoryStore, split_datetime
from bmserver._migrations import Migration
from bmserver._postgres import MAX_BATCH, PostgresStore
from bmserver._postgres_migrations import LOCK_CLASS, MIGRATIONS, apply_migrations
from bmserver._store import (
    BackupQuery,
    ConflictError,
    DeviceRecord,
    JobRecord,
    NotificationQuery,
    Store,
    StoredBackup,
    StoredNotification,
    StoreError,
    WriteResult,
)

P = ParamSpec("P")

NOW = datetime(2024, 6, 4, 12, 5, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
BASE = datetime(2024, 1, 1, tzinfo=UTC)


def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test function in a fresh event loop (no pytest async plugin needed)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


@pytest.fixture
def url(postgres_url: str) -> str:
    """The PostgreSQL server's URL."""
    return postgres_url


@pytest.fixture
def schema(postgres_schema: str) -> str:
    """The test's own schema, empty."""
    return postgres_schema


def backup(
    index: int, *, job: str = "Nightly", device: str = "srv01", status: str = "Success"
) -> bmcore.BackupEntry:
    """The index-th backup of a job: one hour after the previous one."""
    return bmcore.BackupEntry(
        device_name=device,
        job_name=job,
        timestamp=BASE + timedelta(hours=index),
        status=status,
        message=f"run {index}",
        sender="script-srv01",
    )


async def all_backups(store: Store, account_id: str) -> list[StoredBackup]:
    """Every backup of the account, following the cursors."""
    items: list[StoredBackup] = []
    cursor: str | None = None
    while True:
        page = await store.list_backups(account_id, BackupQuery(), limit=1000, cursor=cursor)
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = page.next_cursor


async def stored_ids(url: str, schema: str) -> set[str]:
    """The ids of every backup of account acme, read by a new store (as after a restart)."""
    async with PostgresStore(url, schema=schema) as store:
        account = await store.create_account("acme", now=NOW)
        return {stored.id for stored in await all_backups(store, account.id)}


def versions(url: str, schema: str) -> list[int]:
    """The versions recorded in the schema, in order."""
    with connect(url, schema) as connection:
        rows = connection.execute("SELECT version FROM bm_schema_migrations ORDER BY version")
        return [int(version) for (version,) in rows]


def catalog(url: str, schema: str) -> list[tuple[str, str]]:
    """The schema's tables and indexes with their definitions: what a migration changes."""
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT tablename, '' FROM pg_tables WHERE schemaname = %s"
            " UNION ALL SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s"
            " ORDER BY 1",
            (schema, schema),
        )
        return [(str(name), str(definition)) for name, definition in rows]


# --- migrations -----------------------------------------------------------------------------------


@run_async
async def test_a_new_schema_gets_every_migration(url: str, schema: str) -> None:
    """An empty schema is brought to the latest version, with every table and index."""
    async with PostgresStore(url, schema=schema) as store:
        assert store.migrations_applied == len(MIGRATIONS) == 4
    assert versions(url, schema) == [1, 2, 3, 4]
    names = {name for name, _ in catalog(url, schema)}
    tables = {"accounts", "api_keys", "devices", "jobs", "backups", "notifications"}
    assert tables | {"bm_schema_migrations"} <= names
    assert {"backups_newest", "notifications_newest", "jobs_newest", "devices_newest"} <= names


@run_async
async def test_reopening_migrates_nothing(url: str, schema: str) -> None:
    """Opening a current schema applies nothing and changes nothing."""
    async with PostgresStore(url, schema=schema):
        pass
    before = catalog(url, schema)
    async with PostgresStore(url, schema=schema) as store:
        assert store.migrations_applied == 0
    assert catalog(url, schema) == before
    assert versions(url, schema) == [1, 2, 3, 4]


@run_async
async def test_stores_opening_at_once_migrate_once(url: str, schema: str) -> None:
    """Several instances starting together on an empty schema apply each migration once."""
    stores = [PostgresStore(url, schema=schema) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        assert sum(store.migrations_applied for store in stores) == len(MIGRATIONS)
        assert versions(url, schema) == [1, 2, 3, 4]
    finally:
        await asyncio.gather(*(store.close() for store in stores))


@run_async
async def test_a_migrator_that_waited_for_the_lock_skips(url: str, schema: str) -> None:
    """A store that opens while another process migrates waits for it, then applies nothing."""
    other = await psycopg.AsyncConnection.connect(url)  # not autocommit: one transaction
    async with other:
        await other.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        await other.execute(
            "SELECT pg_advisory_xact_lock(%s::integer, hashtext(%s))", (LOCK_CLASS, schema)
        )
        store = PostgresStore(url, schema=schema)
        opening = asyncio.create_task(store.open())
        await asyncio.sleep(0.3)  # long enough for the store to reach the lock and wait
        assert not opening.done()
        # The other process migrates, inside its locked transaction (savepoints), and commits.
        assert await apply_migrations(other) == len(MIGRATIONS)
        await other.commit()
        await opening
    try:
        assert store.migrations_applied == 0
        assert versions(url, schema) == [1, 2, 3, 4]
    finally:
        await store.close()


@run_async
async def test_an_old_schema_is_upgraded(url: str, schema: str) -> None:
    """A schema at version 1, with data, is upgraded to the latest at open() and keeps it."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        assert await apply_migrations(connection, MIGRATIONS[:1]) == 1
        await connection.execute(
            "INSERT INTO accounts (id, name, created_at, created_offset)"
            " VALUES ('acc_0000000000000001', 'acme', '1970-01-01T00:00:00Z', 60)"
        )
    assert "backups_newest" not in {name for name, _ in catalog(url, schema)}
    async with PostgresStore(url, schema=schema) as store:
        assert store.migrations_applied == len(MIGRATIONS) - 1
        account = await store.create_account("acme", now=NOW)
        assert account.id == "acc_0000000000000001"
        assert account.created_at == datetime(1970, 1, 1, tzinfo=UTC)
        assert account.created_at.utcoffset() == timedelta(hours=1)
        await store.add_backup(account.id, backup(1), now=NOW)
    assert versions(url, schema) == [1, 2, 3, 4]
    assert "backups_newest" in {name for name, _ in catalog(url, schema)}


async def _schema_at_version_2(url: str, schema: str, reports: Sequence[Report]) -> None:
    """A schema as the first release left it: two migrations, rows keyed by the old rule.

    Each report is stored as a backup, an hour after the one before (``run <index>``), and as
    a notification at the same time (``note <index>``) that names the job for an even index.
    """
    device_rows, job_rows = old_tables(reports)
    job_at = {(row[1], row[3]): (row[2], row[0]) for row in job_rows}
    await _first_two_migrations(url, schema)
    with connect(url, schema) as connection:
        for account in sorted({report[0] for report in reports}):
            connection.execute(
                "INSERT INTO accounts (id, name, created_at, created_offset)"
                " VALUES (%s, %s, %s, 0)",
                (account, account, BASE),
            )
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO devices (id, account_id, digest, sender, device_name, created_at,"
                " created_offset, last_seen_at, last_seen_offset)"
                " VALUES (%s, %s, %s, %s, %s, %s, 0, %s, 0)",
                [(*row, BASE, BASE) for row in device_rows],
            )
            cursor.executemany(
                "INSERT INTO jobs (id, account_id, device_id, digest, sender, device_name,"
                " job_name, created_at, created_offset) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0)",
                [(*row, BASE) for row in job_rows],
            )
        for index, (account, sender, device, job) in enumerate(reports):
            entry = attrs.evolve(backup(index, job=job, device=device), sender=sender)
            device_id, job_id = job_at[account, old_digest("job", sender, device, job)]
            connection.execute(
                "INSERT INTO backups (id, account_id, device_id, job_id, ts, ts_offset, sender,"
                " device_name, job_name, status, outcome, message, content_hash, received_at,"
                " received_offset)"
                " VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s, %s, %s, %s, 0)",
                (
                    *(f"bk_{index:016x}", account, device_id, job_id, entry.timestamp),
                    *(sender, device, job, entry.status, entry.outcome.value, entry.message),
                    hashlib.sha256(bmcore.encode_backup(entry)).digest(),
                    BASE,
                ),
            )
            note = bmcore.Notification(
                device_name=device,
                timestamp=entry.timestamp,
                severity=bmcore.Severity.INFO,
                type="report",
                job_name=None if index % 2 else job,
                message=f"note {index}",
                sender=sender,
            )
            connection.execute(
                "INSERT INTO notifications (id, account_id, device_id, job_id, ts, ts_offset,"
                " sender, device_name, job_name, severity, type, message, content_hash,"
                " received_at, received_offset)"
                " VALUES (%s, %s, %s, %s, %s, 0, %s, %s, %s, 'info', 'report', %s, %s, %s, 0)",
                (
                    *(
                        f"nt_{index:016x}",
                        account,
                        device_id,
                        None if note.job_name is None else job_id,
                    ),
                    *(note.timestamp, sender, device, note.job_name, note.message),
                    hashlib.sha256(bmcore.encode_notification(note)).digest(),
                    BASE,
                ),
            )


async def _first_two_migrations(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        assert await apply_migrations(connection, MIGRATIONS[:2]) == 2


async def _messages(store: PostgresStore, query: BackupQuery) -> list[str]:
    page = await store.list_backups("acme", query, limit=100, cursor=None)
    return [stored.entry.message for stored in page.items]


@run_async
async def test_an_upgrade_from_version_2_rekeys_and_fills_the_name_filters(
    url: str, schema: str
) -> None:
    """After the upgrade, old rows are found by any spelling, and reports match re-keyed rows.

    srv<U+200B>01 and srv01 were two devices: both stay, with every entry; new reports of
    either spelling go to srv01, and a filter of either spelling lists the entries of both.
    """
    await _schema_at_version_2(
        url,
        schema,
        [
            ("acme", "s", "srv\u200b01", "Nightly"),  # run 0: the device that is retired
            ("acme", "s", "srv01", "nightly"),  # run 1
            ("acme", "s", "FiltDev", "Weekly"),  # run 2
            ("acme", "s", "FILTDEV", "WEEKLY"),  # run 3
            ("acme", "s", "srv\u2060 02", "Weekly"),  # run 4: re-keyed, no collision
        ],
    )
    async with PostgresStore(url, schema=schema) as store:
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
        assert await _messages(store, BackupQuery(device_name="srv\u200b01")) == ["run 1", "run 0"]
        assert len((await store.list_devices("acme", limit=100, cursor=None)).items) == 4
        jobs = await store.list_jobs("acme", device_name="SRV 02", limit=100, cursor=None)
        assert [job.device_name for job in jobs.items] == ["srv\u2060 02"]
        moved = await store.add_backup(
            "acme", attrs.evolve(backup(10, job="weekly", device="SRV 02"), sender="s"), now=NOW
        )
        assert (moved.device_created, moved.job_created, moved.job_id) == (
            False,
            False,
            jobs.items[0].id,
        )
        invisible = await store.add_backup(
            "acme", attrs.evolve(backup(11, device="srv\u200b01"), sender="s"), now=NOW
        )
        assert invisible.device_id == "dev_0000000000000001"
        assert invisible.job_id == "job_0000000000000001"
        assert await _messages(store, BackupQuery(device_name="SRV01")) == [
            "run 11",
            "run 1",
            "run 0",
        ]
    assert versions(url, schema) == [1, 2, 3, 4]
    with connect(url, schema) as connection:
        rows = connection.execute(
            "SELECT sender, device_name, job_name, sender_key, device_name_key, job_name_key"
            " FROM jobs UNION ALL SELECT sender, device_name, job_name, sender_key,"
            " device_name_key, job_name_key FROM backups UNION ALL SELECT sender, device_name,"
            " job_name, sender_key, device_name_key, job_name_key FROM notifications"
        ).fetchall()
    assert len(rows) == 4 + 7 + 5  # every job, backup and notification, old and new
    for sender, device, job, *keys in rows:
        job_key = None if job is None else canonical_name(job)
        assert keys == [canonical_name(sender), canonical_name(device), job_key]


@run_async
async def test_an_insert_without_canonical_names_is_refused(url: str, schema: str) -> None:
    """The canonical name columns have no default: a row cannot silently miss them."""
    async with PostgresStore(url, schema=schema) as store:
        await store.create_account("acme", now=NOW)
    with connect(url, schema) as connection, pytest.raises(psycopg.errors.NotNullViolation):
        connection.execute(
            "INSERT INTO devices (id, account_id, digest, sender, device_name, created_at,"
            " created_offset, last_seen_at, last_seen_offset)"
            " SELECT 'dev_1', id, 'd', 's', 'n', now(), 0, now(), 0 FROM accounts"
        )


@run_async
async def test_a_newer_schema_is_refused(url: str, schema: str) -> None:
    """A schema from a newer bmserver is not touched: open() raises StoreError."""
    with connect(url, schema) as connection:
        connection.execute(
            "CREATE TABLE bm_schema_migrations (version integer PRIMARY KEY, description text)"
        )
        connection.execute("INSERT INTO bm_schema_migrations VALUES (99, 'the future')")
    store = PostgresStore(url, schema=schema)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    assert catalog(url, schema) == [("bm_schema_migrations", ""), *_version_index(schema)]
    with pytest.raises(StoreError, match="not open"):
        await store.count_accounts()


def _version_index(schema: str) -> list[tuple[str, str]]:
    definition = (
        f"CREATE UNIQUE INDEX bm_schema_migrations_pkey ON {schema}.bm_schema_migrations"
        " USING btree (version)"
    )
    return [("bm_schema_migrations_pkey", definition)]


@run_async
async def test_a_failed_migration_is_rolled_back_alone(url: str, schema: str) -> None:
    """Each migration is its own transaction: a failure undoes only that one, version included."""
    broken = Migration(
        version=2, description="broken", statements=("CREATE TABLE extra (x int)", "NOT SQL")
    )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        with pytest.raises(psycopg.errors.SyntaxError):
            await apply_migrations(connection, (MIGRATIONS[0], broken))
        assert versions(url, schema) == [1]
        names = {name for name, _ in catalog(url, schema)}
        assert "accounts" in names
        assert "extra" not in names
        assert await apply_migrations(connection, MIGRATIONS) == len(MIGRATIONS) - 1
        assert await apply_migrations(connection, MIGRATIONS) == 0


@run_async
async def test_migration_versions_are_consecutive(url: str, schema: str) -> None:
    """A list whose versions skip or repeat is refused before anything runs."""
    skipping = (Migration(version=2, description="two", statements=()),)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        with pytest.raises(ValueError, match="version 2, not 1"):
            await apply_migrations(connection, skipping)
    assert catalog(url, schema) == []


@run_async
async def test_a_missing_schema_is_refused(url: str) -> None:
    """A schema that does not exist is not created: open() says to create it."""
    store = PostgresStore(url, schema=f"bm_missing_{uuid.uuid4().hex}")
    with pytest.raises(StoreError, match="create the schema first"):
        await store.open()


@run_async
async def test_an_unreachable_server_fails_at_once() -> None:
    """open() reports libpq's reason right away, not after the pool's time-out."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.count_accounts()


@pytest.fixture
def odd_schema(url: str) -> Iterator[str]:
    """A schema whose name needs quoting: any unquoted use of it would be a syntax error."""
    with schema_named(url, f'bm "odd"; schema {uuid.uuid4().hex}') as name:
        yield name


@run_async
async def test_schemas_are_quoted_and_separate(url: str, schema: str, odd_schema: str) -> None:
    """Any schema name works, and stores on two schemas of one database share nothing."""
    async with (
        PostgresStore(url, schema=odd_schema) as odd,
        PostgresStore(url, schema=schema) as plain,
    ):
        account = await odd.create_account("acme", now=NOW)
        await odd.add_backup(account.id, backup(1), now=NOW)
        assert len(await all_backups(odd, account.id)) == 1
        assert await plain.count_accounts() == 0
    assert versions(url, odd_schema) == [1, 2, 3, 4]


@run_async
async def test_without_a_schema_the_url_decides(url: str, schema: str) -> None:
    """With no schema given, the tables go where the URL's own search path puts them."""
    options = quote(f"-c search_path={schema}")
    async with PostgresStore(f"{url}?options={options}") as store:
        assert store.schema is None
        await store.create_account("acme", now=NOW)
    assert versions(url, schema) == [1, 2, 3, 4]
    with connect(url, schema) as connection:
        assert connection.execute("SELECT name FROM accounts").fetchall() == [("acme",)]


# --- how the tables hold things -------------------------------------------------------------------


@run_async
async def test_times_are_instants_with_their_offsets(url: str, schema: str) -> None:
    """A timestamp is a timestamptz (the instant) plus the offset it was sent with, in minutes."""
    received = datetime(2024, 6, 4, 20, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7)))
    entry = attrs.evolve(backup(1), timestamp=bmcore.parse_timestamp("2024-06-04T14:00:00+05:45"))
    async with PostgresStore(url, schema=schema) as store:
        account = await store.create_account("acme", now=NOW)
        await store.add_backup(account.id, entry, now=received)
    with connect(url, schema) as connection:
        row = connection.execute(
            "SELECT pg_typeof(ts)::text, ts, ts_offset, received_at, received_offset FROM backups"
        ).fetchone()
    assert row == ("timestamp with time zone", entry.timestamp, 345, received, -420)


# --- the writer: durability and batching ----------------------------------------------------------


@run_async
async def test_a_burst_is_committed_in_batches(url: str, schema: str) -> None:
    """300 gathered writes: all acknowledged, in fewer commits, all there after a restart."""
    async with PostgresStore(url, schema=schema) as store:
        account = await store.create_account("acme", now=NOW)
        before = store.commit_count
        results = await asyncio.gather(
            *(store.add_backup(account.id, backup(index), now=NOW) for index in range(300))
        )
        commits = store.commit_count - before
    assert not any(result.duplicate for result in results)
    assert 1 <= commits < 300
    assert await stored_ids(url, schema) == {result.id for result in results}


@run_async
async def test_writes_queued_together_commit_once(url: str, schema: str) -> None:
    """What queues while the writer is held is committed as one transaction."""
    async with PostgresStore(url, schema=schema) as store:
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
async def test_a_batch_holds_at_most_max_batch_writes(url: str, schema: str) -> None:
    """A longer queue is committed in several batches of at most MAX_BATCH."""
    async with PostgresStore(url, schema=schema) as store:
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
async def test_a_conflict_in_a_batch_spares_the_others(url: str, schema: str) -> None:
    """A failing write is undone alone; the rest of its batch commits and sees earlier writes."""
    async with PostgresStore(url, schema=schema) as store:
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
    assert await stored_ids(url, schema) == {first.id, second.id}


@run_async
async def test_close_drains_queued_writes(url: str, schema: str) -> None:
    """close() commits every write accepted before it, and refuses those after it."""
    store = PostgresStore(url, schema=schema)
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
    assert await stored_ids(url, schema) == {result.id for result in results}


@run_async
async def test_a_cancelled_write_is_still_committed(url: str, schema: str) -> None:
    """Cancelling a caller does not undo its queued write, nor disturb the writer."""
    async with PostgresStore(url, schema=schema) as store:
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
async def test_a_lost_connection_fails_the_batch_not_the_writer(url: str, schema: str) -> None:
    """When the server drops the writer's connection, that batch fails; the next one works."""
    name = f"bm_test_{uuid.uuid4().hex[:16]}"  # finds this store's connections, and no others
    async with PostgresStore(f"{url}?application_name={name}", schema=schema, max_size=1) as store:
        account = await store.create_account("acme", now=NOW)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            )
        with pytest.raises(StoreError, match="could not be committed"):
            await store.add_backup(account.id, backup(1), now=NOW)
        written = await store.add_backup(account.id, backup(1), now=NOW)
        assert not written.duplicate
        assert [item.id for item in await all_backups(store, account.id)] == [written.id]


@run_async
async def test_a_stopped_writer_fails_writes_instead_of_hanging(url: str, schema: str) -> None:
    """Should the writer task end unexpectedly, waiting and later writes fail at once."""
    async with PostgresStore(url, schema=schema) as store:
        account = await store.create_account("acme", now=NOW)
        # No public call can stop the writer: its task is cancelled directly.
        running = store._running  # pyright: ignore[reportPrivateUsage]
        assert running is not None
        assert running.writer is not None
        with store.hold_writes():
            waiting = asyncio.create_task(store.add_backup(account.id, backup(1), now=NOW))
            queued = asyncio.create_task(store.add_backup(account.id, backup(2), now=NOW))
            await asyncio.sleep(0)  # both queued; the writer holds the first, waiting to start
            running.writer.cancel()
            await asyncio.sleep(0)
        for task in (waiting, queued):
            with pytest.raises(StoreError, match="writer has stopped"):
                await task
        with pytest.raises(StoreError, match="writer has stopped"):
            await store.add_backup(account.id, backup(3), now=NOW)
        assert await all_backups(store, account.id) == []


# --- failures of the database are StoreError ----------------------------------------------------


async def _until_a_lock_is_awaited(url: str, schema: str, table: str) -> None:
    """Wait until some connection waits for a lock on the table: a query is blocked on it."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        for _ in range(500):
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_locks JOIN pg_class ON pg_class.oid = pg_locks.relation"
                " JOIN pg_namespace ON pg_namespace.oid = pg_class.relnamespace"
                " WHERE NOT granted AND relname = %s AND nspname = %s",
                (table, schema),
            )
            if _required_count(await cursor.fetchone()):
                return
            await asyncio.sleep(0.01)  # polling for a state, not a timing assumption
    pytest.fail(f"no query came to wait for the lock on {table}")


def _required_count(row: tuple[Any, ...] | None) -> int:
    assert row is not None
    return int(row[0])


@run_async
async def test_a_pool_time_out_is_a_store_error(url: str, schema: str) -> None:
    """No free connection in pool_timeout_s: reads and writes raise StoreError, not PoolTimeout."""
    async with PostgresStore(url, schema=schema, max_size=1, pool_timeout_s=0.2) as store:
        account = await store.create_account("acme", now=NOW)
        with connect(url, schema, autocommit=False) as locker:
            locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
            # A read that holds the pool's only connection while it waits for the lock.
            holding = asyncio.create_task(store.count_accounts())
            await _until_a_lock_is_awaited(url, schema, "accounts")
            with pytest.raises(StoreError, match="the read failed") as read:
                await store.list_devices(account.id, limit=10, cursor=None)
            assert isinstance(read.value.__cause__, PoolTimeout)
            with pytest.raises(StoreError, match="the read failed"):
                await store.find_api_key("sha256:aa")
            with pytest.raises(StoreError, match="could not be committed") as write:
                await store.add_backup(account.id, backup(1), now=NOW)
            assert isinstance(write.value.__cause__, PoolTimeout)
            locker.rollback()
        assert await holding == 1
        written = await store.add_backup(account.id, backup(1), now=NOW)
        assert [item.id for item in await all_backups(store, account.id)] == [written.id]


@run_async
async def test_a_statement_time_out_is_a_store_error(url: str, schema: str) -> None:
    """A read's or a single write's own database error (a statement time-out) is a StoreError."""
    options = quote("-c statement_timeout=200")
    async with PostgresStore(f"{url}?options={options}", schema=schema) as store:
        account = await store.create_account("acme", now=NOW)
        with connect(url, schema, autocommit=False) as locker:
            locker.execute("LOCK TABLE devices, jobs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreError, match="the read failed") as read:
                await store.list_devices(account.id, limit=10, cursor=None)
            assert isinstance(read.value.__cause__, psycopg.errors.QueryCanceled)
            with pytest.raises(StoreError, match="the write failed") as write:
                await store.add_backup(account.id, backup(1), now=NOW)
            assert isinstance(write.value.__cause__, psycopg.errors.QueryCanceled)
            locker.rollback()
        written = await store.add_backup(account.id, backup(1), now=NOW)
        assert [item.id for item in await all_backups(store, account.id)] == [written.id]


def test_the_pool_time_out_is_checked() -> None:
    """A pool time-out that is not positive is refused when the store is made."""
    with pytest.raises(ValueError, match="pool_timeout_s"):
        PostgresStore("postgresql://", pool_timeout_s=0)


# --- lifecycle ------------------------------------------------------------------------------------


@run_async
async def test_closed_store_refuses_work_and_can_reopen(url: str, schema: str) -> None:
    """Before open and after close, reads and writes raise StoreError; open() again works."""
    store = PostgresStore(url, schema=schema)
    with pytest.raises(StoreError, match="not open"):
        await store.count_accounts()
    with pytest.raises(StoreError, match="not open"):
        await store.create_account("acme", now=NOW)
    with pytest.raises(StoreError, match="not open"), store.hold_writes():
        pass
    await store.open()
    with pytest.raises(StoreError, match="already open"):
        await store.open()
    account = await store.create_account("acme", now=NOW)
    await asyncio.gather(store.close(), store.close())  # concurrent closes
    await store.close()  # and closing a closed store are harmless
    with pytest.raises(StoreError, match="not open"):
        await store.find_api_key("sha256:aa")
    with pytest.raises(StoreError, match="not open"):
        await store.add_backup(account.id, backup(1), now=NOW)
    await store.open()
    assert store.migrations_applied == 0
    assert await store.count_accounts() == 1
    await store.close()


def test_a_store_belongs_to_the_loop_that_opened_it(url: str, schema: str) -> None:
    """Another loop gets a clear StoreError; after close(), any loop may open it again."""
    store = PostgresStore(url, schema=schema)
    with asyncio.Runner() as first:
        first.run(store.open())
        try:
            with pytest.raises(StoreError, match="another event loop"):
                asyncio.run(store.count_accounts())
        finally:
            first.run(store.close())

    async def reopen() -> int:
        async with store:
            return await store.count_accounts()

    assert asyncio.run(reopen()) == 0


@run_async
async def test_reads_in_flight_at_close_complete(url: str, schema: str) -> None:
    """Reads already running when the store closes still complete; close() waits for them."""
    async with PostgresStore(url, schema=schema, max_size=2) as store:
        account = await store.create_account("acme", now=NOW)
        await store.add_backup(account.id, backup(1), now=NOW)
        reads = [asyncio.create_task(all_backups(store, account.id)) for _ in range(5)]
        await asyncio.sleep(0)
    assert [len(items) for items in await asyncio.gather(*reads)] == [1] * 5


def test_pool_sizes_are_checked() -> None:
    """A pool that could hold no connection is refused when the store is made."""
    for min_size, max_size in ((2, 1), (-1, 3), (0, 0)):
        with pytest.raises(ValueError, match="min_size"):
            PostgresStore("postgresql://", min_size=min_size, max_size=max_size)


# --- several instances ----------------------------------------------------------------------------


def _device_digest(entry: bmcore.BackupEntry) -> str:
    return bmcore.DeviceKey.of(entry.sender, entry.device_name).digest


@run_async
async def test_batches_of_two_instances_do_not_deadlock(url: str, schema: str) -> None:
    """Two batches touching the same devices in opposite orders each commit once, no retry.

    Each batch holds its row locks until it commits; sorted by what they lock, both batches
    take the devices' rows in the same order, so one waits for the other instead of both
    waiting for each other (a deadlock, which PostgreSQL breaks only after a second).
    """
    async with (
        PostgresStore(url, schema=schema) as first,
        PostgresStore(url, schema=schema) as second,
    ):
        account = await first.create_account("acme", now=NOW)
        devices = sorted(
            ("srv-a", "srv-b"), key=lambda name: _device_digest(backup(0, device=name))
        )
        for name in devices:
            await first.add_backup(account.id, backup(0, device=name), now=NOW)
        commits = (first.commit_count, second.commit_count)
        plans = ((first, devices, 1), (second, devices[::-1], 2))
        with first.hold_writes(), second.hold_writes():
            tasks = [
                asyncio.create_task(
                    store.add_backup(
                        account.id, backup(hours, device=name), now=NOW + timedelta(hours=hours)
                    )
                )
                for store, names, hours in plans
                for name in names
            ]
            await asyncio.sleep(0)
        results = await asyncio.gather(*tasks)
        assert (first.commit_count, second.commit_count) == (commits[0] + 1, commits[1] + 1)
        assert not any(result.duplicate for result in results)
        listed = (await first.list_devices(account.id, limit=10, cursor=None)).items
        assert {device.last_seen_at for device in listed} == {NOW + timedelta(hours=2)}


def note(index: int) -> bmcore.Notification:
    """The index-th notification about job Nightly on the device of :func:`backup`."""
    return bmcore.Notification(
        device_name="srv01",
        timestamp=BASE + timedelta(hours=index),
        severity=bmcore.Severity.WARNING,
        type="disk_space_low",
        job_name="Nightly",
        message=f"note {index}",
        sender="script-srv01",
    )


async def _add(
    store: PostgresStore, account_id: str, index: int, kind: str, now: datetime
) -> WriteResult:
    if kind == "backup":
        return await store.add_backup(account_id, backup(index), now=now)
    return await store.add_notification(account_id, note(index), now=now)


@pytest.mark.parametrize("kind", ["backup", "notification"])
@run_async
async def test_a_repeat_that_raced_its_original_leaves_no_trace(
    url: str, schema: str, kind: str
) -> None:
    """One entry sent to two instances at once: one original, and a repeat that names it.

    Both batches start together, so both find no entry; the later one waits for the other's
    lock on the device, moves its last sign of life, and only then finds the original at its
    INSERT. It answers as a repeat and undoes the move: a repeat is no sign of life.
    """
    async with (
        PostgresStore(url, schema=schema) as first,
        PostgresStore(url, schema=schema) as second,
    ):
        account = await first.create_account("acme", now=NOW)
        await _add(first, account.id, 0, kind, NOW)  # the device and the job exist
        for index in range(1, 6):
            times = (NOW + timedelta(minutes=index), NOW + timedelta(minutes=index, seconds=30))
            with first.hold_writes(), second.hold_writes():
                tasks = [
                    asyncio.create_task(_add(store, account.id, index, kind, now))
                    for store, now in zip((first, second), times, strict=True)
                ]
                await asyncio.sleep(0)
            answers = await asyncio.gather(*tasks)
            assert sorted(answer.duplicate for answer in answers) == [False, True]
            assert answers[0].id == answers[1].id
            (original_now,) = [
                now for answer, now in zip(answers, times, strict=True) if not answer.duplicate
            ]
            (device,) = (await first.list_devices(account.id, limit=10, cursor=None)).items
            assert device.last_seen_at == original_now


@run_async
async def test_a_deadlock_victim_is_retried_in_the_next_transaction(url: str, schema: str) -> None:
    """A write that loses a deadlock (to another client here) is run again, and acknowledged."""
    async with PostgresStore(url, schema=schema) as store:
        account = await store.create_account("acme", now=NOW)
        devices = sorted(
            ("srv-a", "srv-b"), key=lambda name: _device_digest(backup(0, device=name))
        )
        ids = [
            (await store.add_backup(account.id, backup(0, device=name), now=NOW)).device_id
            for name in devices
        ]
        other = await psycopg.AsyncConnection.connect(url)
        async with other:
            await other.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            # The store's backend, not this one, must find the deadlock and be its victim.
            await other.execute("SET deadlock_timeout = '30s'")
            await other.execute("UPDATE devices SET sender = sender WHERE id = %s", (ids[1],))
            before = store.commit_count
            with store.hold_writes():
                tasks = [
                    asyncio.create_task(
                        # Later than the devices' last sign of life: each write locks its row.
                        store.add_backup(account.id, backup(1, device=name), now=LATER)
                    )
                    for name in devices
                ]
                await asyncio.sleep(0)
            await asyncio.sleep(0.3)  # the store locked the first device and waits for the second
            # Waits for the store, which waits for this one: PostgreSQL aborts the store's write
            # after its deadlock_timeout; the rest of its batch commits, which frees this one.
            await other.execute("UPDATE devices SET sender = sender WHERE id = %s", (ids[0],))
            await other.commit()
        results = await asyncio.gather(*tasks)
        assert store.commit_count == before + 2  # the batch, then the retried write alone
        assert not any(result.duplicate for result in results)
        assert len(await all_backups(store, account.id)) == 4


# What one submission is: which of the two stores gets it, for which account, at which time.
_Submission = tuple[int, int, bmcore.BackupEntry | bmcore.Notification, datetime]
# Distinct instants: last_seen_at is then the latest of them, whatever the order of commits.
_NOWS = (
    NOW,
    NOW + timedelta(minutes=1),
    (NOW + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2))),
)
_STAMPS = ("2024-06-04T12:00:00Z", "2024-06-04T14:00:00+02:00", "2024-06-04T13:00:00Z")

_backups = st.builds(
    bmcore.BackupEntry,
    device_name=st.sampled_from(("srv01", "SRV01 ", "srv02")),
    job_name=st.sampled_from(("Nightly", " nightly", "Weekly")),
    timestamp=st.sampled_from(_STAMPS).map(bmcore.parse_timestamp),
    status=st.sampled_from(("Success", "Error")),
    message=st.just("ok"),
    sender=st.sampled_from(("script", "Script")),
)
_notifications = st.builds(
    bmcore.Notification,
    device_name=st.sampled_from(("srv01", "SRV01 ", "srv02")),
    timestamp=st.sampled_from(_STAMPS).map(bmcore.parse_timestamp),
    severity=st.sampled_from(bmcore.Severity),
    type=st.sampled_from(("disk_space_low", "ssl_expiry")),
    job_name=st.none() | st.sampled_from(("Nightly", " nightly")),
    message=st.none(),
    sender=st.sampled_from(("script", "Script")),
)
# Few distinct entries, each sent to either store or both, in any order: repeats, clashes,
# near-misses in matching and new devices and jobs racing between the two instances.
_scripts = st.lists(
    st.tuples(
        st.integers(0, 1), st.integers(0, 1), _backups | _notifications, st.sampled_from(_NOWS)
    ),
    min_size=1,
    max_size=40,
)


async def _submit(
    store: PostgresStore,
    account_id: str,
    entry: bmcore.BackupEntry | bmcore.Notification,
    now: datetime,
) -> WriteResult | ConflictError:
    try:
        if isinstance(entry, bmcore.BackupEntry):
            return await store.add_backup(account_id, entry, now=now)
        return await store.add_notification(account_id, entry, now=now)
    except ConflictError as conflict:
        return conflict


@attrs.frozen
class _Outcome:
    """What two instances answered to a script, and what the database then held."""

    accounts: list[str]  # the ids of accounts "a" and "b"
    answers: list[WriteResult | ConflictError]
    backups: dict[str, StoredBackup]
    notifications: dict[str, StoredNotification]
    devices: dict[str, DeviceRecord]
    jobs: dict[str, JobRecord]


async def _on_two_instances(
    url: str, schema: str, script: Sequence[_Submission], *, held: bool
) -> _Outcome:
    """Send the script to two stores on one schema at once; their answers and the rows."""
    async with (
        PostgresStore(url, schema=schema) as first,
        PostgresStore(url, schema=schema) as second,
    ):
        stores = (first, second)
        accounts = [(await first.create_account(name, now=NOW)).id for name in ("a", "b")]
        with contextlib.ExitStack() as holding:
            for store in stores if held else ():
                holding.enter_context(store.hold_writes())
            tasks = [
                asyncio.create_task(_submit(stores[index], accounts[owner], entry, now))
                for index, owner, entry, now in script
            ]
            await asyncio.sleep(0)
        answers = await asyncio.gather(*tasks)
        outcome = _Outcome(accounts, list(answers), {}, {}, {}, {})
        for account_id in accounts:
            backups = await all_backups(first, account_id)
            outcome.backups.update((item.id, item) for item in backups)
            notes = await first.list_notifications(
                account_id, NotificationQuery(), limit=1000, cursor=None
            )
            outcome.notifications.update((item.id, item) for item in notes.items)
            devices = await first.list_devices(account_id, limit=1000, cursor=None)
            outcome.devices.update((item.id, item) for item in devices.items)
            jobs = await first.list_jobs(account_id, device_name=None, limit=1000, cursor=None)
            outcome.jobs.update((item.id, item) for item in jobs.items)
    return outcome


def _identity(owner: int, entry: bmcore.BackupEntry | bmcore.Notification) -> tuple[object, ...]:
    """What a store keeps once: a backup per job and instant, a notification per content."""
    if isinstance(entry, bmcore.BackupEntry):
        job = bmcore.JobKey.of(entry.sender, entry.device_name, entry.job_name).digest
        return ("backup", owner, job, split_datetime(entry.timestamp)[0])
    return ("notification", owner, hashlib.sha256(bmcore.encode_notification(entry)).digest())


def _content(entry: bmcore.BackupEntry | bmcore.Notification) -> bytes:
    if isinstance(entry, bmcore.BackupEntry):
        return bmcore.encode_backup(entry)
    return bmcore.encode_notification(entry)


def _check_entries(script: Sequence[_Submission], outcome: _Outcome) -> None:
    """Each identity stored once, as its one original; repeats name it; clashes conflict."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for position, (_, owner, entry, _) in enumerate(script):
        groups.setdefault(_identity(owner, entry), []).append(position)
    stored: dict[str, bytes] = {}
    for positions in groups.values():
        originals = [
            position
            for position in positions
            if isinstance(answer := outcome.answers[position], WriteResult) and not answer.duplicate
        ]
        assert len(originals) == 1, [outcome.answers[position] for position in positions]
        original = outcome.answers[originals[0]]
        assert isinstance(original, WriteResult)
        content = _content(script[originals[0]][2])
        stored[original.id] = content
        for position in positions:
            answer = outcome.answers[position]
            if _content(script[position][2]) == content:
                assert isinstance(answer, WriteResult)
                assert answer.id == original.id
            else:
                assert isinstance(answer, ConflictError)
                assert answer.existing_id == original.id
    rows = {key: bmcore.encode_backup(item.entry) for key, item in outcome.backups.items()}
    rows.update(
        (key, bmcore.encode_notification(item.notification))
        for key, item in outcome.notifications.items()
    )
    assert rows == stored


def _check_devices_and_jobs(script: Sequence[_Submission], outcome: _Outcome) -> None:
    """Each device and job created once, by one write, with its names; last_seen the latest."""
    created: dict[str, int] = {}
    latest: dict[str, datetime] = {}
    for position, answer in enumerate(outcome.answers):
        if not isinstance(answer, WriteResult):
            continue
        if answer.device_created:
            assert answer.device_id not in created
            created[answer.device_id] = position
        if answer.job_created:
            assert answer.job_id is not None
            assert answer.job_id not in created
            created[answer.job_id] = position
        if not answer.duplicate:
            now = script[position][3]
            latest[answer.device_id] = max(latest.get(answer.device_id, now), now)
    assert set(created) == set(outcome.devices) | set(outcome.jobs)
    for device_id, device in outcome.devices.items():
        _, _, entry, now = script[created[device_id]]
        assert (device.sender, device.device_name, device.created_at) == (
            entry.sender,
            entry.device_name,
            now,
        )
        assert device.last_seen_at == latest[device_id]
    for job_id, job in outcome.jobs.items():
        _, _, entry, now = script[created[job_id]]
        assert (job.sender, job.device_name, job.job_name, job.created_at) == (
            entry.sender,
            entry.device_name,
            entry.job_name,
            now,
        )


async def _single_store_counts(script: Sequence[_Submission]) -> tuple[int, ...]:
    """How many entries, devices and jobs one store holds after the same script, in order."""
    store = MemoryStore()
    accounts = [(await store.create_account(name, now=NOW)).id for name in ("a", "b")]
    for _, owner, entry, now in script:
        await _submit_to_memory(store, accounts[owner], entry, now)
    counts: list[int] = []
    for account_id in accounts:
        counts.append(
            len(
                (await store.list_backups(account_id, BackupQuery(), limit=1000, cursor=None)).items
            )
        )
        counts.append(
            len(
                (
                    await store.list_notifications(
                        account_id, NotificationQuery(), limit=1000, cursor=None
                    )
                ).items
            )
        )
        counts.append(len((await store.list_devices(account_id, limit=1000, cursor=None)).items))
        counts.append(
            len(
                (await store.list_jobs(account_id, device_name=None, limit=1000, cursor=None)).items
            )
        )
    return tuple(counts)


async def _submit_to_memory(
    store: MemoryStore,
    account_id: str,
    entry: bmcore.BackupEntry | bmcore.Notification,
    now: datetime,
) -> None:
    with contextlib.suppress(ConflictError):
        if isinstance(entry, bmcore.BackupEntry):
            await store.add_backup(account_id, entry, now=now)
        else:
            await store.add_notification(account_id, entry, now=now)


def _counts(outcome: _Outcome) -> tuple[int, ...]:
    """How many entries, devices and jobs of each account the two instances stored."""
    counts: list[int] = []
    for account_id in outcome.accounts:
        counts.append(sum(item.account_id == account_id for item in outcome.backups.values()))
        counts.append(sum(item.account_id == account_id for item in outcome.notifications.values()))
        counts.append(sum(item.account_id == account_id for item in outcome.devices.values()))
        counts.append(sum(item.account_id == account_id for item in outcome.jobs.values()))
    return tuple(counts)


# The schema is the test's, emptied after each example: a schema per example would cost more.
# At most 200 examples even in the ci profile: each is a few dozen round trips to PostgreSQL,
# and CI runs the suite on three Pythons.
@settings(
    max_examples=min(200, settings().max_examples),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(script=_scripts, held=st.booleans())
def test_two_instances_store_each_entry_once(
    url: str, schema: str, script: list[_Submission], held: bool
) -> None:
    """Any interleaving of entries sent to two instances ends as one store's rows would.

    Every identity is stored once, as the one write that was answered as an original; every
    repeat, on either instance, names it; every clash conflicts with it; devices and jobs are
    created once; and there are as many of each as one store holds after the same writes.
    """
    try:
        outcome = asyncio.run(_on_two_instances(url, schema, script, held=held))
    finally:
        empty_schema(url, schema)
    _check_entries(script, outcome)
    _check_devices_and_jobs(script, outcome)
    assert _counts(outcome) == asyncio.run(_single_store_counts(script))
