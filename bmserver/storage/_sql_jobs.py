"""What the SQL stores' writes share, and their jobs: the lock order, job health, job settings.

:class:`SqlJobs` is the base of :class:`~bmserver.storage._sql_store.SqlStore`: it declares how
statements run (a subclass's batching writer and readers), orders the writes of a batch, keeps
each job's summary of its backups (:meth:`SqlJobs._record_backup`, in the transaction of the
backup's insert) and implements the contract's job reads and settings.

A job's summary is updated read-modify-write: the write of a new backup reads the job's row,
adds the backup with :meth:`bmcore.ReportSummary.add` (or recounts the job's backups when that
cannot tell) and writes the row back. Writes of one batch run one after the other in one
transaction, so each reads what the one before it left. On PostgreSQL, where other instances
write at once, the read locks the row until the batch commits.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, ClassVar, LiteralString, TypeVar

import bmcore
from bmserver.storage._contract import JobRecord
from bmserver.storage._rows import JobReports, recent_text, schedule_text
from bmserver.storage._sql import Dialect, Session, required

__all__ = ["Order", "Run", "SqlJobs"]

T = TypeVar("T")

#: The position of a write in its batch: what it locks, as a key of one global order.
Order = tuple[object, ...]
#: A statement's work on one session.
Run = Callable[[Session], Coroutine[Any, Any, T]]


class SqlJobs(abc.ABC):
    """How a SQL store's statements run, how its writes are ordered, and its jobs."""

    #: The subclass's database.
    dialect: ClassVar[Dialect]
    #: Whether other processes write to the database at once (PostgreSQL's instances). Then
    #: the writer sorts each batch by what its writes lock (see :meth:`_entry_order`), and a
    #: write locks the job row it updates. SQLite's single writer keeps the order of arrival,
    #: and its writes carry no order.
    orders_batches: ClassVar[bool] = False

    @abc.abstractmethod
    async def _write(self, order: Order, run: Run[T]) -> T:
        """Run ``run`` in the writer's next batch; its result once committed."""

    @abc.abstractmethod
    async def _read(self, run: Run[T]) -> T:
        """Run ``run`` on a reader; its result."""

    def _entry_order(
        self, account: str, device: str, job: str, kind: str, identity: int | bytes | str
    ) -> Order:
        """The lock order of a write: its device, then its job, then the entry itself.

        A write of an entry locks its device row (new, or its last_seen moved), then its job
        row (a backup, to update the job's summary), then its entry's unique key, in that order;
        sorting a batch by (account, device, job, entry) makes every batch of every PostgreSQL
        instance acquire its locks in one global order, so none can wait for another in a cycle.
        Equal keys mean the same rows (the same content has the same names). ``kind`` is "b" for
        a backup (``identity``: its instant), "n" for a notification (its fingerprint) or "s"
        for a job's settings (the job's id; they lock the job row alone, after its entries), so
        that only identities of one type are compared. Empty for a store that does not order
        its batches.
        """
        return ("entry", account, device, job, kind, identity) if self.orders_batches else ()

    # --- job health -------------------------------------------------------------------------

    async def _reports_to_update(self, session: Session, job_id: str) -> JobReports:
        """A job's reports as they are now, its row locked until commit where others write."""
        sql = self.dialect.sql
        row = required(await session.one(sql.job_reports_to_update, (job_id,)))
        return self.dialect.rows.reports(row)

    async def _record_backup(
        self,
        session: Session,
        job_id: str,
        reports: JobReports,
        backup: tuple[str, datetime, bmcore.BackupEntry],
    ) -> None:
        """Add a new backup (its id, timestamp and entry) to its job's reports, in its row."""
        sql, rows = self.dialect.sql, self.dialect.rows
        backup_id, timestamp, entry = backup
        summary = reports.summary.add(timestamp, entry.outcome)
        if summary is None:  # a Success backfilled into a failing streak: count again
            stored = await session.all(sql.reports_of_job, (job_id,))
            summary = bmcore.summarize(rows.report(row) for row in stored)
        latest = reports.latest_backup_id, reports.latest_status
        if summary.latest_at == timestamp:
            latest = backup_id, entry.status
        latest_outcome = None if summary.latest_outcome is None else summary.latest_outcome.value
        moment = self.dialect.moment_or_none
        values = (
            *(latest[0], *moment(summary.latest_at), latest[1], latest_outcome),
            *(*moment(summary.last_success_at), summary.consecutive_failures),
            *(*moment(summary.failing_since), recent_text(summary.recent), job_id),
        )
        await session.run(sql.update_job_reports, values)

    # --- jobs: reads and settings -----------------------------------------------------------

    async def get_job(self, account_id: str, job_id: str) -> JobRecord | None:
        """One job of the account by id, with its summary, schedule and pause; or None."""
        if not _bindable(job_id):
            return None
        sql, rows = self.dialect.sql, self.dialect.rows

        async def run(session: Session) -> JobRecord | None:
            row = await session.one(sql.job_by_id, (account_id, job_id))
            return None if row is None else rows.job(row)[0]

        return await self._read(run)

    async def set_schedule(
        self, account_id: str, job_id: str, schedule: bmcore.Schedule | None, *, now: datetime
    ) -> JobRecord | None:
        """Set a job's schedule and ``scheduled_at`` (``None`` clears both); None if no job."""
        scheduled = self.dialect.moment_or_none(None if schedule is None else now)
        values = (schedule_text(schedule), *scheduled)
        return await self._set_job(account_id, job_id, self.dialect.sql.set_schedule, values)

    async def set_pause(
        self, account_id: str, job_id: str, pause: bmcore.Pause | None
    ) -> JobRecord | None:
        """Store a job's pause (``None`` clears it); the job as now stored, or None if no job."""
        moment = self.dialect.moment_or_none
        since, until = (None, None) if pause is None else (pause.since, pause.until)
        values = (*moment(since), *moment(until))
        return await self._set_job(account_id, job_id, self.dialect.sql.set_pause, values)

    async def _set_job(
        self,
        account_id: str,
        job_id: str,
        statement: LiteralString,
        values: tuple[object, ...],
    ) -> JobRecord | None:
        """Run an UPDATE of one job's settings; the job as stored then, or None if no such job."""
        if not _bindable(job_id):
            return None
        sql, rows = self.dialect.sql, self.dialect.rows
        order = await self._settings_order(account_id, job_id)
        if order is None:
            return None

        async def run(session: Session) -> JobRecord | None:
            if not await session.run(statement, (*values, account_id, job_id)):
                return None
            return rows.job(required(await session.one(sql.job_by_id, (account_id, job_id))))[0]

        return await self._write(order, run)

    async def _settings_order(self, account_id: str, job_id: str) -> Order | None:
        """The lock order of a write of a job's settings: after the job's entries; None: no job.

        Found by a read first, where the store orders its batches: a job's entries are ordered
        by its digests, which the caller does not know.
        """
        if not self.orders_batches:
            return ()
        sql = self.dialect.sql

        async def run(session: Session) -> Order | None:
            found = await session.one(sql.job_digests, (account_id, job_id))
            if found is None:
                return None
            return self._entry_order(account_id, str(found[0]), str(found[1]), "s", job_id)

        return await self._read(run)


def _bindable(text: str) -> bool:
    """Whether a client's text can be compared in SQL at all: neither NUL nor lone surrogates.

    PostgreSQL's text refuses NUL, and a lone surrogate is no UTF-8 for either database. No job
    has such an id, so there is nothing to look up.
    """
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
