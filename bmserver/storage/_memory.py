"""The in-memory store: the reference implementation of the Store contract.

:class:`MemoryStore` backs the tests and the ``bm_fake_ingest`` fixture.
``tests/server/test_store_contract.py`` runs one suite against it, :class:`~bmserver.SqliteStore`
and ``PostgresStore``, and hypothesis tests check that the same writes give the same answers and
the same listings in each. Like the SQL stores, it asks bmcore's ingest rules what an entry is
(:mod:`bmserver.storage._entries`) and pages by the one cursor rule
(:mod:`bmserver.storage._cursors`); it implements the rule in Python, over its own rows
(:mod:`bmserver.storage._memory_rows`).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Self

import attrs

import bmcore
from bmserver.storage._contract import (
    Account,
    ApiKeyRecord,
    BackupQuery,
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
from bmserver.storage._cursors import page_start
from bmserver.storage._entries import Original, answer_to_repeat, created, new_id
from bmserver.storage._filters import (
    NameFilter,
    TimeWindow,
    backup_filter,
    notification_filter,
)
from bmserver.storage._memory_rows import Row as _Row
from bmserver.storage._memory_rows import page as _page
from bmserver.storage._memory_rows import ranked as _ranked

__all__ = ["MemoryStore"]


def _normalized(moment: datetime) -> datetime:
    # What a round trip through storage gives back: the same instant and offset, with a fixed
    # timezone (a ZoneInfo passed in does not survive storage, so it must not survive here).
    return bmcore.join_instant(*bmcore.split_instant(moment))


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
        # every account, it never leaves the store (cursors hold places: see _cursors).
        self._seq = itertools.count(1)
        self._accounts: dict[str, Account] = {}
        self._account_ids_by_name: dict[str, str] = {}
        self._keys: list[_Row[ApiKeyRecord]] = []
        self._keys_by_hash: dict[str, _Row[ApiKeyRecord]] = {}
        self._forget_entries()

    def _forget_entries(self) -> None:
        self._devices: dict[tuple[str, str], _Row[DeviceRecord]] = {}
        self._jobs: dict[tuple[str, str], _Row[JobRecord]] = {}
        self._jobs_by_id: dict[str, _Row[JobRecord]] = {}
        self._backups: dict[tuple[str, int], _Row[StoredBackup]] = {}  # by (job id, instant)
        # Notifications by (account id, identity): a notification's identity is its fingerprint.
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

    def observe_batches(self, observer: Callable[[int], None]) -> None:
        """Nothing to observe: each write is applied at once, never batched."""

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
            row = _Row((bmcore.split_instant(now)[0], next(self._seq)), record)
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
        facts = bmcore.backup_facts(entry)
        # Each key's digest once: bmcore computes it anew on every access.
        device_digest, job_digest = facts.job.device.digest, facts.job.digest
        received_at = _normalized(now)
        with self._lock:
            self._require_account(account_id)
            job = self._jobs.get((account_id, job_digest))
            # The identity is (job, instant): nothing is stored under it while the job is new.
            original = None if job is None else self._backups.get((job.record.id, facts.instant_us))
            repeat = answer_to_repeat(facts, None if original is None else _original(original))
            if repeat is not None:
                return repeat
            device, device_created = self._device(account_id, entry, device_digest, received_at)
            names = (entry.sender, entry.device_name, entry.job_name)
            job, job_created = self._job(device.record, names, job_digest, received_at)
            timestamp = bmcore.join_instant(facts.instant_us, facts.offset_minutes)
            stored = StoredBackup(
                id=new_id("bk"),
                account_id=account_id,
                device_id=device.record.id,
                job_id=job.record.id,
                entry=attrs.evolve(entry, timestamp=timestamp),
                received_at=received_at,
            )
            row = _Row((facts.instant_us, next(self._seq)), stored, facts.fingerprint)
            self._backups[job.record.id, facts.instant_us] = row
            self._record_backup(job, stored)
            device_ids = (device.record.id, device_created)
            return created(stored.id, received_at, device_ids, (job.record.id, job_created))

    async def add_notification(
        self, account_id: str, notification: bmcore.Notification, *, now: datetime
    ) -> WriteResult:
        """Store a notification, or recognise an identical one as an idempotent repeat."""
        facts = bmcore.notification_facts(notification)
        received_at = _normalized(now)
        with self._lock:
            self._require_account(account_id)
            original = self._notifications.get((account_id, facts.identity))
            repeat = answer_to_repeat(facts, None if original is None else _original(original))
            if repeat is not None:
                return repeat
            device, device_created = self._device(
                account_id, notification, facts.device.digest, received_at
            )
            job_id: str | None = None
            job_created = False
            if notification.job_name is not None and facts.job is not None:
                names = (notification.sender, notification.device_name, notification.job_name)
                job, job_created = self._job(device.record, names, facts.job.digest, received_at)
                job_id = job.record.id
            timestamp = bmcore.join_instant(facts.instant_us, facts.offset_minutes)
            stored = StoredNotification(
                id=new_id("nt"),
                account_id=account_id,
                device_id=device.record.id,
                job_id=job_id,
                notification=attrs.evolve(notification, timestamp=timestamp),
                received_at=received_at,
            )
            self._notifications[account_id, facts.identity] = _Row(
                (facts.instant_us, next(self._seq)), stored, facts.fingerprint
            )
            device_ids = (device.record.id, device_created)
            return created(stored.id, received_at, device_ids, (job_id, job_created))

    def _device(
        self,
        account_id: str,
        entry: bmcore.BackupEntry | bmcore.Notification,
        digest: str,
        now: datetime,
    ) -> tuple[_Row[DeviceRecord], bool]:
        """The matched device, created if new; a new entry also counts as a sign of life."""
        device = self._devices.get((account_id, digest))
        if device is None:
            record = DeviceRecord(
                id=new_id("dev"),
                account_id=account_id,
                sender=entry.sender,
                device_name=entry.device_name,
                created_at=now,
                last_seen_at=now,
            )
            device = _Row((bmcore.split_instant(now)[0], next(self._seq)), record)
            self._devices[account_id, digest] = device
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
        job = _Row((bmcore.split_instant(now)[0], next(self._seq)), record)
        self._jobs[device.account_id, digest] = job
        self._jobs_by_id[record.id] = job
        return job, True

    def _record_backup(self, job: _Row[JobRecord], backup: StoredBackup) -> None:
        """Add a new backup to its job's summary, and make it the job's latest if it is."""
        entry = backup.entry
        summary = job.record.summary.add(entry.timestamp, entry.outcome)
        if summary is None:  # a Success backfilled into a failing streak: count again
            summary = bmcore.summarize(
                (row.record.entry.timestamp, row.record.entry.outcome)
                for row in self._backups.values()
                if row.record.job_id == job.record.id
            )
        job.record = attrs.evolve(job.record, summary=summary)
        if summary.latest_at == entry.timestamp:
            job.record = attrs.evolve(
                job.record,
                latest_backup_id=backup.id,
                latest_timestamp=entry.timestamp,
                latest_status=entry.status,
                latest_outcome=entry.outcome.value,
            )

    # --- read side ----------------------------------------------------------------------------

    async def list_devices(
        self, account_id: str, *, limit: int, cursor: str | None
    ) -> Page[DeviceRecord]:
        """Devices of one account, newest first."""
        after = page_start("devices", limit, cursor)
        with self._lock:
            snapshot = list(self._devices.values())
        ranked = _ranked(row for row in snapshot if row.record.account_id == account_id)
        return _page(ranked, "devices", limit, after)

    async def list_jobs(
        self, account_id: str, *, device_name: str | None, limit: int, cursor: str | None
    ) -> Page[JobRecord]:
        """Jobs of one account with their latest backup, newest first."""
        after = page_start("jobs", limit, cursor)
        names = NameFilter.of(sender=None, device_name=device_name, job_name=None)
        with self._lock:
            snapshot = list(self._jobs.values())
        ranked = [
            (place, row)
            for place, row in _ranked(
                row for row in snapshot if row.record.account_id == account_id
            )
            if names.matches(row.record.sender, row.record.device_name, row.record.job_name)
        ]
        return _page(ranked, "jobs", limit, after)

    async def get_job(self, account_id: str, job_id: str) -> JobRecord | None:
        """One job of the account by id, with its summary, schedule and pause; or None."""
        with self._lock:
            row = self._jobs_by_id.get(job_id)
            return None if row is None or row.record.account_id != account_id else row.record

    async def set_schedule(
        self, account_id: str, job_id: str, schedule: bmcore.Schedule | None, *, now: datetime
    ) -> JobRecord | None:
        """Set a job's schedule and ``scheduled_at`` (``None`` clears both); None if no job."""
        scheduled_at = None if schedule is None else _normalized(now)
        return self._set_job(
            account_id,
            job_id,
            lambda job: attrs.evolve(job, schedule=schedule, scheduled_at=scheduled_at),
        )

    async def set_pause(
        self, account_id: str, job_id: str, pause: bmcore.Pause | None
    ) -> JobRecord | None:
        """Store a job's pause (``None`` clears it); the job as now stored, or None if no job."""
        stored = pause
        if pause is not None:
            until = None if pause.until is None else _normalized(pause.until)
            stored = bmcore.Pause(since=_normalized(pause.since), until=until)
        return self._set_job(account_id, job_id, lambda job: attrs.evolve(job, pause=stored))

    def _set_job(
        self, account_id: str, job_id: str, change: Callable[[JobRecord], JobRecord]
    ) -> JobRecord | None:
        with self._lock:
            row = self._jobs_by_id.get(job_id)
            if row is None or row.record.account_id != account_id:
                return None
            row.record = change(row.record)
            return row.record

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
        after = page_start("backups", limit, cursor)
        window = TimeWindow.of(query.since, query.until)
        matches = backup_filter(query)
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
        after = page_start("notifications", limit, cursor)
        window = TimeWindow.of(query.since, query.until)
        matches = notification_filter(query)
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


def _original(row: _Row[StoredBackup] | _Row[StoredNotification]) -> Original:
    """The stored entry of a row, as the rules compare it and a repeat is answered."""
    record = row.record
    return Original(
        id=record.id,
        fingerprint=row.fingerprint,
        received_at=record.received_at,
        device_id=record.device_id,
        job_id=record.job_id,
    )
