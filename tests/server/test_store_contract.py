"""The Store contract: one suite, run against MemoryStore, SqliteStore and PostgresStore alike.

Every test gets a fresh, opened store of each kind (``store``) and an account in it; the
PostgreSQL one gets a schema of its own, and is skipped when no PostgreSQL is reachable. At the
end, hypothesis tests replay the same random writes on MemoryStore and on each other store and
compare every answer and every listing. What only one store has is in its own module
(``test_memory_store.py``, ``test_sqlite_store.py``, ``test_postgres_store.py``); what the two
SQL stores share beyond the contract is in ``test_sql_stores.py``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar, cast

import attrs
import pytest
from _stores import (
    NOW,
    at,
    backup,
    backups_of,
    lists_of,
    make_store,
    notification,
    notifications_of,
    pages_of,
    run_async,
    shared_loop,
    walk,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bmcore
from bmserver.storage._contract import (
    Account,
    BackupQuery,
    ConflictError,
    DeviceRecord,
    InvalidCursorError,
    JobRecord,
    NotificationQuery,
    Page,
    Scope,
    Store,
    StoredBackup,
    StoredNotification,
    StoreError,
    UnknownKeyError,
    WriteResult,
)
from bmserver.storage._cursors import decode_cursor, encode_cursor
from bmserver.storage._memory import MemoryStore
from bmserver.storage._sqlite import SqliteStore

T = TypeVar("T")


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


def raw_cursor(text: str) -> str:
    """A cursor's text in unpadded base64url, as the stores hand them out (made by hand here)."""
    return base64.urlsafe_b64encode(text.encode("ascii")).rstrip(b"=").decode("ascii")


# --- accounts and keys ----------------------------------------------------------------------------


@run_async
async def test_accounts_are_unique_by_name(store: Store) -> None:
    """Creating an existing name returns that account; count_accounts counts distinct ones."""
    assert await store.count_accounts() == 0
    first = await store.create_account("acme", now=NOW)
    again = await store.create_account("acme", now=NOW + timedelta(days=1))
    other = await store.create_account("globex", now=NOW)
    assert again == first
    assert first.created_at == NOW
    assert other.id != first.id
    assert re.fullmatch(r"acc_[0-9a-f]{16}", first.id)
    assert await store.count_accounts() == 2


@run_async
async def test_find_api_key_by_hash(store: Store, account: Account) -> None:
    """A stored key is found by its hash, with its prefix and scopes; an unknown hash is not."""
    scopes = frozenset({Scope.INGEST, Scope.READ})
    added = await store.add_api_key(
        account_id=account.id, key_hash="sha256:aa", prefix="bm_AAAAAAAA", scopes=scopes, now=NOW
    )
    found = await store.find_api_key("sha256:aa")
    assert found == added
    assert found is not None
    assert (found.account_id, found.prefix, found.scopes) == (account.id, "bm_AAAAAAAA", scopes)
    assert found.revoked_at is None
    assert await store.find_api_key("sha256:bb") is None


@run_async
async def test_key_scopes_round_trip(store: Store, account: Account) -> None:
    """Empty and single scopes are stored as given."""
    for key_hash, scopes in (("h1", frozenset[Scope]()), ("h2", frozenset({Scope.READ}))):
        await store.add_api_key(
            account_id=account.id, key_hash=key_hash, prefix=key_hash, scopes=scopes, now=NOW
        )
        found = await store.find_api_key(key_hash)
        assert found is not None
        assert found.scopes == scopes


@run_async
async def test_revoked_key_is_not_found_but_listed(store: Store, account: Account) -> None:
    """Revoking a key hides it from find_api_key at once; list_api_keys still shows it."""
    await store.add_api_key(
        account_id=account.id, key_hash="h", prefix="bm_AAAAAAAA", scopes=frozenset(), now=NOW
    )
    later = NOW + timedelta(hours=1)
    revoked = await store.revoke_api_key("bm_AAAAAAAA", now=later)
    assert revoked.revoked_at == later
    assert await store.find_api_key("h") is None
    assert [key.revoked_at for key in await store.list_api_keys()] == [later]


@run_async
async def test_revoke_unknown_prefix(store: Store, account: Account) -> None:
    """An unknown prefix, or one whose key is already revoked, raises UnknownKeyError."""
    with pytest.raises(UnknownKeyError):
        await store.revoke_api_key("bm_nothere", now=NOW)
    await store.add_api_key(
        account_id=account.id, key_hash="h", prefix="bm_AAAAAAAA", scopes=frozenset(), now=NOW
    )
    await store.revoke_api_key("bm_AAAAAAAA", now=NOW)
    with pytest.raises(UnknownKeyError):
        await store.revoke_api_key("bm_AAAAAAAA", now=NOW)


@run_async
async def test_revoke_shared_prefix_revokes_all(store: Store, account: Account) -> None:
    """Keys sharing a prefix are all revoked; the oldest is returned; others stay valid."""
    for key_hash, minutes in (("h-new", 2), ("h-old", 1)):
        await store.add_api_key(
            account_id=account.id,
            key_hash=key_hash,
            prefix="bm_SHARED00",
            scopes=frozenset(),
            now=NOW + timedelta(minutes=minutes),
        )
    await store.add_api_key(
        account_id=account.id, key_hash="h-other", prefix="bm_OTHER000", scopes=frozenset(), now=NOW
    )
    revoked = await store.revoke_api_key("bm_SHARED00", now=NOW)
    assert revoked.key_hash == "h-old"
    assert await store.find_api_key("h-new") is None
    assert await store.find_api_key("h-old") is None
    assert await store.find_api_key("h-other") is not None


@run_async
async def test_list_api_keys_oldest_first(store: Store, account: Account) -> None:
    """Every key of every account, oldest first, insertion order breaking ties."""
    other = await store.create_account("globex", now=NOW)
    plan = [("b", account, 5), ("a", other, 1), ("c", account, 5), ("d", other, 0)]
    for key_hash, owner, minutes in plan:
        await store.add_api_key(
            account_id=owner.id,
            key_hash=key_hash,
            prefix=key_hash,
            scopes=frozenset(),
            now=NOW + timedelta(minutes=minutes),
        )
    keys = await store.list_api_keys()
    assert [key.key_hash for key in keys] == ["d", "a", "b", "c"]
    assert {key.account_id for key in keys} == {account.id, other.id}


@run_async
async def test_add_api_key_refusals(store: Store, account: Account) -> None:
    """A key for an unknown account, or a hash already stored, is refused with StoreError."""
    with pytest.raises(StoreError, match="unknown account"):
        await store.add_api_key(
            account_id="acc_nope", key_hash="h", prefix="p", scopes=frozenset(), now=NOW
        )
    await store.add_api_key(
        account_id=account.id, key_hash="h", prefix="p", scopes=frozenset(), now=NOW
    )
    with pytest.raises(StoreError, match="already stored"):
        await store.add_api_key(
            account_id=account.id, key_hash="h", prefix="q", scopes=frozenset(), now=NOW
        )


# --- writing entries: matching --------------------------------------------------------------------


@run_async
async def test_first_backup_creates_device_and_job(store: Store, account: Account) -> None:
    """The first entry creates both; another job on the device creates only the job."""
    first = await store.add_backup(account.id, backup(), now=NOW)
    assert (first.device_created, first.job_created, first.duplicate) == (True, True, False)
    assert first.received_at == NOW
    assert re.fullmatch(r"bk_[0-9a-f]{16}", first.id)
    second = await store.add_backup(account.id, backup("Weekly"), now=NOW)
    assert second.device_id == first.device_id
    assert second.job_id != first.job_id
    assert (second.device_created, second.job_created) == (False, True)
    third = await store.add_backup(
        account.id, backup(timestamp="2024-06-05T14:00:00+02:00"), now=NOW
    )
    assert (third.device_id, third.job_id) == (first.device_id, first.job_id)
    assert (third.device_created, third.job_created) == (False, False)
    assert third.id not in {first.id, second.id}


@run_async
async def test_matching_ignores_case_and_whitespace(store: Store, account: Account) -> None:
    """Other case and spacing land on the same job; the names stay as first sent."""
    first = await store.add_backup(
        account.id, backup("Nightly Full Backup", device="SRV01", sender="Script-SRV01"), now=NOW
    )
    again = await store.add_backup(
        account.id,
        backup(
            "  nightly   full backup ",
            device="srv01 ",
            sender="script-srv01",
            timestamp="2024-06-05T14:00:00+02:00",
        ),
        now=NOW,
    )
    assert (again.device_id, again.job_id) == (first.device_id, first.job_id)
    assert (again.device_created, again.job_created) == (False, False)
    (job,) = (await store.list_jobs(account.id, device_name=None, limit=10, cursor=None)).items
    assert (job.sender, job.device_name, job.job_name) == (
        "Script-SRV01",
        "SRV01",
        "Nightly Full Backup",
    )
    (device,) = (await store.list_devices(account.id, limit=10, cursor=None)).items
    assert (device.id, device.sender, device.device_name) == (
        first.device_id,
        "Script-SRV01",
        "SRV01",
    )
    # Entries keep the names each one sent.
    names = [stored.entry.job_name for stored in await backups_of(store, account.id)]
    assert names == ["  nightly   full backup ", "Nightly Full Backup"]


@run_async
async def test_another_sender_is_another_device_and_job(store: Store, account: Account) -> None:
    """The sender is part of the matching key."""
    first = await store.add_backup(account.id, backup(sender="rsync"), now=NOW)
    other = await store.add_backup(account.id, backup(sender="robocopy"), now=NOW)
    assert other.device_id != first.device_id
    assert other.job_id != first.job_id
    assert (other.device_created, other.job_created, other.duplicate) == (True, True, False)


@run_async
async def test_job_names_are_as_its_first_entry_sent_them(store: Store, account: Account) -> None:
    """A new job on a known device keeps the device name its own first entry sent."""
    await store.add_backup(account.id, backup("Nightly", device="SRV01"), now=NOW)
    await store.add_backup(account.id, backup("Weekly", device="srv01"), now=NOW)
    jobs = (await store.list_jobs(account.id, device_name=None, limit=10, cursor=None)).items
    assert {job.job_name: job.device_name for job in jobs} == {
        "Nightly": "SRV01",
        "Weekly": "srv01",
    }


@run_async
async def test_device_last_seen_only_moves_forward(store: Store, account: Account) -> None:
    """last_seen_at follows the newest receipt time, never back, and not for a repeat."""
    await store.add_backup(account.id, backup(), now=NOW)
    later = (NOW + timedelta(hours=2)).astimezone(timezone(timedelta(hours=2)))
    await store.add_notification(
        account.id, notification(device="SRV01 ", sender="script-srv01"), now=later
    )
    await store.add_backup(account.id, backup("Weekly"), now=NOW + timedelta(hours=1))
    await store.add_backup(account.id, backup(), now=NOW + timedelta(hours=5))  # a repeat
    (device,) = (await store.list_devices(account.id, limit=10, cursor=None)).items
    assert device.created_at == NOW
    assert device.last_seen_at == later
    assert device.last_seen_at.utcoffset() == timedelta(hours=2)


@run_async
async def test_unknown_account_is_refused(store: Store) -> None:
    """Writing into an account that does not exist raises StoreError."""
    with pytest.raises(StoreError, match="unknown account"):
        await store.add_backup("acc_nope", backup(), now=NOW)
    with pytest.raises(StoreError, match="unknown account"):
        await store.add_notification("acc_nope", notification(), now=NOW)


@run_async
async def test_naive_datetimes_are_refused(store: Store, account: Account) -> None:
    """A naive datetime, or an offset with seconds, is a programming error: ValueError."""
    naive = datetime(2024, 6, 4, 12, 0)  # noqa: DTZ001 - naive on purpose
    with pytest.raises(ValueError, match="aware"):
        await store.add_backup(account.id, backup(), now=naive)
    with pytest.raises(ValueError, match="aware"):
        await store.add_backup(account.id, attrs.evolve(backup(), timestamp=naive), now=NOW)
    with pytest.raises(ValueError, match="aware"):
        await store.list_backups(account.id, BackupQuery(since=naive), limit=10, cursor=None)
    odd = datetime(2024, 6, 4, 12, 0, tzinfo=timezone(timedelta(seconds=30)))
    with pytest.raises(ValueError, match="whole number of minutes"):
        await store.add_notification(account.id, notification(), now=odd)
    assert await backups_of(store, account.id) == []


# --- writing entries: idempotency -----------------------------------------------------------------


@run_async
async def test_duplicate_backup_returns_the_original(store: Store, account: Account) -> None:
    """The same backup again: the original id and receipt time, duplicate, nothing new stored."""
    original = await store.add_backup(account.id, backup(), now=NOW)
    repeat = await store.add_backup(account.id, backup(), now=NOW + timedelta(minutes=1))
    assert repeat == WriteResult(
        id=original.id,
        received_at=original.received_at,
        device_id=original.device_id,
        device_created=False,
        job_id=original.job_id,
        job_created=False,
        duplicate=True,
    )
    assert [stored.id for stored in await backups_of(store, account.id)] == [original.id]


@run_async
async def test_conflicting_backup_names_the_original(store: Store, account: Account) -> None:
    """Same job and instant, other content: ConflictError with the original id, nothing stored."""
    original = await store.add_backup(account.id, backup(), now=NOW)
    with pytest.raises(ConflictError) as raised:
        await store.add_backup(account.id, backup(status="Error"), now=NOW)
    assert raised.value.existing_id == original.id
    # Another spelling of the job is the same job, but other content: a conflict too.
    with pytest.raises(ConflictError):
        await store.add_backup(account.id, backup("NIGHTLY FULL BACKUP"), now=NOW)
    assert [stored.entry for stored in await backups_of(store, account.id)] == [backup()]


@run_async
async def test_same_instant_with_another_offset_conflicts(store: Store, account: Account) -> None:
    """The idempotency key is the instant; content is compared byte for byte, offset included."""
    original = await store.add_backup(account.id, backup(timestamp="2024-06-04T12:00:00Z"), now=NOW)
    with pytest.raises(ConflictError) as raised:
        await store.add_backup(account.id, backup(timestamp="2024-06-04T14:00:00+02:00"), now=NOW)
    assert raised.value.existing_id == original.id


@run_async
async def test_same_instant_for_other_jobs_is_fine(store: Store, account: Account) -> None:
    """The idempotency key includes the job: other jobs may share a timestamp."""
    first = await store.add_backup(account.id, backup("A"), now=NOW)
    second = await store.add_backup(account.id, backup("B", status="Error"), now=NOW)
    assert not second.duplicate
    assert second.id != first.id


@run_async
async def test_duplicate_notification_returns_the_original(store: Store, account: Account) -> None:
    """An identical notification is a repeat; any difference makes a new one, never a conflict."""
    original = await store.add_notification(account.id, notification(job="Nightly"), now=NOW)
    repeat = await store.add_notification(
        account.id, notification(job="Nightly"), now=NOW + timedelta(minutes=1)
    )
    assert repeat == attrs.evolve(original, duplicate=True, device_created=False, job_created=False)
    changed = await store.add_notification(
        account.id, notification(job="Nightly", message="4% free"), now=NOW
    )
    assert (changed.duplicate, changed.job_id) == (False, original.job_id)
    assert changed.id != original.id
    stored = await notifications_of(store, account.id)
    assert sorted(item.id for item in stored) == sorted([original.id, changed.id])


@run_async
async def test_notification_names_a_job_only_with_a_job_name(
    store: Store, account: Account
) -> None:
    """Without jobName no job; with one it matches (or creates) the job like a backup."""
    alone = await store.add_notification(account.id, notification(), now=NOW)
    assert (alone.job_id, alone.job_created, alone.device_created) == (None, False, True)
    written = await store.add_backup(account.id, backup("Nightly", sender="disk-monitor"), now=NOW)
    assert written.device_id == alone.device_id
    related = await store.add_notification(
        account.id, notification(job=" NIGHTLY", timestamp="2024-06-05T14:00:00+02:00"), now=NOW
    )
    assert (related.job_id, related.job_created) == (written.job_id, False)
    fresh = await store.add_notification(
        account.id, notification(job="Weekly", timestamp="2024-06-06T14:00:00+02:00"), now=NOW
    )
    assert fresh.job_created
    assert fresh.job_id not in {None, written.job_id}
    stored = {item.id: item.job_id for item in await notifications_of(store, account.id)}
    assert stored == {alone.id: None, related.id: written.job_id, fresh.id: fresh.job_id}


# --- round trip -----------------------------------------------------------------------------------


@run_async
async def test_entries_round_trip_with_their_offsets(store: Store, account: Account) -> None:
    """Stored entries equal the originals, with the offsets that were sent."""
    stamps = [
        "2024-06-04T14:00:00+05:45",
        "2024-06-04T14:00:00.123456-03:30",
        "2024-06-04T14:00:00Z",
        "2001-01-01T00:00:00-12:00",
    ]
    entries = [
        backup(f"job {index}", timestamp=stamp, status=" weird ", message="ünïcödé ✓")
        for index, stamp in enumerate(stamps)
    ]
    notes = [
        notification(timestamp=stamp, severity=bmcore.Severity.CRITICAL, message=None)
        for stamp in stamps
    ]
    received = datetime(2024, 6, 4, 20, 0, 0, 1, tzinfo=timezone(timedelta(hours=-7)))
    for entry in entries:
        await store.add_backup(account.id, entry, now=received)
    for note in notes:
        await store.add_notification(account.id, note, now=received)
    stored = {item.entry.job_name: item for item in await backups_of(store, account.id)}
    for entry in entries:
        back = stored[entry.job_name]
        assert back.entry == entry
        assert back.entry.timestamp.utcoffset() == entry.timestamp.utcoffset()
        assert back.entry.timestamp.isoformat() == entry.timestamp.isoformat()
        assert bmcore.encode_backup(back.entry) == bmcore.encode_backup(entry)
        assert back.received_at == received
        assert back.received_at.utcoffset() == timedelta(hours=-7)
        assert back.account_id == account.id
    stored_notes = await notifications_of(store, account.id)
    assert sorted(bmcore.encode_notification(item.notification) for item in stored_notes) == sorted(
        bmcore.encode_notification(note) for note in notes
    )


# --- read side: order and pages -------------------------------------------------------------------


@run_async
async def test_backups_page_newest_first_each_once(store: Store, account: Account) -> None:
    """Walking small pages yields every backup once, newest first, later writes first on ties."""
    base = datetime(2024, 6, 1, tzinfo=UTC)
    written: list[tuple[datetime, int, str]] = []
    for index in range(23):
        # Every third entry shares its instant with the one before (another job).
        instant = base + timedelta(hours=index - index // 3)
        entry = attrs.evolve(backup(f"job {index % 2}"), timestamp=instant)
        result = await store.add_backup(account.id, entry, now=NOW)
        written.append((instant, index, result.id))
    expected = [entry_id for _, _, entry_id in sorted(written, reverse=True)]
    for limit in (1, 5, 23, 1000):
        assert [item.id for item in await backups_of(store, account.id, limit=limit)] == expected


@run_async
async def test_the_last_page_has_no_cursor(store: Store, account: Account) -> None:
    """A page that ends the list, even a full one, has no next cursor; an empty list is a page."""
    empty = await store.list_backups(account.id, BackupQuery(), limit=5, cursor=None)
    assert (list(empty.items), empty.next_cursor) == ([], None)
    for day in range(1, 5):
        await store.add_backup(account.id, backup(timestamp=f"2024-06-0{day}T00:00:00Z"), now=NOW)
    full = await store.list_backups(account.id, BackupQuery(), limit=4, cursor=None)
    assert (len(full.items), full.next_cursor) == (4, None)
    first = await store.list_backups(account.id, BackupQuery(), limit=3, cursor=None)
    assert first.next_cursor is not None
    rest = await store.list_backups(account.id, BackupQuery(), limit=3, cursor=first.next_cursor)
    assert (len(rest.items), rest.next_cursor) == (1, None)


@run_async
async def test_notifications_page_newest_first_each_once(store: Store, account: Account) -> None:
    """Notifications page like backups: every one once, newest timestamp first."""
    base = datetime(2024, 6, 1, tzinfo=UTC)
    written: list[tuple[datetime, int, str]] = []
    for index in range(11):
        instant = base + timedelta(minutes=(index * 7) % 5)
        note = attrs.evolve(notification(f"type_{index}"), timestamp=instant)
        result = await store.add_notification(account.id, note, now=NOW)
        written.append((instant, index, result.id))
    expected = [entry_id for _, _, entry_id in sorted(written, reverse=True)]
    assert [item.id for item in await notifications_of(store, account.id, limit=2)] == expected


@run_async
async def test_devices_and_jobs_page_newest_created_first(store: Store, account: Account) -> None:
    """Devices and jobs are listed by creation time, newest first, later creation on ties."""
    created: list[WriteResult] = []
    for index, minutes in enumerate((5, 0, 5, 9, 1)):
        entry = backup(f"job {index}", device=f"srv{index}")
        now = NOW + timedelta(minutes=minutes)
        created.append(await store.add_backup(account.id, entry, now=now))
    order = [3, 2, 0, 4, 1]  # by the minutes above, the later write first among the two 5s
    devices = await walk(lambda cursor: store.list_devices(account.id, limit=2, cursor=cursor))
    assert [device.id for device in devices] == [created[i].device_id for i in order]
    jobs = await walk(
        lambda cursor: store.list_jobs(account.id, device_name=None, limit=2, cursor=cursor)
    )
    assert [job.id for job in jobs] == [created[i].job_id for i in order]


# --- read side: filters ---------------------------------------------------------------------------


async def _filter_fixture_backups(store: Store, account_id: str) -> None:
    for label, device, job, sender, status, stamp in (
        ("e1", "srv01", "Nightly", "rsync", "Success", "2024-06-01T00:00:00Z"),
        ("e2", "SRV01", "Nightly", "rsync", "Error", "2024-06-02T00:00:00Z"),
        ("e3", "srv02", "Weekly", "robocopy", "success", "2024-06-03T00:00:00Z"),
        ("e4", "srv02", "Nightly", "robocopy", "Failed", "2024-06-04T00:00:00+02:00"),
    ):
        entry = backup(
            job, device=device, sender=sender, status=status, timestamp=stamp, message=label
        )
        await store.add_backup(account_id, entry, now=NOW)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (BackupQuery(), ["e4", "e3", "e2", "e1"]),
        (BackupQuery(device_name="srv01"), ["e2", "e1"]),
        (BackupQuery(device_name="SRV01"), ["e2", "e1"]),
        (BackupQuery(device_name="srv03"), []),
        (BackupQuery(job_name="Nightly"), ["e4", "e2", "e1"]),
        (BackupQuery(job_name="nightly"), ["e4", "e2", "e1"]),
        (BackupQuery(sender="robocopy"), ["e4", "e3"]),
        (BackupQuery(outcome="Success"), ["e3", "e1"]),
        (BackupQuery(outcome="Unknown"), ["e4"]),
        (BackupQuery(status="success"), ["e3"]),
        (BackupQuery(since=at("2024-06-02T00:00:00Z")), ["e4", "e3", "e2"]),
        (BackupQuery(until=at("2024-06-02T00:00:00Z")), ["e1"]),
        (BackupQuery(since=at("2024-06-03T23:00:00+01:00")), ["e4"]),
        (
            BackupQuery(since=at("2024-06-02T00:00:00Z"), until=at("2024-06-03T22:00:00Z")),
            ["e3", "e2"],
        ),
        (BackupQuery(job_name="Nightly", outcome="Error"), ["e2"]),
    ],
)
@run_async
async def test_backup_filters(
    store: Store, account: Account, query: BackupQuery, expected: list[str]
) -> None:
    """Each filter: names by canonical form, outcome, status, since inclusive, until exclusive."""
    await _filter_fixture_backups(store, account.id)
    found = await backups_of(store, account.id, query, limit=1)
    assert [stored.entry.message for stored in found] == expected


async def _filter_fixture_notifications(store: Store, account_id: str) -> None:
    for label, device, sender, kind, severity, job, stamp in (
        ("n1", "srv01", "disk-monitor", "disk_space_low", "warning", None, "2024-06-01T00:00Z"),
        ("n2", "srv01", "disk-monitor", "disk_space_low", "error", "Nightly", "2024-06-02T00:00Z"),
        ("n3", "srv02", "ssl-check", "ssl_expiry", "info", None, "2024-06-03T00:00Z"),
    ):
        note = notification(
            kind,
            device=device,
            sender=sender,
            job=job,
            timestamp=stamp,
            severity=bmcore.Severity(severity),
            message=label,
        )
        await store.add_notification(account_id, note, now=NOW)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (NotificationQuery(), ["n3", "n2", "n1"]),
        (NotificationQuery(device_name="srv01"), ["n2", "n1"]),
        (NotificationQuery(device_name="SRV01"), ["n2", "n1"]),
        (NotificationQuery(job_name="Nightly"), ["n2"]),
        (NotificationQuery(sender="ssl-check"), ["n3"]),
        (NotificationQuery(severity="error"), ["n2"]),
        (NotificationQuery(type="disk_space_low"), ["n2", "n1"]),
        (NotificationQuery(since=at("2024-06-02T00:00:00Z")), ["n3", "n2"]),
        (NotificationQuery(until=at("2024-06-02T00:00:00Z")), ["n1"]),
        (NotificationQuery(type="disk_space_low", severity="warning"), ["n1"]),
    ],
)
@run_async
async def test_notification_filters(
    store: Store, account: Account, query: NotificationQuery, expected: list[str]
) -> None:
    """Each notification filter, alone and combined."""
    await _filter_fixture_notifications(store, account.id)
    found = await notifications_of(store, account.id, query, limit=1)
    assert [stored.notification.message for stored in found] == expected


@run_async
async def test_list_jobs_filters_by_device_name(store: Store, account: Account) -> None:
    """list_jobs' device_name compares with the job's device name in canonical form."""
    await _filter_fixture_backups(store, account.id)

    async def job_names(device_name: str | None) -> list[tuple[str, str]]:
        page = await store.list_jobs(account.id, device_name=device_name, limit=10, cursor=None)
        return [(job.device_name, job.job_name) for job in page.items]

    assert await job_names("srv02") == [("srv02", "Nightly"), ("srv02", "Weekly")]
    assert await job_names("srv01") == [("srv01", "Nightly")]
    assert await job_names("SRV01") == [("srv01", "Nightly")]
    assert len(await job_names(None)) == 3


# --- read side: names filter by canonical form ---------------------------------------------------

# One device, one job and one sender, each spelled several ways, and entries of others beside.
_SPELLED_BACKUPS = (
    ("b1", "FiltDev", "Nightly Full", "Script-A"),
    ("b2", "filtdev", " nightly  full ", "script-a "),
    ("b3", "filt\u200bdev", "NIGHTLY\u00a0FULL", "SCRIPT-A"),
    ("b4", "other-dev", "Nightly Full", "script-a"),
    ("b5", "FILTDEV ", "Weekly", "other-sender"),
)
_SPELLED_NOTIFICATIONS = (
    ("n1", "FiltDev", None, "Mon"),
    ("n2", "filtdev ", "Nightly Full", "MON"),
    ("n3", "filt\u2060dev", "NIGHTLY FULL", "mon"),
    ("n4", "other-dev", "nightly full", "mon"),
    ("n5", "FILTDEV", "Weekly", "other-sender"),
)
_DEVICE_SPELLINGS = ["filtdev", "FiltDev", "  FILTDEV ", "filt\u200bdev", "\ufeffFiltDev"]
_JOB_SPELLINGS = ["nightly full", "NIGHTLY   FULL", " Nightly\tFull ", "Nightly\u00ad Full"]
_SENDER_SPELLINGS = ["script-a", "SCRIPT-A ", "Script\u200d-A"]


async def _spelled_entries(store: Store, account_id: str) -> None:
    for day, (label, device, job, sender) in enumerate(_SPELLED_BACKUPS, start=1):
        entry = backup(
            job, device=device, sender=sender, timestamp=f"2024-06-0{day}T00:00:00Z", message=label
        )
        await store.add_backup(account_id, entry, now=NOW)
    for day, (label, device, job_name, sender) in enumerate(_SPELLED_NOTIFICATIONS, start=1):
        note = notification(
            device=device,
            job=job_name,
            sender=sender,
            timestamp=f"2024-06-0{day}T00:00:00Z",
            message=label,
        )
        await store.add_notification(account_id, note, now=NOW)


@pytest.mark.parametrize(
    ("field", "spelling", "expected"),
    [
        *(("device_name", spelling, ["b5", "b3", "b2", "b1"]) for spelling in _DEVICE_SPELLINGS),
        *(("job_name", spelling, ["b4", "b3", "b2", "b1"]) for spelling in _JOB_SPELLINGS),
        *(("sender", spelling, ["b4", "b3", "b2", "b1"]) for spelling in _SENDER_SPELLINGS),
        ("device_name", "filt dev", []),
        ("job_name", "nightlyfull", []),
    ],
)
@run_async
async def test_backup_name_filters_compare_canonical_forms(
    store: Store, account: Account, field: str, spelling: str, expected: list[str]
) -> None:
    """Any spelling of a name (case, spaces, invisible characters) finds every entry of it."""
    await _spelled_entries(store, account.id)
    query = {
        "device_name": BackupQuery(device_name=spelling),
        "job_name": BackupQuery(job_name=spelling),
        "sender": BackupQuery(sender=spelling),
    }[field]
    found = await backups_of(store, account.id, query, limit=1)
    assert [stored.entry.message for stored in found] == expected


@run_async
async def test_backup_name_filters_combine(store: Store, account: Account) -> None:
    """Device, job and sender filters in other spellings together keep what all three match."""
    await _spelled_entries(store, account.id)
    query = BackupQuery(device_name="FILT\u200cDEV", job_name="nightly FULL", sender=" script-A")
    found = await backups_of(store, account.id, query, limit=2)
    assert [stored.entry.message for stored in found] == ["b3", "b2", "b1"]
    query = BackupQuery(device_name="filtdev", sender="OTHER-SENDER", status="Success")
    assert [stored.entry.message for stored in await backups_of(store, account.id, query)] == ["b5"]


@pytest.mark.parametrize(
    ("field", "spelling", "expected"),
    [
        *(("device_name", spelling, ["n5", "n3", "n2", "n1"]) for spelling in _DEVICE_SPELLINGS),
        *(("job_name", spelling, ["n4", "n3", "n2"]) for spelling in _JOB_SPELLINGS),
        *(
            ("sender", spelling, ["n4", "n3", "n2", "n1"])
            for spelling in ["mon", "MON ", "M\u200bon"]
        ),
    ],
)
@run_async
async def test_notification_name_filters_compare_canonical_forms(
    store: Store, account: Account, field: str, spelling: str, expected: list[str]
) -> None:
    """Any spelling of a name finds every notification of it; a job filter needs a job name."""
    await _spelled_entries(store, account.id)
    query = {
        "device_name": NotificationQuery(device_name=spelling),
        "job_name": NotificationQuery(job_name=spelling),
        "sender": NotificationQuery(sender=spelling),
    }[field]
    found = await notifications_of(store, account.id, query, limit=1)
    assert [stored.notification.message for stored in found] == expected


@run_async
async def test_notification_name_filters_combine(store: Store, account: Account) -> None:
    """Device, job and sender filters in other spellings together keep what all three match."""
    await _spelled_entries(store, account.id)
    query = NotificationQuery(device_name=" FILTDEV", job_name="Nightly Full", sender="Mon")
    found = await notifications_of(store, account.id, query, limit=1)
    assert [stored.notification.message for stored in found] == ["n3", "n2"]
    query = NotificationQuery(device_name="filtdev", sender="mon", type="disk_space_low")
    found = await notifications_of(store, account.id, query)
    assert [stored.notification.message for stored in found] == ["n3", "n2", "n1"]


@pytest.mark.parametrize("spelling", _DEVICE_SPELLINGS)
@run_async
async def test_jobs_device_filter_compares_canonical_forms(
    store: Store, account: Account, spelling: str
) -> None:
    """list_jobs finds the jobs of a device whichever spelling created them or filters them."""
    await _spelled_entries(store, account.id)
    page = await store.list_jobs(account.id, device_name=spelling, limit=1, cursor=None)
    jobs = [page.items[0]]
    while page.next_cursor is not None:
        page = await store.list_jobs(
            account.id, device_name=spelling, limit=1, cursor=page.next_cursor
        )
        jobs.extend(page.items)
    # Created at one time, so newest first is in order of creation, last first: the job of n2
    # and n3 (another sender's), of b5 and n5, of b1 to b3.
    assert [(job.sender, job.device_name, job.job_name) for job in jobs] == [
        ("MON", "filtdev ", "Nightly Full"),
        ("other-sender", "FILTDEV ", "Weekly"),
        ("Script-A", "FiltDev", "Nightly Full"),
    ]


@run_async
async def test_zero_width_characters_do_not_make_another_device(
    store: Store, account: Account
) -> None:
    """srv01 and srv<U+200B>01 are one device and one job: invisible characters do not count."""
    first = await store.add_backup(account.id, backup("Nightly", device="srv01"), now=NOW)
    again = await store.add_backup(
        account.id,
        backup("Night\u00adly", device="srv\u200b01", timestamp="2024-06-05T14:00:00+02:00"),
        now=NOW,
    )
    assert (again.device_id, again.job_id) == (first.device_id, first.job_id)
    assert (again.device_created, again.job_created) == (False, False)
    note = await store.add_notification(
        account.id, notification(device="\ufeffsrv01", sender="script-srv01"), now=NOW
    )
    assert note.device_id == first.device_id


# --- read side: jobs with their latest backup -----------------------------------------------------


@run_async
async def test_list_jobs_shows_the_latest_backup(store: Store, account: Account) -> None:
    """Each job carries its newest backup by timestamp, whatever the order of arrival."""
    newer = await store.add_backup(
        account.id, backup(timestamp="2024-06-04T14:00:00+02:00", status="Success"), now=NOW
    )
    await store.add_backup(
        account.id, backup(timestamp="2024-06-03T14:00:00+02:00", status="Error"), now=NOW
    )
    await store.add_notification(account.id, notification(job="Quiet"), now=NOW)

    async def jobs() -> dict[str, tuple[object, ...]]:
        page = await store.list_jobs(account.id, device_name=None, limit=10, cursor=None)
        return {
            job.job_name: (
                job.latest_backup_id,
                job.latest_timestamp,
                job.latest_status,
                job.latest_outcome,
            )
            for job in page.items
        }

    assert await jobs() == {
        "Nightly Full Backup": (newer.id, at("2024-06-04T14:00:00+02:00"), "Success", "Success"),
        "Quiet": (None, None, None, None),
    }
    newest = await store.add_backup(
        account.id, backup(timestamp="2024-06-05T01:00:00-05:00", status="Failed"), now=NOW
    )
    latest = (await jobs())["Nightly Full Backup"]
    assert latest == (newest.id, at("2024-06-05T01:00:00-05:00"), "Failed", "Unknown")
    assert isinstance(latest[1], datetime)
    assert latest[1].utcoffset() == timedelta(hours=-5)


# --- read side: accounts are isolated -------------------------------------------------------------


@run_async
async def test_accounts_are_isolated(store: Store, account: Account) -> None:
    """The same entries in two accounts are separate; no list shows another account's data."""
    other = await store.create_account("globex", now=NOW)
    mine = await store.add_backup(account.id, backup(), now=NOW)
    theirs = await store.add_backup(other.id, backup(), now=NOW)
    assert (theirs.duplicate, theirs.device_created, theirs.job_created) == (False, True, True)
    assert {theirs.id, theirs.device_id, theirs.job_id}.isdisjoint(
        {mine.id, mine.device_id, mine.job_id}
    )
    my_note = await store.add_notification(account.id, notification(), now=NOW)
    their_note = await store.add_notification(other.id, notification(), now=NOW)
    assert not their_note.duplicate
    for owner, written, note in ((account, mine, my_note), (other, theirs, their_note)):
        assert [item.id for item in await backups_of(store, owner.id)] == [written.id]
        assert [item.id for item in await notifications_of(store, owner.id)] == [note.id]
        devices = await store.list_devices(owner.id, limit=10, cursor=None)
        assert [device.id for device in devices.items] == [note.device_id, written.device_id]
        jobs = await store.list_jobs(owner.id, device_name=None, limit=10, cursor=None)
        assert [job.id for job in jobs.items] == [written.job_id]
        assert all(device.account_id == owner.id for device in devices.items)
        assert all(job.account_id == owner.id for job in jobs.items)
    assert await store.list_backups("acc_nope", BackupQuery(), limit=10, cursor=None) == Page(
        items=[], next_cursor=None
    )


# --- read side: refusals --------------------------------------------------------------------------


@run_async
async def test_invalid_cursors_are_refused(store: Store, account: Account) -> None:
    """Garbage, damaged, non-canonical and other lists' cursors raise InvalidCursorError."""
    for stamp in ("2024-06-01T00:00:00Z", "2024-06-02T00:00:00Z"):
        await store.add_backup(account.id, backup(timestamp=stamp), now=NOW)
        await store.add_notification(account.id, notification(timestamp=stamp), now=NOW)
        await store.add_backup(account.id, backup(device=stamp), now=NOW)
    lists = lists_of(store, account.id)
    genuine: dict[str, str] = {}
    for kind, fetch in lists.items():
        page = await fetch(None)
        assert page.next_cursor is not None
        genuine[kind] = page.next_cursor
        assert len((await fetch(page.next_cursor)).items) == 1  # a genuine cursor works
    bad = [
        "",
        "not a cursor",
        "%%%%",
        "é",
        "A" * 5000,
        encode_cursor("backups", (1, 2)) + "=",  # padded: not the one spelling
        raw_cursor("v2:backups:01:2"),  # a leading zero
        raw_cursor("v2:backups:-0:2"),  # minus zero
        raw_cursor("v2:backups:1:-2"),  # a negative rank
        raw_cursor("v2:backups:1:2:3"),
        raw_cursor("v3:backups:1:2"),  # a version this store does not know
        raw_cursor("backups:1:2"),  # the first format: (time, seq), no version
        encode_cursor("backups", (2**63, 1)),  # beyond 64 bits
        encode_cursor("backups", (1, 2**63)),
        encode_cursor("other", (1, 2)),
    ]
    for kind, fetch in lists.items():
        others = [cursor for other, cursor in genuine.items() if other != kind]
        damaged = [genuine[kind][:-1] + "!", genuine[kind][1:], genuine[kind] + "A"]
        for cursor in [*bad, *others, *damaged]:
            with pytest.raises(InvalidCursorError):
                await fetch(cursor)


@run_async
async def test_cursors_beyond_any_time(store: Store, account: Account) -> None:
    """A well-formed cursor past year 9999 continues from the top; one before year 1 ends."""
    await store.add_backup(account.id, backup(), now=NOW)
    await store.add_notification(account.id, notification(), now=NOW)
    for kind, fetch in lists_of(store, account.id).items():
        assert len((await fetch(encode_cursor(kind, (2**62, 0)))).items) == 1
        assert (await fetch(encode_cursor(kind, (-(2**62), 0)))).items == []


@run_async
async def test_a_place_needs_no_row(store: Store, account: Account) -> None:
    """Rank 0 comes before a time's rows, a rank past them after all of them, rows or not.

    Entries at 12:00 (two), 11:00 and 10:00, newest first and the later write first among
    equal times: job 1, job 0, job 2, job 3.
    """
    for index, time in enumerate(("12:00", "12:00", "11:00", "10:00")):
        entry = backup(f"job {index}", timestamp=f"2024-06-01T{time}:00Z")
        await store.add_backup(account.id, entry, now=NOW)
    twelve, eleven, half_past_ten = (
        bmcore.split_instant(at(f"2024-06-01T{time}:00Z"))[0]
        for time in ("12:00", "11:00", "10:30")
    )
    for place, expected in (
        ((twelve, 3), ["job 1", "job 0", "job 2", "job 3"]),
        ((twelve, 2), ["job 0", "job 2", "job 3"]),
        ((twelve, 1), ["job 2", "job 3"]),
        ((twelve, 0), ["job 2", "job 3"]),
        ((eleven, 2**63 - 1), ["job 2", "job 3"]),
        ((eleven, 1), ["job 3"]),
        ((eleven, 0), ["job 3"]),
        ((half_past_ten, 1), ["job 3"]),
    ):
        cursor = encode_cursor("backups", place)
        page = await store.list_backups(account.id, BackupQuery(), limit=10, cursor=cursor)
        assert [item.entry.job_name for item in page.items] == expected, place


async def _write_tied_entries(
    store: Store,
    account_id: str,
    between: Callable[[datetime], Awaitable[None]] | None = None,
) -> None:
    """Entries of every list, with ties: equal timestamps and devices created at equal times.

    ``between`` runs before each write (with the write's ``now``), to write something else.
    """
    base = datetime(2024, 6, 1, tzinfo=UTC)
    for index in range(7):
        instant = base + timedelta(hours=index // 3)  # three entries at each instant
        now = NOW + timedelta(minutes=index // 2)  # two devices and jobs created at each time
        entry = attrs.evolve(backup(f"job {index}", device=f"srv{index}"), timestamp=instant)
        note = attrs.evolve(notification(f"type_{index}", device=f"srv{index}"), timestamp=instant)
        if between is not None:
            await between(now)
        await store.add_backup(account_id, entry, now=now)
        if between is not None:
            await between(now)
        await store.add_notification(account_id, note, now=now)


async def _cursors(store: Store, account_id: str) -> dict[tuple[str, int], list[str]]:
    """Every cursor each list hands out to an account, walking it with pages of 1 and of 2."""
    cursors: dict[tuple[str, int], list[str]] = {}
    for limit in (1, 2):
        for kind, fetch in lists_of(store, account_id, limit).items():
            pages = await pages_of(fetch)
            cursors[kind, limit] = [page.next_cursor for page in pages if page.next_cursor]
    return cursors


@run_async
async def test_cursors_reveal_nothing_of_other_accounts(store: Store, account: Account) -> None:
    """An account gets the same cursors, byte for byte, whatever other accounts write meanwhile.

    Ids are random so that they reveal nothing about volumes; a cursor must not count other
    accounts' rows either (a sequence number shared by every account would). Two accounts write
    the same entries, one alone, the other with a third account writing between each of its
    writes: their cursors are equal, and each holds the time of the page's last item and a rank
    no larger than the account's own entries at that time.
    """
    await _write_tied_entries(store, account.id)
    busy = await store.create_account("busy", now=NOW)
    other = await store.create_account("other", now=NOW)
    written = 0

    async def others_write(now: datetime) -> None:
        nonlocal written
        for _ in range(3):
            written += 1
            name = f"other {written}"
            entry = backup(name, device=name, timestamp="2024-06-01T01:00:00Z")
            await store.add_backup(other.id, entry, now=now)
            note = notification(name, device=name, timestamp="2024-06-01T01:00:00Z")
            await store.add_notification(other.id, note, now=now)

    await _write_tied_entries(store, busy.id, between=others_write)
    alone = await _cursors(store, account.id)
    interleaved = await _cursors(store, busy.id)
    assert interleaved == alone
    # 7 backups, 7 notifications, 14 devices (a backup's sender is not a notification's), 7 jobs
    assert [len(alone[kind, 1]) for kind in lists_of(store, account.id)] == [6, 6, 13, 6]
    # The account's own rows at one time: 3 entries, or 2 jobs, or 4 devices (2 writes of 2).
    most = {"backups": 3, "notifications": 3, "devices": 4, "jobs": 2}
    for kind, count in most.items():
        ranks = {decode_cursor(kind, cursor)[1] for cursor in alone[kind, 1]}
        assert ranks == set(range(1, count + 1)), kind


@run_async
async def test_another_account_s_cursor_is_a_place_in_one_s_own_list(
    store: Store, account: Account
) -> None:
    """A cursor of another account yields the caller's own entries after its place, no others.

    A cursor holds a place (a time, and a rank among equal times), not an entry: given to
    another account it is a place in that account's own list, exactly as a cursor of its own at
    the same place, and the answer depends on nothing but that account's entries.
    """
    other = await store.create_account("globex", now=NOW)
    for owner, entries in (
        (account, (("a", "10:00"), ("b", "09:00"), ("c", "09:00"), ("d", "08:00"))),
        (other, (("x", "09:30"), ("y", "09:00"), ("z", "07:00"))),
    ):
        for job, time in entries:
            await store.add_backup(owner.id, backup(job, timestamp=f"2024-06-01T{time}Z"), now=NOW)

    async def jobs_after(owner: Account, cursor: str) -> list[str]:
        jobs: list[str] = []
        next_cursor: str | None = cursor
        while next_cursor is not None:
            page = await store.list_backups(owner.id, BackupQuery(), limit=1, cursor=next_cursor)
            jobs.extend(item.entry.job_name for item in page.items)
            next_cursor = page.next_cursor
        return jobs

    mine = await pages_of(
        lambda cursor: store.list_backups(account.id, BackupQuery(), limit=1, cursor=cursor)
    )
    cursors = [page.next_cursor for page in mine if page.next_cursor]
    # a: (10:00, 1); c: (09:00, 2); b: (09:00, 1); the later write first among equal times.
    assert [page.items[0].entry.job_name for page in mine] == ["a", "c", "b", "d"]
    assert [await jobs_after(account, cursor) for cursor in cursors] == [
        ["c", "b", "d"],
        ["b", "d"],
        ["d"],
    ]
    assert [await jobs_after(other, cursor) for cursor in cursors] == [
        ["x", "y", "z"],  # after 10:00
        ["y", "z"],  # after the second entry at 09:00: globex's only one at 09:00 follows
        ["z"],  # after the first entry at 09:00
    ]


@run_async
async def test_first_format_cursors_are_refused(store: Store, account: Account) -> None:
    """A cursor of the first format, (time, seq) without a version, is InvalidCursorError.

    A server upgraded while clients page may receive one: it is refused (400 over HTTP, "start
    again without a cursor"), never misread as a place nor answered with a server error.
    """
    await _write_tied_entries(store, account.id)
    for kind, fetch in lists_of(store, account.id).items():
        first = await fetch(None)
        assert first.next_cursor is not None
        time_us, _ = decode_cursor(kind, first.next_cursor)
        for seq in (0, 1, 2, 3, 14, 2**63 - 1):
            with pytest.raises(InvalidCursorError):
                await fetch(raw_cursor(f"{kind}:{time_us}:{seq}"))


def test_cursor_round_trip() -> None:
    """decode_cursor inverts encode_cursor, negative times included."""
    for key in ((0, 0), (-(2**63), 2**63 - 1), (1_717_502_400_000_000, 42)):
        assert decode_cursor("jobs", encode_cursor("jobs", key)) == key


@pytest.mark.parametrize("limit", [0, -1, 1001])
@run_async
async def test_limits_out_of_range_are_refused(store: Store, account: Account, limit: int) -> None:
    """A page size outside 1..1000 is a programming error: ValueError from every list."""
    for fetch in lists_of(store, account.id, limit).values():
        with pytest.raises(ValueError, match="limit"):
            await fetch(None)


# --- both stores give the same answers ------------------------------------------------------------

# Small pools, so that random scripts are full of repeats, clashes and near-misses in matching.
_SENDERS = ("script-a", "Script-A ", "other")
_DEVICES = ("srv01", "SRV01", "srv02", "srv\u200b02")
_JOBS = ("Nightly", " nightly", "Weekly")
# The first two are the same instant at other offsets.
_STAMPS = (
    "2024-06-04T12:00:00Z",
    "2024-06-04T14:00:00+02:00",
    "2024-06-04T13:00:00Z",
    "2024-06-03T23:30:00-01:00",
)
_NOWS = (NOW, NOW + timedelta(minutes=1), (NOW - timedelta(hours=1)).astimezone(UTC))

_backups = st.builds(
    backup,
    st.sampled_from(_JOBS),
    device=st.sampled_from(_DEVICES),
    sender=st.sampled_from(_SENDERS),
    timestamp=st.sampled_from(_STAMPS),
    status=st.sampled_from(("Success", "Error", "weird")),
    message=st.sampled_from(("ok", "failed")),
)
_notifications = st.builds(
    notification,
    st.sampled_from(("disk_space_low", "ssl_expiry")),
    device=st.sampled_from(_DEVICES),
    sender=st.sampled_from(_SENDERS),
    job=st.none() | st.sampled_from(_JOBS),
    timestamp=st.sampled_from(_STAMPS),
    severity=st.sampled_from(bmcore.Severity),
    message=st.sampled_from((None, "ok")),
)
_Operation = tuple[int, bmcore.BackupEntry | bmcore.Notification, datetime]
_operations = st.tuples(
    st.integers(0, 1), st.one_of(_backups, _notifications), st.sampled_from(_NOWS)
)


def _variants(operation: _Operation) -> st.SearchStrategy[_Operation]:
    """The operation itself, or near-misses: other content or other spelling, same key."""
    index, entry, _ = operation
    if isinstance(entry, bmcore.BackupEntry):
        changed: list[bmcore.BackupEntry | bmcore.Notification] = [
            attrs.evolve(entry, status="Error"),
            attrs.evolve(entry, job_name=entry.job_name.upper()),
        ]
    else:
        changed = [
            attrs.evolve(entry, message="other"),
            attrs.evolve(entry, device_name=entry.device_name.upper()),
        ]
    return st.one_of(
        st.just(operation),
        st.tuples(st.just(index), st.sampled_from(changed), st.sampled_from(_NOWS)),
    )


# Draw a few distinct operations, then a script of them and their variants in any order.
_scripts = st.lists(_operations, min_size=1, max_size=8).flatmap(
    lambda base: st.lists(st.sampled_from(base).flatmap(_variants), min_size=1, max_size=25)
)

_ID = re.compile(r"(acc|key|dev|job|bk|nt)_[0-9a-f]{16}")
_RECORDS = (
    Account,
    WriteResult,
    DeviceRecord,
    JobRecord,
    StoredBackup,
    StoredNotification,
    bmcore.BackupEntry,
    bmcore.Notification,
)


def _canonical(value: object, names: dict[str, str]) -> object:
    """A comparable form: ids renamed in order of appearance, datetimes with their offsets."""
    if isinstance(value, str) and _ID.fullmatch(value):
        return names.setdefault(value, f"{value.split('_')[0]}#{len(names)}")
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, _RECORDS):
        fields = attrs.asdict(value, recurse=False)
        return (
            type(value).__name__,
            {key: _canonical(item, names) for key, item in fields.items()},
        )
    if isinstance(value, (list, tuple)):
        return [_canonical(item, names) for item in cast("Sequence[object]", value)]
    return value


async def _replay(store: Store, script: list[_Operation]) -> object:
    """Run a script of writes, then list everything; the transcript in canonical form."""
    await store.open()
    try:
        accounts = [await store.create_account(name, now=NOW) for name in ("a", "b")]
        transcript: list[object] = [accounts]
        for index, entry, now in script:
            account_id = accounts[index].id
            try:
                if isinstance(entry, bmcore.BackupEntry):
                    transcript.append(await store.add_backup(account_id, entry, now=now))
                else:
                    transcript.append(await store.add_notification(account_id, entry, now=now))
            except ConflictError as conflict:
                transcript.append(("conflict", conflict.existing_id))
        for owner in accounts:
            # Pages with their cursors: a cursor is made of the account's own data only, so
            # every store hands out the same ones.
            for fetch in [*lists_of(store, owner.id, 3).values(), *_filtered(store, owner.id, 2)]:
                pages = await pages_of(fetch)
                transcript.append([(page.items, page.next_cursor) for page in pages])
    finally:
        await store.close()
    return _canonical(transcript, {})


def _filtered(
    store: Store, account_id: str, limit: int
) -> list[Callable[[str | None], Awaitable[Page[object]]]]:
    """Lists filtered by names spelled unlike those sent, each as a function of the cursor."""
    backup_queries = [
        BackupQuery(device_name=" Srv01"),
        BackupQuery(job_name="NIGHTLY", sender="script-a"),
        BackupQuery(device_name="SRV02", job_name="weekly"),
    ]
    notification_queries = [
        NotificationQuery(device_name="srv\u200c02"),
        NotificationQuery(job_name="nightly "),
        NotificationQuery(sender="SCRIPT-A", device_name="srv01"),
    ]

    def backups(query: BackupQuery) -> Callable[[str | None], Awaitable[Page[object]]]:
        async def fetch(cursor: str | None) -> Page[object]:
            page = await store.list_backups(account_id, query, limit=limit, cursor=cursor)
            return Page(items=list(page.items), next_cursor=page.next_cursor)

        return fetch

    def notifications(query: NotificationQuery) -> Callable[[str | None], Awaitable[Page[object]]]:
        async def fetch(cursor: str | None) -> Page[object]:
            page = await store.list_notifications(account_id, query, limit=limit, cursor=cursor)
            return Page(items=list(page.items), next_cursor=page.next_cursor)

        return fetch

    async def jobs(cursor: str | None) -> Page[object]:
        page = await store.list_jobs(account_id, device_name="SRV02 ", limit=limit, cursor=cursor)
        return Page(items=list(page.items), next_cursor=page.next_cursor)

    return [
        *map(backups, backup_queries),
        *map(notifications, notification_queries),
        jobs,
    ]


@given(script=_scripts)
def test_both_stores_answer_alike(script: list[_Operation]) -> None:
    """The same writes give the same results, conflicts and listings in MemoryStore and SQLite."""
    expected = asyncio.run(_replay(MemoryStore(), script))
    with tempfile.TemporaryDirectory() as directory:
        actual = asyncio.run(_replay(SqliteStore(Path(directory) / "bm.sqlite3"), script))
    assert actual == expected


# The schema is the test's, emptied after each example: creating one per example would cost
# more than the example.
# At most 200 examples even in the ci profile: each is a few dozen round trips to PostgreSQL,
# and CI runs the suite on three Pythons.
@settings(
    max_examples=min(200, settings().max_examples),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(script=_scripts)
def test_postgres_answers_like_memory(
    postgres_url: str, postgres_schema: str, script: list[_Operation]
) -> None:
    """The same writes give the same answers and listings in MemoryStore and PostgreSQL."""
    from _postgres_tables import empty_schema  # noqa: PLC0415 - psycopg is an optional extra

    from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415

    expected = asyncio.run(_replay(MemoryStore(), script))
    try:
        actual = asyncio.run(_replay(PostgresStore(postgres_url, schema=postgres_schema), script))
    finally:
        empty_schema(postgres_url, postgres_schema)
    assert actual == expected


@run_async
async def test_get_entry_by_id_within_its_account(store: Store, account: Account) -> None:
    """get_backup/get_notification find an entry by id, only in its own account."""
    other = await store.create_account("other", now=NOW)
    stored = await store.add_backup(account.id, backup(), now=NOW)
    noted = await store.add_notification(account.id, notification(), now=NOW)
    found = await store.get_backup(account.id, stored.id)
    assert found is not None
    assert (found.id, found.entry) == (stored.id, backup())
    seen = await store.get_notification(account.id, noted.id)
    assert seen is not None
    assert seen.notification == notification()
    assert await store.get_backup(other.id, stored.id) is None
    assert await store.get_notification(other.id, noted.id) is None
    assert await store.get_backup(account.id, noted.id) is None
    assert await store.get_notification(account.id, "nt_unknown") is None
