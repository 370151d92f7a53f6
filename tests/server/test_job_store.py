"""Jobs in every store: their summaries of their backups, their schedules and pauses, by id.

Every test runs against MemoryStore, SqliteStore and PostgresStore (skipped when no PostgreSQL
is reachable, unless BM_REQUIRE_SERVICES=1), each fresh, with an account in it; the migration
that gave existing jobs their summaries runs on both SQL stores. A hypothesis test checks that
any backups, written in any order and in any batches, leave the summary that
:func:`bmcore.summarize` gives of the backups stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from _databases import Database, database
from _stores import BASE, NOW, make_store, run_async, shared_loop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bmcore
from bmcore import Outcome, Pause, ReportSummary
from bmserver.storage._contract import (
    Account,
    BackupQuery,
    ConflictError,
    JobRecord,
    Scope,
    Store,
    WriteResult,
)
from bmserver.storage._sql_store import SqlStore


@pytest.fixture(autouse=True)
def loop_runner() -> Iterator[asyncio.Runner]:
    """One event loop for each test and its fixtures (a PostgresStore's pool needs it)."""
    with shared_loop() as runner:
        yield runner


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, loop_runner: asyncio.Runner
) -> Iterator[Store]:
    """An opened store of each kind, closed after the test."""
    opened = make_store(request, str(request.param), tmp_path)
    loop_runner.run(opened.open())
    yield opened
    loop_runner.run(opened.close())


@pytest.fixture
def account(store: Store, loop_runner: asyncio.Runner) -> Account:
    """An account in the store."""
    return loop_runner.run(store.create_account("acme", now=NOW))


def hour(index: int, offset_minutes: int = 0) -> datetime:
    """BASE plus ``index`` hours, at a UTC offset."""
    return (BASE + timedelta(hours=index)).astimezone(timezone(timedelta(minutes=offset_minutes)))


def report(
    index: int, status: str, *, job: str = "Nightly", offset_minutes: int = 0
) -> bmcore.BackupEntry:
    """A backup of a job on srv01 at :func:`hour` ``index``."""
    return bmcore.BackupEntry(
        device_name="srv01",
        job_name=job,
        timestamp=hour(index, offset_minutes),
        status=status,
        message=f"{status} at {index}",
        sender="script-srv01",
    )


async def write_all(store: Store, account_id: str, entries: Sequence[bmcore.BackupEntry]) -> str:
    """Write the backups one after the other; the id of their job."""
    results = [await store.add_backup(account_id, entry, now=NOW) for entry in entries]
    assert len({result.job_id for result in results}) == 1
    job_id = results[0].job_id
    assert job_id is not None
    return job_id


async def job_of(store: Store, account_id: str, job_id: str) -> JobRecord:
    """A job that must exist."""
    job = await store.get_job(account_id, job_id)
    assert job is not None
    return job


def summary_of(entries: Sequence[bmcore.BackupEntry]) -> ReportSummary:
    """What bmcore makes of these backups as a job's reports."""
    return bmcore.summarize((entry.timestamp, entry.outcome) for entry in entries)


def assert_same_times(actual: ReportSummary, expected: ReportSummary) -> None:
    """Equal summaries whose times also keep the offsets they were sent with."""
    assert actual == expected
    for name in ("latest_at", "last_success_at", "failing_since"):
        moment, wanted = getattr(actual, name), getattr(expected, name)
        assert (None if moment is None else moment.isoformat()) == (
            None if wanted is None else wanted.isoformat()
        ), name
    assert [at.isoformat() for at in actual.recent] == [at.isoformat() for at in expected.recent]


async def in_one_batch(
    store: Store, account_id: str, entries: Sequence[bmcore.BackupEntry]
) -> list[WriteResult | BaseException]:
    """Write the backups concurrently, in this order: one batch of a SQL store's writer.

    The memory store writes each at once, in the order they were started.
    """

    def start() -> list[asyncio.Task[WriteResult]]:
        return [
            asyncio.create_task(store.add_backup(account_id, entry, now=NOW)) for entry in entries
        ]

    if not isinstance(store, SqlStore):
        return await asyncio.gather(*start(), return_exceptions=True)
    before = store.commit_count
    with store.hold_writes():
        tasks = start()
        await asyncio.sleep(0)  # every write started runs up to its queued write
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert store.commit_count == before + 1
    return results


# --- the summary, as backups arrive ---------------------------------------------------------------


@run_async
async def test_the_summary_follows_backups_written_in_order(store: Store, account: Account) -> None:
    """Latest, last success, the failures since and the recent times, as bmcore counts them."""
    entries = [
        report(0, "Success", offset_minutes=120),
        report(1, "Error", offset_minutes=-300),
        report(2, "Warning"),
        report(3, "error", offset_minutes=60),
    ]
    job_id = await write_all(store, account.id, entries)
    job = await job_of(store, account.id, job_id)
    assert_same_times(job.summary, summary_of(entries))
    assert job.summary.last_success_at == hour(0)
    assert (job.summary.consecutive_failures, job.summary.failing_since) == (2, hour(1))
    assert job.summary.latest_outcome is Outcome.ERROR
    assert job.summary.recent == tuple(hour(index) for index in range(4))
    assert job.latest_timestamp is not None
    assert job.latest_timestamp.isoformat() == hour(3, 60).isoformat()
    assert (job.latest_status, job.latest_outcome) == ("error", "Error")


@run_async
async def test_a_new_job_has_an_empty_summary(store: Store, account: Account) -> None:
    """A job that only notifications named has no reports: the empty summary."""
    noted = await store.add_notification(
        account.id,
        bmcore.Notification(
            device_name="srv01",
            timestamp=hour(0),
            severity=bmcore.Severity.INFO,
            type="started",
            job_name="Nightly",
            sender="script-srv01",
        ),
        now=NOW,
    )
    assert noted.job_id is not None
    job = await job_of(store, account.id, noted.job_id)
    assert job.summary == ReportSummary()
    assert (job.latest_backup_id, job.latest_timestamp, job.latest_outcome) == (None, None, None)
    assert (job.schedule, job.scheduled_at, job.pause) == (None, None, None)
    written = await store.add_backup(account.id, report(1, "Success"), now=NOW)
    assert written.job_id == noted.job_id
    job = await job_of(store, account.id, noted.job_id)
    assert job.summary == summary_of([report(1, "Success")])
    assert job.latest_backup_id == written.id


@run_async
async def test_backfilled_reports_count_where_they_belong(store: Store, account: Account) -> None:
    """An older report changes neither the latest nor a streak it is not part of."""
    entries = [report(10, "Success"), report(12, "Error")]
    job_id = await write_all(store, account.id, entries)
    latest_id = (await job_of(store, account.id, job_id)).latest_backup_id
    for backfilled in (report(5, "Error"), report(11, "Error"), report(8, "Success")):
        await store.add_backup(account.id, backfilled, now=NOW)
        entries.append(backfilled)
        job = await job_of(store, account.id, job_id)
        assert_same_times(job.summary, summary_of(entries))
        assert job.latest_backup_id == latest_id
    job = await job_of(store, account.id, job_id)
    assert (job.summary.consecutive_failures, job.summary.failing_since) == (2, hour(11))
    assert job.summary.last_success_at == hour(10)
    newer = await store.add_backup(account.id, report(13, "Success"), now=NOW)
    job = await job_of(store, account.id, job_id)
    assert (job.summary.consecutive_failures, job.summary.failing_since) == (0, None)
    assert (job.latest_backup_id, job.latest_status) == (newer.id, "Success")


@run_async
async def test_a_success_backfilled_into_a_streak_recounts(store: Store, account: Account) -> None:
    """Error at t0, Error at t2, then Success at t1: one failure left, since t2."""
    entries = [report(0, "Error"), report(2, "Error", offset_minutes=90)]
    job_id = await write_all(store, account.id, entries)
    before = await job_of(store, account.id, job_id)
    assert (before.summary.consecutive_failures, before.summary.failing_since) == (2, hour(0))
    assert before.summary.add(hour(1), Outcome.SUCCESS) is None  # the case that needs a recount
    await store.add_backup(account.id, report(1, "Success"), now=NOW)
    job = await job_of(store, account.id, job_id)
    assert (job.summary.consecutive_failures, job.summary.failing_since) == (1, hour(2))
    assert job.summary.last_success_at == hour(1)
    assert job.summary.latest_outcome is Outcome.ERROR
    assert_same_times(job.summary, summary_of([*entries, report(1, "Success")]))
    assert job.latest_backup_id == before.latest_backup_id  # t2's, still the latest


@run_async
async def test_the_recent_times_keep_the_newest_ten(store: Store, account: Account) -> None:
    """Fifteen reports in a shuffled order: the ten newest times, oldest first."""
    order = [7, 0, 14, 3, 11, 1, 9, 13, 2, 6, 12, 4, 10, 5, 8]
    entries = [report(index, "Success", offset_minutes=index * 15) for index in order]
    job_id = await write_all(store, account.id, entries)
    job = await job_of(store, account.id, job_id)
    assert job.summary.recent == tuple(hour(index) for index in range(5, 15))
    assert_same_times(job.summary, summary_of(entries))


@run_async
async def test_repeats_and_conflicts_leave_the_job_alone(store: Store, account: Account) -> None:
    """An idempotent repeat and a conflicting report change nothing of the job."""
    entries = [report(0, "Success"), report(2, "Error")]
    job_id = await write_all(store, account.id, entries)
    before = await job_of(store, account.id, job_id)
    repeat = await store.add_backup(account.id, report(2, "Error"), now=NOW)
    assert repeat.duplicate
    with pytest.raises(ConflictError):
        await store.add_backup(account.id, report(2, "Success"), now=NOW)
    with pytest.raises(ConflictError):
        await store.add_backup(account.id, report(0, "Error"), now=NOW)
    assert await job_of(store, account.id, job_id) == before


@run_async
async def test_backups_of_one_job_in_one_batch(store: Store, account: Account) -> None:
    """Each write of a batch sees the summary the one before it left, a recount included."""
    await store.add_backup(account.id, report(0, "Success"), now=NOW)
    batch = [
        report(3, "Error"),
        report(5, "Error", offset_minutes=30),
        report(4, "Success"),  # splits the streak of 3 and 5: a recount
        report(1, "Warning"),  # backfilled
        report(5, "Error", offset_minutes=30),  # a repeat
        report(3, "Success"),  # a conflict
        report(7, "error"),
        report(6, "Unknown status"),
    ]
    results = await in_one_batch(store, account.id, batch)
    assert isinstance(results[4], WriteResult)
    assert results[4].duplicate
    assert isinstance(results[5], ConflictError)
    stored = [report(0, "Success"), *batch[:4], *batch[6:]]
    first = results[0]
    assert isinstance(first, WriteResult)
    assert first.job_id is not None
    job = await job_of(store, account.id, first.job_id)
    assert_same_times(job.summary, summary_of(stored))
    assert (job.summary.consecutive_failures, job.summary.failing_since) == (2, hour(5))
    latest = results[6]
    assert isinstance(latest, WriteResult)
    assert (job.latest_backup_id, job.latest_status, job.latest_outcome) == (
        latest.id,
        "error",
        "Error",
    )


@run_async
async def test_a_job_lists_as_it_is_read(store: Store, account: Account) -> None:
    """list_jobs and get_job give the same record: summary, schedule and pause included."""
    job_id = await write_all(store, account.id, [report(0, "Error"), report(1, "Warning")])
    every = bmcore.parse_schedule({"every": "1h", "grace": "10m"})
    await store.set_schedule(account.id, job_id, every, now=NOW)
    await store.set_pause(account.id, job_id, Pause(since=hour(2)))
    listed = await store.list_jobs(account.id, device_name=None, limit=10, cursor=None)
    assert list(listed.items) == [await job_of(store, account.id, job_id)]


# --- schedules and pauses -------------------------------------------------------------------------

_SCHEDULES = [
    {"every": "24h", "grace": "1h"},
    {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin", "grace": "90m"},
    {"cron": "0 */6 * * *", "grace": "15m"},  # UTC, the default zone
]


@pytest.mark.parametrize("wire", _SCHEDULES, ids=["interval", "cron-in-a-zone", "cron-in-utc"])
@run_async
async def test_a_schedule_round_trips(store: Store, account: Account, wire: dict[str, str]) -> None:
    """A schedule is stored as set, with when it was set; None clears both."""
    job_id = await write_all(store, account.id, [report(0, "Success")])
    schedule = bmcore.parse_schedule(wire)
    set_at = datetime(2024, 6, 4, 14, 5, 7, 123456, tzinfo=timezone(timedelta(hours=2)))
    stored = await store.set_schedule(account.id, job_id, schedule, now=set_at)
    assert stored is not None
    assert stored.schedule is not None
    assert stored.schedule == schedule
    assert stored.schedule.to_wire() == schedule.to_wire()
    assert stored.scheduled_at is not None
    assert stored.scheduled_at.isoformat() == set_at.isoformat()
    assert await job_of(store, account.id, job_id) == stored
    # A new backup keeps the schedule; the schedule kept the summary.
    await store.add_backup(account.id, report(1, "Error"), now=NOW)
    job = await job_of(store, account.id, job_id)
    assert (job.schedule, job.scheduled_at) == (schedule, set_at)
    assert job.summary == summary_of([report(0, "Success"), report(1, "Error")])
    cleared = await store.set_schedule(account.id, job_id, None, now=NOW)
    assert cleared is not None
    assert (cleared.schedule, cleared.scheduled_at) == (None, None)
    assert await job_of(store, account.id, job_id) == cleared


@run_async
async def test_a_pause_round_trips(store: Store, account: Account) -> None:
    """A pause with or without an end is stored as set, offsets kept; None clears it."""
    job_id = await write_all(store, account.id, [report(0, "Success")])
    since = hour(3, offset_minutes=-240)
    for pause in (Pause(since=since, until=hour(9, offset_minutes=330)), Pause(since=since)):
        stored = await store.set_pause(account.id, job_id, pause)
        assert stored is not None
        assert stored.pause == pause
        assert stored.pause is not None
        assert stored.pause.since.isoformat() == pause.since.isoformat()
        until = stored.pause.until
        assert (None if until is None else until.isoformat()) == (
            None if pause.until is None else pause.until.isoformat()
        )
        assert await job_of(store, account.id, job_id) == stored
    await store.add_backup(account.id, report(1, "Success"), now=NOW)
    assert (await job_of(store, account.id, job_id)).pause == Pause(since=since)
    cleared = await store.set_pause(account.id, job_id, None)
    assert cleared is not None
    assert cleared.pause is None
    assert (await job_of(store, account.id, job_id)).pause is None


@run_async
async def test_another_account_can_neither_read_nor_set(store: Store, account: Account) -> None:
    """A job id of another account is no job: get and set give None and change nothing."""
    job_id = await write_all(store, account.id, [report(0, "Success")])
    before = await job_of(store, account.id, job_id)
    other = await store.create_account("globex", now=NOW)
    schedule = bmcore.parse_schedule({"every": "1h", "grace": "5m"})
    assert await store.get_job(other.id, job_id) is None
    assert await store.set_schedule(other.id, job_id, schedule, now=NOW) is None
    assert await store.set_pause(other.id, job_id, Pause(since=NOW)) is None
    assert await store.set_schedule(other.id, job_id, None, now=NOW) is None
    assert await store.set_pause(other.id, job_id, None) is None
    assert await job_of(store, account.id, job_id) == before


_ODD_IDS = [
    "job_0000000000000000",
    "",
    " ",
    "job_\x00",
    "\ud800",
    "x" * 10_000,
    "' OR '1'='1",
    "%s ? {created}",
    "\U0001f4be",
]


@run_async
async def test_unknown_and_odd_ids_are_no_job(store: Store, account: Account) -> None:
    """Any text as a job id, an entry's id among them, gives None, never an error."""
    written = await store.add_backup(account.id, report(0, "Success"), now=NOW)
    schedule = bmcore.parse_schedule({"every": "1h", "grace": "5m"})
    for job_id in [*_ODD_IDS, written.id, written.device_id]:
        assert await store.get_job(account.id, job_id) is None, job_id
        assert await store.set_schedule(account.id, job_id, schedule, now=NOW) is None, job_id
        assert await store.set_pause(account.id, job_id, Pause(since=NOW)) is None, job_id


@run_async
async def test_the_manage_scope_is_stored(store: Store, account: Account) -> None:
    """A key may have the manage scope, alone or with the others."""
    for key_hash, scopes in (
        ("h1", frozenset({Scope.MANAGE})),
        ("h2", frozenset({Scope.INGEST, Scope.READ, Scope.MANAGE})),
    ):
        added = await store.add_api_key(
            account_id=account.id, key_hash=key_hash, prefix=key_hash, scopes=scopes, now=NOW
        )
        assert added.scopes == scopes
        found = await store.find_api_key(key_hash)
        assert found is not None
        assert found.scopes == scopes
    assert [key.scopes for key in await store.list_api_keys()] == [
        frozenset({Scope.MANAGE}),
        frozenset(Scope),
    ]


# --- any backups, in any order and batches --------------------------------------------------------

_STATUSES = ("Success", "Error", "Warning", "failed", "ERROR ")
# (job, hour, status, offset in minutes): few hours, so that repeats and conflicts are common.
_reports = st.tuples(
    st.sampled_from(("Nightly", "Weekly")),
    st.integers(0, 24),
    st.sampled_from(_STATUSES),
    st.sampled_from((0, 60, -330)),
)
_scripts = st.lists(st.lists(_reports, min_size=1, max_size=6), min_size=1, max_size=6)


NewStore = Callable[[], contextlib.AbstractContextManager[Store]]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> NewStore:
    """A maker of new, unopened stores of a kind, one per hypothesis example, empty each."""
    kind = str(request.param)
    made = iter(range(1_000_000))
    where = ("", "")  # PostgreSQL's URL and schema
    if kind == "postgres":  # skipped here, before any example, when PostgreSQL is absent
        where = (
            request.getfixturevalue("postgres_url"),
            request.getfixturevalue("postgres_schema"),
        )

    @contextlib.contextmanager
    def make() -> Generator[Store]:
        if kind != "postgres":
            directory = tmp_path / f"example{next(made)}"
            directory.mkdir()
            yield make_store(request, kind, directory)
            return
        from _postgres_tables import empty_schema  # noqa: PLC0415 - psycopg is an optional extra

        # The schema is the test's, emptied after each example: creating one per example
        # would cost more than the example.
        try:
            yield make_store(request, kind, tmp_path)
        finally:
            empty_schema(*where)

    return make


async def _replay(
    store: Store, script: list[list[tuple[str, int, str, int]]]
) -> list[tuple[JobRecord, list[bmcore.BackupEntry]]]:
    """Write each batch of the script concurrently; each job as stored, with its new backups."""
    await store.open()
    try:
        account = await store.create_account("acme", now=NOW)
        stored: dict[str, list[bmcore.BackupEntry]] = {}
        for batch in script:
            entries = [
                report(index, status, job=job, offset_minutes=offset)
                for job, index, status, offset in batch
            ]
            results = await in_one_batch(store, account.id, entries)
            for entry, result in zip(entries, results, strict=True):
                if isinstance(result, ConflictError):
                    continue
                assert isinstance(result, WriteResult), result
                assert result.job_id is not None
                if not result.duplicate:
                    stored.setdefault(result.job_id, []).append(entry)
        return [
            (await job_of(store, account.id, job_id), entries) for job_id, entries in stored.items()
        ]
    finally:
        await store.close()


@settings(
    max_examples=min(15, settings().max_examples),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(script=_scripts)
def test_any_backups_leave_the_summary_bmcore_counts(
    new_store: NewStore, script: list[list[tuple[str, int, str, int]]]
) -> None:
    """Whatever the order and the batches, a job's summary is bmcore's summary of its backups.

    Repeats and conflicts store nothing; every (job, hour) is stored once; the job's latest
    backup is its newest.
    """
    with new_store() as store:
        jobs = asyncio.run(_replay(store, script))
    assert {job.job_name for job, _ in jobs} == {job for batch in script for job, *_ in batch}
    for job, entries in jobs:
        hours = {(job_name, index) for batch in script for job_name, index, *_ in batch}
        assert len(entries) == len({key for key in hours if key[0] == job.job_name})
        assert_same_times(job.summary, summary_of(entries))
        newest = max(entries, key=lambda entry: entry.timestamp)
        assert job.latest_timestamp == newest.timestamp
        assert (job.latest_status, job.latest_outcome) == (newest.status, newest.outcome.value)


@run_async
async def test_two_postgres_instances_keep_one_summary(
    postgres_url: str, postgres_schema: str
) -> None:
    """Two instances writing one job's backups, and its settings, at once lose no update.

    Their batches overlap: each write reads the job's summary under its row lock, so the
    summary ends as bmcore's of every backup stored, whichever instance stored it. Notifications
    of the job's device and settings of the job take their locks in the same order.
    """
    from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415 - an optional extra

    async with (
        PostgresStore(postgres_url, schema=postgres_schema) as first,
        PostgresStore(postgres_url, schema=postgres_schema) as second,
    ):
        account = await first.create_account("acme", now=NOW)
        job_id = await write_all(first, account.id, [report(0, "Success")])
        statuses = ("Error", "Success", "Warning", "Error", "error")
        every = bmcore.parse_schedule({"every": "1h", "grace": "5m"})
        for round_ in range(4):
            with first.hold_writes(), second.hold_writes():
                tasks: list[asyncio.Task[object]] = []
                for index in range(1, 41):
                    hours = 100 * round_ + (index * 37) % 97  # out of order, with backfills
                    entry = report(hours, statuses[index % len(statuses)])
                    instances = [(first, second)[index % 2]]
                    if index % 5 == 0:  # the same report to both: one stores it
                        instances.append((second, first)[index % 2])
                    now = NOW + timedelta(seconds=100 * round_ + index)  # moves last_seen
                    tasks.extend(
                        asyncio.create_task(_write(instance, account.id, entry, now))
                        for instance in instances
                    )
                    if index % 7 == 0:  # the device's other writes: its row's lock too
                        note = bmcore.Notification(
                            device_name="srv01",
                            timestamp=hour(hours),
                            severity=bmcore.Severity.INFO,
                            type="disk",
                            sender="script-srv01",
                        )
                        tasks.append(
                            asyncio.create_task(
                                (second, first)[index % 2].add_notification(
                                    account.id, note, now=now
                                )
                            )
                        )
                    if index % 9 == 0:
                        tasks.append(
                            asyncio.create_task(
                                (first, second)[index % 2].set_schedule(
                                    account.id, job_id, every, now=NOW
                                )
                            )
                        )
                await asyncio.sleep(0)
            answers = await asyncio.gather(*tasks)
            assert not [answer for answer in answers if isinstance(answer, BaseException)]
        backups = await first.list_backups(account.id, BackupQuery(), limit=1000, cursor=None)
        job = await job_of(second, account.id, job_id)
        assert job.schedule == every
        assert len(backups.items) > 100
        assert_same_times(job.summary, summary_of([item.entry for item in backups.items]))


async def _write(store: Store, account_id: str, entry: bmcore.BackupEntry, now: datetime) -> object:
    """A backup's write, whose repeat or conflict is an answer too."""
    try:
        return await store.add_backup(account_id, entry, now=now)
    except ConflictError as conflict:
        return conflict


# --- the migration that gave existing jobs their summaries ----------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A SQL store's database: a SQLite file, or a PostgreSQL schema of its own."""
    return database(request, str(request.param), tmp_path)


#: Jobs of the database at version 4, each with its backups as (hour, status, offset).
_OLD_JOBS: dict[str, list[tuple[int, str, int]]] = {
    "fine": [(0, "Success", 0), (1, "Success", 60), (2, "success", -300)],
    "failing": [(0, "Success", 0), (1, "Error", 60), (2, "Warning", 0), (3, "Error", -300)],
    "never": [(4, "Error", 0), (2, "error", 90), (3, "weird", 0)],
    "recovered": [(0, "Error", 0), (1, "Error", 0), (2, "Success", 120)],
    "warned": [(5, "Success", 0), (6, "Warning", 30)],
    "long": [(index, _STATUSES[index % 3], 15 * index) for index in range(15)],
    "empty": [],
}


def _old_rows(db: Database) -> list[tuple[str, str, list[bmcore.BackupEntry]]]:
    """Write the jobs of _OLD_JOBS as release 4 stored them; each (name, id, backups)."""
    sender, device = "script-srv01", "srv01"
    device_key = bmcore.DeviceKey.of(sender, device)
    base = db.dialect.moment(BASE)
    db.write(
        "INSERT INTO accounts (id, name, {created}, created_offset) VALUES (?, ?, ?, ?)",
        [("acc_0000000000000001", "acme", *base)],
    )
    db.write(
        "INSERT INTO devices (id, account_id, digest, sender, device_name, sender_key,"
        " device_name_key, {created}, created_offset, {last_seen}, last_seen_offset)"
        " VALUES (?, 'acc_0000000000000001', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                *("dev_0000000000000001", device_key.digest, sender, device),
                *(device_key.sender, device_key.device_name, *base, *base),
            )
        ],
    )
    jobs: list[tuple[str, str, list[bmcore.BackupEntry]]] = []
    job_rows: list[tuple[object, ...]] = []
    backup_rows: list[tuple[object, ...]] = []
    for number, (name, reports) in enumerate(_OLD_JOBS.items(), start=1):
        job_id = f"job_{number:016x}"
        key = bmcore.JobKey.of(sender, device, name)
        job_rows.append(
            (job_id, key.digest, sender, device, name, key.sender, key.device_name, key.job_name)
        )
        entries = [
            report(index, status, job=name, offset_minutes=offset)
            for index, status, offset in reports
        ]
        for entry in entries:
            facts = bmcore.backup_facts(entry)
            backup_rows.append(
                (
                    *(f"bk_{len(backup_rows):016x}", job_id, *db.dialect.moment(entry.timestamp)),
                    *(entry.job_name, entry.status, entry.outcome.value, entry.message),
                    *(facts.fingerprint, *base, key.sender, key.device_name, key.job_name),
                )
            )
        jobs.append((name, job_id, entries))
    db.write(
        "INSERT INTO jobs (id, account_id, device_id, digest, sender, device_name, job_name,"
        " sender_key, device_name_key, job_name_key, {created}, created_offset) VALUES"
        " (?, 'acc_0000000000000001', 'dev_0000000000000001', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*row, *base) for row in job_rows],
    )
    db.write(
        "INSERT INTO backups (id, account_id, device_id, job_id, {ts}, ts_offset, sender,"
        " device_name, job_name, status, outcome, message, content_hash, {received},"
        " received_offset, sender_key, device_name_key, job_name_key) VALUES"
        " (?, 'acc_0000000000000001', 'dev_0000000000000001', ?, ?, ?, 'script-srv01',"
        " 'srv01', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        backup_rows,
    )
    return jobs


@run_async
async def test_the_upgrade_gives_existing_jobs_their_summaries(db: Database) -> None:
    """A database at version 4 with jobs and backups: after the upgrade, each job's summary.

    It is bmcore's summary of the job's backups, its latest backup is its newest, and new
    backups update it.
    """
    async with db.migrator() as migrator:
        assert await migrator.apply(db.migrations[:4]) == 4
    jobs = _old_rows(db)
    async with db.store() as store:
        assert store.migrations_applied == 1
        listed = await store.list_backups(
            "acc_0000000000000001", BackupQuery(), limit=1000, cursor=None
        )
        backups = {(item.job_id, item.entry.timestamp): item.id for item in listed.items}
        for name, job_id, entries in jobs:
            job = await job_of(store, "acc_0000000000000001", job_id)
            assert_same_times(job.summary, summary_of(entries))
            assert (job.schedule, job.scheduled_at, job.pause) == (None, None, None)
            if not entries:
                assert job.summary == ReportSummary()
                assert (job.latest_backup_id, job.latest_status, job.latest_outcome) == (
                    None,
                    None,
                    None,
                )
                continue
            newest = max(entries, key=lambda entry: entry.timestamp)
            assert job.latest_backup_id == backups.get((job_id, newest.timestamp)), name
            assert job.latest_timestamp is not None
            assert job.latest_timestamp.isoformat() == newest.timestamp.isoformat()
            assert (job.latest_status, job.latest_outcome) == (
                newest.status,
                newest.outcome.value,
            )
        # New backups of an upgraded job update its summary, a recount included.
        failing = {name: (job_id, entries) for name, job_id, entries in jobs}["never"]
        added = report(3, "Success", job="never", offset_minutes=0)
        with pytest.raises(ConflictError):  # hour 3 holds "weird"
            await store.add_backup("acc_0000000000000001", added, now=NOW)
        backfilled = attrs.evolve(added, timestamp=hour(3) - timedelta(minutes=30))
        await store.add_backup("acc_0000000000000001", backfilled, now=NOW)
        job = await job_of(store, "acc_0000000000000001", failing[0])
        assert (job.summary.consecutive_failures, job.summary.failing_since) == (1, hour(4))
        assert_same_times(job.summary, summary_of([*failing[1], backfilled]))
    assert db.versions() == [1, 2, 3, 4, 5]
