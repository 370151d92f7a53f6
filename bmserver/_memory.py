"""The in-memory store, and the pure helpers that every store shares.

:class:`MemoryStore` backs the tests and the ``bm_fake_ingest`` fixture. It is the reference
implementation of the :class:`~bmserver.Store` contract: ``tests/server/test_store_contract.py``
runs one suite against it, :class:`~bmserver.SqliteStore` and ``PostgresStore``, and hypothesis
tests check that the same writes give the same answers and the same listings in each.

The helpers below (ids, timestamps split into UTC microseconds and an offset, content hashes,
the idempotency facts of an entry, cursors, filters on time and on names) are used by every
store, so that they cannot drift apart on what "the same entry", "the next page" or "this
device's entries" means.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import secrets
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta, timezone
from typing import Final, Generic, Self, TypeVar

import attrs

import bmcore
from bmserver._store import (
    Account,
    ApiKeyRecord,
    BackupQuery,
    ConflictError,
    DeviceRecord,
    InvalidCursorError,
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

__all__ = [
    "MAX_LIMIT",
    "EntryFacts",
    "MemoryStore",
    "NameFilter",
    "TimeWindow",
    "backup_facts",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
    "join_datetime",
    "new_id",
    "notification_facts",
    "split_datetime",
]

R = TypeVar("R")

#: The largest page a list may ask for.
MAX_LIMIT: Final = 1000

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_MINUTE: Final = timedelta(minutes=1)


# --- helpers shared by the stores -------------------------------------------------------------


def new_id(kind: str) -> str:
    """A new opaque id such as ``bk_3f9c0a1b2c3d4e5f``: 64 random bits after a readable kind.

    Random rather than sequential, so that ids reveal nothing about volumes and cannot be
    enumerated; the kind makes a stray id in a log or a bug report self-explanatory.
    """
    return f"{kind}_{secrets.token_hex(8)}"


def split_datetime(moment: datetime) -> tuple[int, int]:
    """An aware datetime as (microseconds since the epoch in UTC, UTC offset in minutes).

    Integer microseconds are exact (a datetime has no finer resolution) and sort like the
    instants they stand for. Raises ValueError for a naive datetime or an offset that is not a
    whole number of minutes (ISO 8601 offsets never are).
    """
    offset = moment.utcoffset()
    if offset is None:
        msg = f"expected an aware datetime, got {moment!r}"
        raise ValueError(msg)
    if offset % _MINUTE:
        msg = f"the UTC offset of {moment!r} is not a whole number of minutes"
        raise ValueError(msg)
    return (moment - _EPOCH) // _MICROSECOND, offset // _MINUTE


def join_datetime(utc_us: int, offset_minutes: int) -> datetime:
    """The inverse of :func:`split_datetime`: the instant, shown at its original offset."""
    zone = timezone(timedelta(minutes=offset_minutes))
    return (_EPOCH + timedelta(microseconds=utc_us)).astimezone(zone)


def _normalized(moment: datetime) -> datetime:
    # What a round trip through storage gives back: the same instant and offset, with a fixed
    # timezone (a ZoneInfo passed in does not survive storage, so it must not survive here).
    return join_datetime(*split_datetime(moment))


J = TypeVar("J", str, str | None)


@attrs.frozen(kw_only=True)
class EntryFacts(Generic[J]):
    """What storing an entry needs besides the entry: its instant and idempotency facts."""

    ts_us: int
    ts_offset: int
    #: SHA-256 of the entry's canonical wire JSON: equal hashes mean identical content.
    content_hash: bytes
    device_digest: str
    #: A backup always names its job; a notification only when it has a job name.
    job_digest: J
    #: (sender, device name, job name) in canonical form (bmcore.canonical_name): the SQL
    #: stores keep them in the entry's row and in a new device's or job's, for name filters.
    name_keys: tuple[str, str, J]


def backup_facts(entry: bmcore.BackupEntry) -> EntryFacts[str]:
    """The facts of a backup entry."""
    ts_us, ts_offset = split_datetime(entry.timestamp)
    key = bmcore.JobKey.of(entry.sender, entry.device_name, entry.job_name)
    return EntryFacts(
        ts_us=ts_us,
        ts_offset=ts_offset,
        content_hash=hashlib.sha256(bmcore.encode_backup(entry)).digest(),
        device_digest=key.device.digest,
        job_digest=key.digest,
        name_keys=(key.sender, key.device_name, key.job_name),
    )


def notification_facts(notification: bmcore.Notification) -> EntryFacts[str | None]:
    """The facts of a notification."""
    ts_us, ts_offset = split_datetime(notification.timestamp)
    device = bmcore.DeviceKey.of(notification.sender, notification.device_name)
    job_name = notification.job_name
    job = (
        None if job_name is None else bmcore.JobKey.of(device.sender, device.device_name, job_name)
    )
    return EntryFacts(
        ts_us=ts_us,
        ts_offset=ts_offset,
        content_hash=hashlib.sha256(bmcore.encode_notification(notification)).digest(),
        device_digest=device.digest,
        job_digest=None if job is None else job.digest,
        name_keys=(device.sender, device.device_name, None if job is None else job.job_name),
    )


@attrs.frozen
class NameFilter:
    """A query's name filters in canonical form: names filter as reports are matched.

    A device sent as ``FiltDev`` and as ``filtdev `` is one device, so a filter of either
    spelling finds the entries of both. None means no filter. The SQL stores compare the
    canonical names that every row keeps beside the names as sent (``sender_key``,
    ``device_name_key``, ``job_name_key``); the memory store canonicalises the names of each
    entry (:meth:`matches`).
    """

    sender: str | None
    device_name: str | None
    job_name: str | None

    @classmethod
    def of(cls, *, sender: str | None, device_name: str | None, job_name: str | None) -> Self:
        """The filters of the names as a client sent them."""
        return cls(_canonical(sender), _canonical(device_name), _canonical(job_name))

    def matches(self, sender: str, device_name: str, job_name: str | None) -> bool:
        """Whether names as an entry sent them pass every filter."""
        return (
            (self.sender is None or bmcore.canonical_name(sender) == self.sender)
            and (self.device_name is None or bmcore.canonical_name(device_name) == self.device_name)
            and (
                self.job_name is None
                or (job_name is not None and bmcore.canonical_name(job_name) == self.job_name)
            )
        )


def _canonical(name: str | None) -> str | None:
    return None if name is None else bmcore.canonical_name(name)


@attrs.frozen
class TimeWindow:
    """The ``since`` (inclusive) and ``until`` (exclusive) filters, in UTC microseconds."""

    since_us: int | None
    until_us: int | None

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None) -> TimeWindow:
        """The window of a query; ValueError for a naive bound."""
        return cls(
            None if since is None else split_datetime(since)[0],
            None if until is None else split_datetime(until)[0],
        )

    def __contains__(self, utc_us: int) -> bool:
        return (self.since_us is None or utc_us >= self.since_us) and (
            self.until_us is None or utc_us < self.until_us
        )


def check_limit(limit: int) -> None:
    """Refuse a page size outside 1..MAX_LIMIT (the HTTP layer checks it first)."""
    if not 1 <= limit <= MAX_LIMIT:
        msg = f"limit must be between 1 and {MAX_LIMIT}, got {limit}"
        raise ValueError(msg)


# Cursors are versioned: "v2" holds a place (time, rank). The first version, untagged, held
# (time, seq), a sequence shared by every account; such a cursor no longer matches, so it is an
# InvalidCursorError (400), never misread as a place.
_CURSOR: Final = re.compile(r"v2:(?P<kind>[a-z]+):(?P<time>-?[0-9]{1,19}):(?P<rank>[0-9]{1,19})")
_INT64: Final = range(-(2**63), 2**63)
# A real cursor is about 40 characters; anything much longer is not ours, decode nothing.
_MAX_CURSOR_LENGTH: Final = 100


def encode_cursor(kind: str, place: tuple[int, int]) -> str:
    """The opaque cursor after the item at ``place`` in one account's list ``kind``.

    A list is ordered by (timestamp or creation time in UTC microseconds, insertion order),
    newest first. An item's place is (its time, its rank): the rank counts, from 1 in order of
    insertion, the items of the same account in that list with exactly that time, the item
    included. The place is unique within the account and ordered like the items, and it is made
    of the account's own data only: a store's insertion sequence is shared by every account, so
    a cursor holding it would tell an account how much the others wrote in between (the reason
    ids are random, see :func:`new_id`). The cursor is the place, tagged with the cursor's
    version and the list, in unpadded base64url: opaque to clients, safe in a URL.
    """
    utc_us, rank = place
    raw = f"v2:{kind}:{utc_us:d}:{rank:d}".encode("ascii")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(kind: str, cursor: str) -> tuple[int, int]:
    """The place of a cursor of the list ``kind``; InvalidCursorError for anything else.

    Only the exact text :func:`encode_cursor` produces is accepted, so that a cursor has one
    spelling, and a cursor of another list (devices given to backups) or of the previous format
    is refused. A place needs no item to be there: the next page is whatever of the caller's own
    list comes after it, so a cursor of another account is just a place in the caller's list,
    and its answer depends on nothing but the caller's data and the cursor's own text.
    """
    invalid = InvalidCursorError(f"not a cursor of this list: {cursor[:_MAX_CURSOR_LENGTH]!r}")
    if len(cursor) > _MAX_CURSOR_LENGTH:
        raise invalid
    try:
        padded = (cursor + "=" * (-len(cursor) % 4)).encode("ascii")
        raw = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except ValueError:  # binascii.Error and the Unicode errors are all ValueErrors
        raise invalid from None
    match = _CURSOR.fullmatch(raw)
    if match is None or match["kind"] != kind:
        raise invalid
    place = int(match["time"]), int(match["rank"])
    # int64 only (what SQLite can bind), and one spelling only ("-0", "007" are refused).
    if place[0] not in _INT64 or place[1] not in _INT64 or encode_cursor(kind, place) != cursor:
        raise invalid
    return place


# --- the in-memory store ----------------------------------------------------------------------


@attrs.define
class _Row(Generic[R]):
    """A record with its sort key (primary time in UTC microseconds, insertion sequence)."""

    key: tuple[int, int]
    record: R
    content_hash: bytes = b""


def _ranked(rows: Iterable[_Row[R]]) -> list[tuple[tuple[int, int], _Row[R]]]:
    """One account's rows of one list with their places (time, rank among equal times).

    Ranked over all of the account's rows, before any filter, as the SQL stores count them, so
    that a place means the same in every store and in every filtered view of the list.
    """
    ranked: list[tuple[tuple[int, int], _Row[R]]] = []
    for row in sorted(rows, key=lambda row: row.key):
        tied = bool(ranked) and ranked[-1][0][0] == row.key[0]
        rank = ranked[-1][0][1] + 1 if tied else 1
        ranked.append(((row.key[0], rank), row))
    return ranked


def _page(
    ranked: Iterable[tuple[tuple[int, int], _Row[R]]],
    kind: str,
    limit: int,
    after: tuple[int, int] | None,
) -> Page[R]:
    # Keyset pagination, newest first: everything strictly after the cursor's place. Within
    # one account, places are in the same order as the sort keys (time, seq).
    candidates = sorted(
        (item for item in ranked if after is None or item[0] < after),
        key=lambda item: item[0],
        reverse=True,
    )
    items = candidates[:limit]
    more = len(candidates) > limit
    return Page(
        items=[row.record for _, row in items],
        next_cursor=encode_cursor(kind, items[-1][0]) if more else None,
    )


def _cursor_place(kind: str, limit: int, cursor: str | None) -> tuple[int, int] | None:
    check_limit(limit)
    return None if cursor is None else decode_cursor(kind, cursor)


class MemoryStore:
    """A :class:`~bmserver.Store` in memory: for tests and the ``bm_fake_ingest`` fixture.

    Every method changes or copies its state under one ``threading.Lock`` and never awaits,
    so the store may be created in one thread and used from an event loop in another (the
    fixture's server thread) while the test thread reads or calls :meth:`reset`. Lists copy
    the rows under the lock and filter and sort outside it, so that a reader polling in a
    tight loop cannot starve the writers of the lock. It holds nothing to release:
    it works before :meth:`open` and after :meth:`close`, so one store can outlive several
    servers, and :meth:`reset` between tests is cheap.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One sequence for every table: only the order within one table matters. Shared by
        # every account, it never leaves the store (cursors hold places; see encode_cursor).
        self._seq = itertools.count(1)
        self._accounts: dict[str, Account] = {}
        self._account_ids_by_name: dict[str, str] = {}
        self._keys: list[_Row[ApiKeyRecord]] = []
        self._keys_by_hash: dict[str, _Row[ApiKeyRecord]] = {}
        self._forget_entries()

    def _forget_entries(self) -> None:
        self._devices: dict[tuple[str, str], _Row[DeviceRecord]] = {}
        self._jobs: dict[tuple[str, str], _Row[JobRecord]] = {}
        self._backups: dict[tuple[str, int], _Row[StoredBackup]] = {}  # by (job id, ts_us)
        self._latest: dict[str, _Row[StoredBackup]] = {}  # job id -> its newest backup
        self._notifications: dict[tuple[str, bytes], _Row[StoredNotification]] = {}

    def reset(self) -> None:
        """Forget every entry, device and job; keep the accounts and their keys."""
        with self._lock:
            self._forget_entries()

    def clear(self) -> None:
        """Forget everything, accounts and keys included."""
        with self._lock:
            self._accounts.clear()
            self._account_ids_by_name.clear()
            self._keys.clear()
            self._keys_by_hash.clear()
            self._forget_entries()

    async def open(self) -> None:
        """Nothing to do: the store is usable as soon as it is created."""

    async def close(self) -> None:
        """Nothing to do: every write is complete when its coroutine returns."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- accounts and keys --------------------------------------------------------------------

    async def create_account(self, name: str, *, now: datetime) -> Account:
        """Create an account (names are unique; an existing name returns that account)."""
        created_at = _normalized(now)
        with self._lock:
            existing = self._account_ids_by_name.get(name)
            if existing is not None:
                return self._accounts[existing]
            account = Account(id=new_id("acc"), name=name, created_at=created_at)
            self._accounts[account.id] = account
            self._account_ids_by_name[name] = account.id
            return account

    async def count_accounts(self) -> int:
        """How many accounts exist (0 on a new store)."""
        with self._lock:
            return len(self._accounts)

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
        created_at = _normalized(now)
        with self._lock:
            self._require_account(account_id)
            if key_hash in self._keys_by_hash:
                raise StoreError("a key with this hash is already stored")
            record = ApiKeyRecord(
                id=new_id("key"),
                account_id=account_id,
                key_hash=key_hash,
                prefix=prefix,
                scopes=scopes,
                created_at=created_at,
            )
            row = _Row((split_datetime(now)[0], next(self._seq)), record)
            self._keys.append(row)
            self._keys_by_hash[key_hash] = row
            return record

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The unrevoked key with this hash, or None."""
        with self._lock:
            row = self._keys_by_hash.get(key_hash)
        if row is None or row.record.revoked_at is not None:
            return None
        return row.record

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        with self._lock:
            return [row.record for row in sorted(self._keys, key=lambda row: row.key)]

    async def revoke_api_key(self, prefix: str, *, now: datetime) -> ApiKeyRecord:
        """Revoke the unrevoked keys with this display prefix and return the oldest of them.

        A prefix is 8 random characters, so two keys share one only by a rare accident; both
        are then revoked rather than guessing which one the operator meant.
        """
        revoked_at = _normalized(now)
        with self._lock:
            matching = sorted(
                (row for row in self._keys if row.record.prefix == prefix),
                key=lambda row: row.key,
            )
            revoked: list[ApiKeyRecord] = []
            for row in matching:
                if row.record.revoked_at is None:
                    row.record = attrs.evolve(row.record, revoked_at=revoked_at)
                    revoked.append(row.record)
            if not revoked:
                raise UnknownKeyError(f"no active key has the prefix {prefix!r}")
            return revoked[0]

    def _require_account(self, account_id: str) -> None:
        if account_id not in self._accounts:
            raise StoreError(f"unknown account {account_id!r}")

    # --- entries ------------------------------------------------------------------------------

    async def add_backup(
        self, account_id: str, entry: bmcore.BackupEntry, *, now: datetime
    ) -> WriteResult:
        """Store a backup, or recognise an idempotent repeat; ConflictError on a clash."""
        facts = backup_facts(entry)
        received_at = _normalized(now)
        with self._lock:
            self._require_account(account_id)
            job = self._jobs.get((account_id, facts.job_digest))
            if job is not None:
                existing = self._backups.get((job.record.id, facts.ts_us))
                if existing is not None:
                    if existing.content_hash != facts.content_hash:
                        raise ConflictError(existing.record.id)
                    return _duplicate(existing.record, existing.record.job_id)
            device, device_created = self._device(account_id, entry, facts, received_at)
            names = (entry.sender, entry.device_name, entry.job_name)
            job, job_created = self._job(device.record, names, facts.job_digest, received_at)
            stored = StoredBackup(
                id=new_id("bk"),
                account_id=account_id,
                device_id=device.record.id,
                job_id=job.record.id,
                entry=attrs.evolve(entry, timestamp=join_datetime(facts.ts_us, facts.ts_offset)),
                received_at=received_at,
            )
            row = _Row((facts.ts_us, next(self._seq)), stored, facts.content_hash)
            self._backups[job.record.id, facts.ts_us] = row
            latest = self._latest.get(job.record.id)
            if latest is None or latest.key < row.key:
                self._latest[job.record.id] = row
            return WriteResult(
                id=stored.id,
                received_at=received_at,
                device_id=device.record.id,
                device_created=device_created,
                job_id=job.record.id,
                job_created=job_created,
                duplicate=False,
            )

    async def add_notification(
        self, account_id: str, notification: bmcore.Notification, *, now: datetime
    ) -> WriteResult:
        """Store a notification, or recognise an identical one as an idempotent repeat."""
        facts = notification_facts(notification)
        received_at = _normalized(now)
        with self._lock:
            self._require_account(account_id)
            existing = self._notifications.get((account_id, facts.content_hash))
            if existing is not None:
                return _duplicate(existing.record, existing.record.job_id)
            device, device_created = self._device(account_id, notification, facts, received_at)
            job_id: str | None = None
            job_created = False
            if notification.job_name is not None and facts.job_digest is not None:
                names = (notification.sender, notification.device_name, notification.job_name)
                job, job_created = self._job(device.record, names, facts.job_digest, received_at)
                job_id = job.record.id
            stored = StoredNotification(
                id=new_id("nt"),
                account_id=account_id,
                device_id=device.record.id,
                job_id=job_id,
                notification=attrs.evolve(
                    notification, timestamp=join_datetime(facts.ts_us, facts.ts_offset)
                ),
                received_at=received_at,
            )
            self._notifications[account_id, facts.content_hash] = _Row(
                (facts.ts_us, next(self._seq)), stored, facts.content_hash
            )
            return WriteResult(
                id=stored.id,
                received_at=received_at,
                device_id=device.record.id,
                device_created=device_created,
                job_id=job_id,
                job_created=job_created,
                duplicate=False,
            )

    def _device(
        self,
        account_id: str,
        entry: bmcore.BackupEntry | bmcore.Notification,
        facts: EntryFacts[str] | EntryFacts[str | None],
        now: datetime,
    ) -> tuple[_Row[DeviceRecord], bool]:
        """The matched device, created if new; a new entry also counts as a sign of life."""
        device = self._devices.get((account_id, facts.device_digest))
        if device is None:
            record = DeviceRecord(
                id=new_id("dev"),
                account_id=account_id,
                sender=entry.sender,
                device_name=entry.device_name,
                created_at=now,
                last_seen_at=now,
            )
            device = _Row((split_datetime(now)[0], next(self._seq)), record)
            self._devices[account_id, facts.device_digest] = device
            return device, True
        if now > device.record.last_seen_at:  # never back in time when clocks disagree
            device.record = attrs.evolve(device.record, last_seen_at=now)
        return device, False

    def _job(
        self, device: DeviceRecord, names: tuple[str, str, str], digest: str, now: datetime
    ) -> tuple[_Row[JobRecord], bool]:
        """The matched job, created if new, with the display names as this entry sent them."""
        job = self._jobs.get((device.account_id, digest))
        if job is not None:
            return job, False
        sender, device_name, job_name = names
        record = JobRecord(
            id=new_id("job"),
            account_id=device.account_id,
            device_id=device.id,
            sender=sender,
            device_name=device_name,
            job_name=job_name,
            created_at=now,
            latest_backup_id=None,
            latest_timestamp=None,
            latest_status=None,
            latest_outcome=None,
        )
        job = _Row((split_datetime(now)[0], next(self._seq)), record)
        self._jobs[device.account_id, digest] = job
        return job, True

    # --- read side ----------------------------------------------------------------------------

    async def list_devices(
        self, account_id: str, *, limit: int, cursor: str | None
    ) -> Page[DeviceRecord]:
        """Devices of one account, newest first."""
        after = _cursor_place("devices", limit, cursor)
        with self._lock:
            snapshot = list(self._devices.values())
        ranked = _ranked(row for row in snapshot if row.record.account_id == account_id)
        return _page(ranked, "devices", limit, after)

    async def list_jobs(
        self, account_id: str, *, device_name: str | None, limit: int, cursor: str | None
    ) -> Page[JobRecord]:
        """Jobs of one account with their latest backup, newest first."""
        after = _cursor_place("jobs", limit, cursor)
        names = NameFilter.of(sender=None, device_name=device_name, job_name=None)
        with self._lock:
            snapshot = list(self._jobs.values())
            latest = dict(self._latest)
        ranked = [
            (place, _Row(row.key, _with_latest(row.record, latest.get(row.record.id))))
            for place, row in _ranked(
                row for row in snapshot if row.record.account_id == account_id
            )
            if names.matches(row.record.sender, row.record.device_name, row.record.job_name)
        ]
        return _page(ranked, "jobs", limit, after)

    async def get_backup(self, account_id: str, entry_id: str) -> StoredBackup | None:
        """One backup of the account by id, or None."""
        with self._lock:
            found = [row.record for row in self._backups.values() if row.record.id == entry_id]
        return next((item for item in found if item.account_id == account_id), None)

    async def get_notification(self, account_id: str, entry_id: str) -> StoredNotification | None:
        """One notification of the account by id, or None."""
        with self._lock:
            found = [
                row.record for row in self._notifications.values() if row.record.id == entry_id
            ]
        return next((item for item in found if item.account_id == account_id), None)

    async def list_backups(
        self, account_id: str, query: BackupQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredBackup]:
        """Backups of one account, newest timestamp first."""
        after = _cursor_place("backups", limit, cursor)
        window = TimeWindow.of(query.since, query.until)
        matches = _backup_filter(query)
        with self._lock:
            snapshot = list(self._backups.values())
        ranked = [
            (place, row)
            for place, row in _ranked(
                row for row in snapshot if row.record.account_id == account_id
            )
            if row.key[0] in window and matches(row.record.entry)
        ]
        return _page(ranked, "backups", limit, after)

    async def list_notifications(
        self, account_id: str, query: NotificationQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredNotification]:
        """Notifications of one account, newest timestamp first."""
        after = _cursor_place("notifications", limit, cursor)
        window = TimeWindow.of(query.since, query.until)
        matches = _notification_filter(query)
        with self._lock:
            snapshot = list(self._notifications.values())
        ranked = [
            (place, row)
            for place, row in _ranked(
                row for row in snapshot if row.record.account_id == account_id
            )
            if row.key[0] in window and matches(row.record.notification)
        ]
        return _page(ranked, "notifications", limit, after)


def _with_latest(job: JobRecord, latest: _Row[StoredBackup] | None) -> JobRecord:
    """A job with its newest backup filled in."""
    if latest is None:
        return job
    entry = latest.record.entry
    return attrs.evolve(
        job,
        latest_backup_id=latest.record.id,
        latest_timestamp=entry.timestamp,
        latest_status=entry.status,
        latest_outcome=entry.outcome.value,
    )


def _duplicate(original: StoredBackup | StoredNotification, job_id: str | None) -> WriteResult:
    # An idempotent repeat: the original's ids and receipt time, nothing created.
    return WriteResult(
        id=original.id,
        received_at=original.received_at,
        device_id=original.device_id,
        device_created=False,
        job_id=job_id,
        job_created=False,
        duplicate=True,
    )


def _backup_filter(query: BackupQuery) -> Callable[[bmcore.BackupEntry], bool]:
    names = NameFilter.of(
        sender=query.sender, device_name=query.device_name, job_name=query.job_name
    )

    def matches(entry: bmcore.BackupEntry) -> bool:
        return (
            (query.outcome is None or entry.outcome.value == query.outcome)
            and (query.status is None or entry.status == query.status)
            and names.matches(entry.sender, entry.device_name, entry.job_name)
        )

    return matches


def _notification_filter(query: NotificationQuery) -> Callable[[bmcore.Notification], bool]:
    names = NameFilter.of(
        sender=query.sender, device_name=query.device_name, job_name=query.job_name
    )

    def matches(notification: bmcore.Notification) -> bool:
        return (
            (query.severity is None or notification.severity.value == query.severity)
            and (query.type is None or notification.type == query.type)
            and names.matches(notification.sender, notification.device_name, notification.job_name)
        )

    return matches
