"""The Store contract on SQL, written once: what SQLite and PostgreSQL keep, and how they read it.

:class:`SqlStore` implements every method of the contract with the statements of its
:class:`~bmserver.storage._sql.Dialect`, as coroutine functions of a
:class:`~bmserver.storage._sql.Session`; its jobs' health and settings are its base's,
:class:`~bmserver.storage._sql_jobs.SqlJobs`. A subclass says how they run (``_write`` through
its batching writer, ``_read`` on its readers) and owns its lifecycle.

Several processes may write to one PostgreSQL database at once (instances behind a load
balancer), so nothing here relies on an in-process check. Every identity is a UNIQUE constraint
(an account's name, a key's hash, a device's and a job's matching key, a backup's job and
instant, a notification's content) and every insert of one is ``INSERT ... ON CONFLICT DO
NOTHING``. A write whose row another instance inserted first waits for that instance's commit,
reads the winner, undoes what it did itself, and answers as a repeat (the winner's id) or a
conflict, exactly as if the two writes had arrived one after the other. SQLite's single writer
never loses such a race; the same statements serve it.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, LiteralString, NoReturn, Self, TypeVar

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
from bmserver.storage._entries import answer_to_repeat, created, new_id
from bmserver.storage._filters import NameFilter, TimeWindow
from bmserver.storage._rows import NO_REPORTS
from bmserver.storage._sql import CHANGED, Select, Session, required
from bmserver.storage._sql_jobs import Order, Run, SqlJobs
from bmserver.storage._writer import Repeat

__all__ = ["Order", "Run", "SqlStore"]

T = TypeVar("T")

#: An instant as the tables hold it, with its UTC offset in minutes.
_Moment = tuple[object, int]
#: Names as sent and in canonical form: (sender, device name, job name) of each.
_Names = tuple[tuple[str, str, str], tuple[str, str, str]]


class SqlStore(SqlJobs):
    """A :class:`~bmserver.Store` on a SQL database, less how its statements run."""

    #: How many transactions the writer has committed (a test checks that it batches).
    commit_count: int
    #: Told the size of each committed batch (bmserver's metrics), if set.
    batch_observer: Callable[[int], None] | None = None

    def observe_batches(self, observer: Callable[[int], None]) -> None:
        """Call ``observer`` with the number of writes of each batch, once it is committed."""
        self.batch_observer = observer

    def _committed(self, size: int) -> None:
        self.commit_count += 1
        if self.batch_observer is not None:
            self.batch_observer(size)

    #: How many migrations the last ``open()`` applied (0 when the schema was current).
    migrations_applied: int

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, apply pending migrations, start the writer."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Refuse new work, commit every queued write, release everything."""

    @abc.abstractmethod
    def hold_writes(self) -> contextlib.AbstractContextManager[None]:
        """Keep the writer from starting a batch while held; what queues meanwhile is one batch.

        For tests and benchmarks that need a known batch (of at most the store's MAX_BATCH).
        Do not await a write inside the block: it cannot complete before the block ends.
        """

    async def _read_key(self, run: Run[T]) -> T:
        """The read of every request, its API key: a plain read unless a store has a faster one."""
        return await self._read(run)

    # --- accounts and keys --------------------------------------------------------------------

    async def create_account(self, name: str, *, now: datetime) -> Account:
        """Create an account (names are unique; an existing name returns that account)."""
        sql, rows = self.dialect.sql, self.dialect.rows
        created_at, offset = self.dialect.moment(now)

        async def run(session: Session) -> Account:
            account = (new_id("acc"), name, created_at, offset)
            if await session.run(sql.insert_account, account):
                return rows.account(account)
            return rows.account(required(await session.one(sql.account_named, (name,))))

        return await self._write(("account", name), run)

    async def count_accounts(self) -> int:
        """How many accounts exist (0 on a new database)."""
        sql = self.dialect.sql

        async def run(session: Session) -> int:
            return int(required(await session.one(sql.count_accounts))[0])

        return await self._read(run)

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
        sql, rows = self.dialect.sql, self.dialect.rows
        created_at, offset = self.dialect.moment(now)
        stored_scopes = self.dialect.scopes(scopes)

        async def run(session: Session) -> ApiKeyRecord:
            await _require_account(session, sql.account_exists, account_id)
            key = (new_id("key"), account_id, key_hash, prefix, stored_scopes, created_at, offset)
            if not await session.run(sql.insert_key, key):
                raise StoreError("a key with this hash is already stored")
            return rows.api_key((*key, None, None))

        return await self._write(("key", key_hash), run)

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The unrevoked key with this hash, or None."""
        sql, rows = self.dialect.sql, self.dialect.rows

        async def run(session: Session) -> ApiKeyRecord | None:
            row = await session.one(sql.key_with_hash, (key_hash,))
            return None if row is None else rows.api_key(row)

        return await self._read_key(run)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        sql, rows = self.dialect.sql, self.dialect.rows

        async def run(session: Session) -> list[ApiKeyRecord]:
            return [rows.api_key(row) for row in await session.all(sql.all_keys)]

        return await self._read(run)

    async def revoke_api_key(self, prefix: str, *, now: datetime) -> ApiKeyRecord:
        """Revoke the unrevoked keys with this display prefix and return the oldest of them.

        A prefix is 8 random characters, so two keys share one only by a rare accident; both
        are then revoked rather than guessing which one the operator meant.
        """
        sql, rows = self.dialect.sql, self.dialect.rows
        revoked = self.dialect.moment(now)

        async def run(session: Session) -> ApiKeyRecord:
            keys = await session.all(sql.keys_to_revoke, (prefix,))
            if not keys:
                raise UnknownKeyError(f"no active key has the prefix {prefix!r}")
            await session.run(sql.revoke_keys, (*revoked, prefix))
            return rows.api_key((*keys[0][:7], *revoked))

        return await self._write(("revoke", prefix), run)

    # --- entries ------------------------------------------------------------------------------

    async def add_backup(
        self, account_id: str, entry: bmcore.BackupEntry, *, now: datetime
    ) -> WriteResult:
        """Store a backup, or recognise an idempotent repeat; ConflictError on a clash."""
        # Everything that needs no database is done here, before the write queues.
        sql, rows = self.dialect.sql, self.dialect.rows
        facts = bmcore.backup_facts(entry)
        # Each key's digest once: bmcore computes it anew on every access.
        job_key = facts.job
        device_digest, job_digest = job_key.device.digest, job_key.digest
        received = self.dialect.moment(now)
        instant = self.dialect.instant(entry.timestamp, facts.instant_us)
        timestamp = bmcore.join_instant(facts.instant_us, facts.offset_minutes)
        names = (entry.sender, entry.device_name, entry.job_name)
        keys = (job_key.sender, job_key.device_name, job_key.job_name)
        order = self._entry_order(account_id, device_digest, job_digest, "b", facts.instant_us)

        async def run(session: Session) -> WriteResult:
            # Under load the event loop holds SQLite's writer thread off the GIL around every
            # statement: a known job, the common case, takes one query, two UPDATEs and the
            # INSERT instead of seven statements.
            found = await session.one(sql.job_and_backup, (instant, account_id, job_digest))
            if found is None:
                await _require_account(session, sql.account_exists, account_id)
                device_names = (*names[:2], *keys[:2])
                device = await self._ensure_device(
                    session, account_id, device_names, device_digest, received
                )
                job = await self._insert_job(
                    session, (account_id, device[0]), (names, keys), job_digest, received
                )
                # Unless another instance created the job since the query above.
                reports = NO_REPORTS if job[1] else await self._reports_to_update(session, job[0])
            else:
                job_id, device_id, stored = found[0], found[1], found[2:8]
                original = None if stored[0] is None else rows.original(stored)
                repeat = answer_to_repeat(facts, original)
                if repeat is not None:
                    return repeat
                # The job exists, so its account does (a foreign key), and its device is the
                # one this entry names: a job's key extends its device's key.
                await session.run(sql.touch_device, (*received, device_id, received[0]))
                device, job = (device_id, False), (job_id, False)
                # Where other instances write, they may have changed the job since the query
                # above: read it again, locked, in the lock order (after the device).
                reports = (
                    await self._reports_to_update(session, job_id)
                    if self.orders_batches
                    else rows.reports(found[8:])
                )
            entry_id = new_id("bk")
            values = (
                *(entry_id, account_id, device[0], job[0], instant, facts.offset_minutes),
                *(*names, entry.status, entry.outcome.value, entry.message, facts.fingerprint),
                *(*received, *keys),
            )
            if not await session.run(sql.insert_backup, values):
                # Another instance stored this job's entry at this instant since the query above.
                await self._lost_race(session, facts, sql.original_backup, (job[0], instant))
            await self._record_backup(session, job[0], reports, (entry_id, timestamp, entry))
            return created(entry_id, rows.shown(*received), device, job)

        return await self._write(order, run)

    async def add_notification(
        self, account_id: str, notification: bmcore.Notification, *, now: datetime
    ) -> WriteResult:
        """Store a notification, or recognise an identical one as an idempotent repeat."""
        sql, rows = self.dialect.sql, self.dialect.rows
        facts = bmcore.notification_facts(notification)
        device_key, job_key = facts.device, facts.job
        received = self.dialect.moment(now)
        instant = self.dialect.instant(notification.timestamp, facts.instant_us)
        sent = (notification.sender, notification.device_name)
        keys = (device_key.sender, device_key.device_name)
        device_digest = device_key.digest
        job_digest = "" if job_key is None else job_key.digest  # once each, as for a backup
        order = self._entry_order(account_id, device_digest, job_digest, "n", facts.identity)

        async def run(session: Session) -> WriteResult:
            await _require_account(session, sql.account_exists, account_id)
            identity = (account_id, facts.identity)
            stored = await session.one(sql.original_notification, identity)
            repeat = answer_to_repeat(facts, None if stored is None else rows.original(stored))
            if repeat is not None:
                return repeat
            device = await self._ensure_device(
                session, account_id, (*sent, *keys), device_digest, received
            )
            job: tuple[str | None, bool] = (None, False)
            job_name = notification.job_name
            if job_name is not None and job_key is not None:
                job_names = ((*sent, job_name), (*keys, job_key.job_name))
                job = await self._ensure_job(
                    session, (account_id, device[0]), job_names, job_digest, received
                )
            entry_id = new_id("nt")
            values = (
                *(entry_id, account_id, device[0], job[0], instant, facts.offset_minutes),
                *(*sent, job_name, notification.severity.value, notification.type),
                *(notification.message, facts.fingerprint, *received, *keys),
                None if job_key is None else job_key.job_name,
            )
            if not await session.run(sql.insert_notification, values):
                # Another instance stored the same notification since the query above.
                await self._lost_race(session, facts, sql.original_notification, identity)
            return created(entry_id, rows.shown(*received), device, job)

        return await self._write(order, run)

    async def _lost_race(
        self,
        session: Session,
        facts: bmcore.BackupFacts | bmcore.NotificationFacts,
        query: LiteralString,
        identity: tuple[object, ...],
    ) -> NoReturn:
        """An INSERT found its identity taken: answer as the rules say, undoing this write."""
        original = self.dialect.rows.original(required(await session.one(query, identity)))
        answer = answer_to_repeat(facts, original)  # ConflictError, raised in the savepoint
        if answer is None:
            raise StoreError(CHANGED)
        raise Repeat(answer)

    async def _ensure_device(
        self,
        session: Session,
        account_id: str,
        names: tuple[str, str, str, str],
        digest: str,
        now: _Moment,
    ) -> tuple[str, bool]:
        """The matched device's id and whether it was created; a new entry is a sign of life.

        ``names`` are the entry's (sender, device name) as sent and in canonical form, kept as
        the device's if it is new.
        """
        sql = self.dialect.sql
        found = await session.one(sql.device_with_digest, (account_id, digest))
        if found is None:
            device_id = new_id("dev")
            values = (device_id, account_id, digest, *names, *now, *now)
            if await session.run(sql.insert_device, values):
                return device_id, True
            # Another instance created it since the query above.
            found = await session.one(sql.device_with_digest, (account_id, digest))
        device_id = str(required(found)[0])
        await session.run(sql.touch_device, (*now, device_id, now[0]))
        return device_id, False

    async def _ensure_job(
        self, session: Session, device: tuple[str, str], names: _Names, digest: str, now: _Moment
    ) -> tuple[str, bool]:
        """The matched job's id and whether it was created (``device``: account id, device id).

        ``names`` are the entry's (sender, device name, job name) as sent and in canonical form.
        """
        found = await session.one(self.dialect.sql.job_with_digest, (device[0], digest))
        if found is not None:
            return str(found[0]), False
        return await self._insert_job(session, device, names, digest, now)

    async def _insert_job(
        self, session: Session, device: tuple[str, str], names: _Names, digest: str, now: _Moment
    ) -> tuple[str, bool]:
        """A job that was not found: created, or found again if another instance just created it."""
        sql = self.dialect.sql
        account_id, device_id = device
        job_id = new_id("job")
        sent, canonical = names
        values = (job_id, account_id, device_id, digest, *sent, *canonical, *now)
        if await session.run(sql.insert_job, values):
            return job_id, True
        found = await session.one(sql.job_with_digest, (account_id, digest))
        return str(required(found)[0]), False

    # --- read side ----------------------------------------------------------------------------

    async def list_devices(
        self, account_id: str, *, limit: int, cursor: str | None
    ) -> Page[DeviceRecord]:
        """Devices of one account, newest first."""
        sql, rows = self.dialect.sql, self.dialect.rows
        select = Select(
            self.dialect,
            "devices",
            sql.devices,
            rows.device,
            account_id,
            limit=limit,
            cursor=cursor,
        )
        return await self._read(select.page)

    async def list_jobs(
        self, account_id: str, *, device_name: str | None, limit: int, cursor: str | None
    ) -> Page[JobRecord]:
        """Jobs of one account with their latest backup, newest first."""
        sql, rows = self.dialect.sql, self.dialect.rows
        select = Select(
            self.dialect, "jobs", sql.jobs, rows.job, account_id, limit=limit, cursor=cursor
        )
        names = NameFilter.of(sender=None, device_name=device_name, job_name=None)
        select.where("device_name_key", names.device_name)
        return await self._read(select.page)

    async def get_backup(self, account_id: str, entry_id: str) -> StoredBackup | None:
        """One backup of the account by id, or None."""
        sql, rows = self.dialect.sql, self.dialect.rows
        select = Select(self.dialect, "backups", sql.backups, rows.backup, account_id, limit=1)
        return await self._by_id(select, entry_id)

    async def get_notification(self, account_id: str, entry_id: str) -> StoredNotification | None:
        """One notification of the account by id, or None."""
        sql, rows = self.dialect.sql, self.dialect.rows
        select = Select(
            self.dialect, "notifications", sql.notifications, rows.notification, account_id, limit=1
        )
        return await self._by_id(select, entry_id)

    async def _by_id(self, select: Select[T], entry_id: str) -> T | None:
        """The one row of a list with this id, if the account has it."""
        select.where("id", entry_id)
        page = await self._read(select.page)
        return page.items[0] if page.items else None

    async def list_backups(
        self, account_id: str, query: BackupQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredBackup]:
        """Backups of one account, newest timestamp first."""
        sql, rows = self.dialect.sql, self.dialect.rows
        select = Select(
            self.dialect,
            "backups",
            sql.backups,
            rows.backup,
            account_id,
            limit=limit,
            cursor=cursor,
        )
        select.window(TimeWindow.of(query.since, query.until))
        _where_names(select, query)
        select.where("outcome", query.outcome)
        select.where("status", query.status)
        return await self._read(select.page)

    async def list_notifications(
        self, account_id: str, query: NotificationQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredNotification]:
        """Notifications of one account, newest timestamp first."""
        sql, rows = self.dialect.sql, self.dialect.rows
        select = Select(
            self.dialect,
            "notifications",
            sql.notifications,
            rows.notification,
            account_id,
            limit=limit,
            cursor=cursor,
        )
        select.window(TimeWindow.of(query.since, query.until))
        _where_names(select, query)  # a notification without a job has a NULL job name
        select.where("severity", query.severity)
        select.where("type", query.type)
        return await self._read(select.page)


def _where_names(select: Select[Any], query: BackupQuery | NotificationQuery) -> None:
    """The name filters of a query, compared with the canonical names each row keeps."""
    names = NameFilter.of(
        sender=query.sender, device_name=query.device_name, job_name=query.job_name
    )
    select.where("sender_key", names.sender)
    select.where("device_name_key", names.device_name)
    select.where("job_name_key", names.job_name)  # NULL equals no name


async def _require_account(session: Session, query: LiteralString, account_id: str) -> None:
    if await session.one(query, (account_id,)) is None:
        raise StoreError(f"unknown account {account_id!r}")
