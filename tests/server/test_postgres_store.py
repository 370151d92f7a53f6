"""What only PostgresStore has: migrations under a lock, its pool and loop, several instances.

What it shares with SqliteStore (migrations, the batching writer, its lifecycle) is in
test_sql_stores.py; the contract every store keeps, in test_store_contract.py. Each test has a
PostgreSQL schema of its own (``postgres_schema``) and is skipped when no PostgreSQL is
reachable. Two stores on one schema stand for two bmserver processes: each has its own pool,
its own writer and its own connections, so the database sees them as two clients, exactly as it
would two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import attrs
import psycopg
import pytest
from _postgres_database import PostgresDatabase
from _postgres_tables import connect, empty_schema
from _services import schema_named
from _stores import NOW, backups_of, note, run, run_async
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import PoolTimeout

import bmcore
from bmserver.storage._contract import (
    BackupQuery,
    ConflictError,
    DeviceRecord,
    JobRecord,
    NotificationQuery,
    StoredBackup,
    StoredNotification,
    StoreError,
    WriteResult,
)
from bmserver.storage._memory import MemoryStore
from bmserver.storage._postgres import PostgresStore
from bmserver.storage._postgres_migrations import LOCK_CLASS, MIGRATIONS, apply_migrations

LATER = NOW + timedelta(hours=1)


@pytest.fixture
def url(postgres_url: str) -> str:
    """The PostgreSQL server's URL."""
    return postgres_url


@pytest.fixture
def schema(postgres_schema: str) -> str:
    """The test's own schema, empty."""
    return postgres_schema


def versions(url: str, schema: str) -> list[int]:
    """The versions recorded in the schema, in order."""
    return PostgresDatabase(url, schema).versions()


def catalog(url: str, schema: str) -> list[tuple[str, str]]:
    """The schema's tables and indexes with their definitions: what a migration changes."""
    return PostgresDatabase(url, schema).catalog()


# --- migrations -----------------------------------------------------------------------------------


@run_async
async def test_stores_opening_at_once_migrate_once(url: str, schema: str) -> None:
    """Several instances starting together on an empty schema apply each migration once."""
    stores = [PostgresStore(url, schema=schema) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        assert sum(store.migrations_applied for store in stores) == len(MIGRATIONS)
        assert versions(url, schema) == [1, 2, 3, 4, 5]
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
        assert versions(url, schema) == [1, 2, 3, 4, 5]
    finally:
        await store.close()


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
        await odd.add_backup(account.id, run(1), now=NOW)
        assert len(await backups_of(odd, account.id)) == 1
        assert await plain.count_accounts() == 0
    assert versions(url, odd_schema) == [1, 2, 3, 4, 5]


@run_async
async def test_without_a_schema_the_url_decides(url: str, schema: str) -> None:
    """With no schema given, the tables go where the URL's own search path puts them."""
    options = quote(f"-c search_path={schema}")
    async with PostgresStore(f"{url}?options={options}") as store:
        assert store.schema is None
        await store.create_account("acme", now=NOW)
    assert versions(url, schema) == [1, 2, 3, 4, 5]
    with connect(url, schema) as connection:
        assert connection.execute("SELECT name FROM accounts").fetchall() == [("acme",)]


# --- how the tables hold things -------------------------------------------------------------------


@run_async
async def test_times_are_instants_with_their_offsets(url: str, schema: str) -> None:
    """A timestamp is a timestamptz (the instant) plus the offset it was sent with, in minutes."""
    received = datetime(2024, 6, 4, 20, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7)))
    entry = attrs.evolve(run(1), timestamp=bmcore.parse_timestamp("2024-06-04T14:00:00+05:45"))
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
            await store.add_backup(account.id, run(1), now=NOW)
        written = await store.add_backup(account.id, run(1), now=NOW)
        assert not written.duplicate
        assert [item.id for item in await backups_of(store, account.id)] == [written.id]


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
            waiting = asyncio.create_task(store.add_backup(account.id, run(1), now=NOW))
            queued = asyncio.create_task(store.add_backup(account.id, run(2), now=NOW))
            await asyncio.sleep(0)  # both queued; the writer holds the first, waiting to start
            running.writer.cancel()
            await asyncio.sleep(0)
        for task in (waiting, queued):
            with pytest.raises(StoreError, match="writer has stopped"):
                await task
        with pytest.raises(StoreError, match="writer has stopped"):
            await store.add_backup(account.id, run(3), now=NOW)
        assert await backups_of(store, account.id) == []


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
                await store.add_backup(account.id, run(1), now=NOW)
            assert isinstance(write.value.__cause__, PoolTimeout)
            locker.rollback()
        assert await holding == 1
        written = await store.add_backup(account.id, run(1), now=NOW)
        assert [item.id for item in await backups_of(store, account.id)] == [written.id]


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
                await store.add_backup(account.id, run(1), now=NOW)
            assert isinstance(write.value.__cause__, psycopg.errors.QueryCanceled)
            locker.rollback()
        written = await store.add_backup(account.id, run(1), now=NOW)
        assert [item.id for item in await backups_of(store, account.id)] == [written.id]


def test_the_pool_time_out_is_checked() -> None:
    """A pool time-out that is not positive is refused when the store is made."""
    with pytest.raises(ValueError, match="pool_timeout_s"):
        PostgresStore("postgresql://", pool_timeout_s=0)


# --- lifecycle ------------------------------------------------------------------------------------


def test_hold_writes_needs_an_open_store(url: str, schema: str) -> None:
    """Its writer's queue exists only while the store is open: hold_writes() refuses before."""
    store = PostgresStore(url, schema=schema)
    with pytest.raises(StoreError, match="not open"), store.hold_writes():
        pass


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
        devices = sorted(("srv-a", "srv-b"), key=lambda name: _device_digest(run(0, device=name)))
        for name in devices:
            await first.add_backup(account.id, run(0, device=name), now=NOW)
        commits = (first.commit_count, second.commit_count)
        plans = ((first, devices, 1), (second, devices[::-1], 2))
        with first.hold_writes(), second.hold_writes():
            tasks = [
                asyncio.create_task(
                    store.add_backup(
                        account.id, run(hours, device=name), now=NOW + timedelta(hours=hours)
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


async def _add(
    store: PostgresStore, account_id: str, index: int, kind: str, now: datetime
) -> WriteResult:
    if kind == "backup":
        return await store.add_backup(account_id, run(index), now=now)
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
        devices = sorted(("srv-a", "srv-b"), key=lambda name: _device_digest(run(0, device=name)))
        ids = [
            (await store.add_backup(account.id, run(0, device=name), now=NOW)).device_id
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
                        store.add_backup(account.id, run(1, device=name), now=LATER)
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
        assert len(await backups_of(store, account.id)) == 4


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
            backups = await backups_of(first, account_id)
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
        return ("backup", owner, job, bmcore.split_instant(entry.timestamp)[0])
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
