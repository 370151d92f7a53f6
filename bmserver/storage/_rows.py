"""Rows of the SQL stores read into records, one reading for SQLite and PostgreSQL alike.

Both stores select the same columns in the same order (the statements of
:mod:`bmserver.storage._sql`); they differ only in how an instant is kept (SQLite: integer UTC
microseconds; PostgreSQL: timestamptz), each beside the UTC offset in minutes it was sent with,
and in how a key's scopes are (SQLite: the values separated by spaces; PostgreSQL: a text
array). A :class:`RowReader` is told how to turn an instant back into the aware datetime that
was sent and into the UTC microseconds a cursor's sort key holds, and how to read scopes.

Two columns of a job hold a value as text, the same in both stores, written with the functions
here and read back by the reader: its schedule (the JSON of :meth:`bmcore.Schedule.to_wire`) and
its summary's recent report times (:func:`recent_text`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Final, Generic, NamedTuple, TypeVar

import attrs

import bmcore
from bmserver.storage._contract import (
    Account,
    ApiKeyRecord,
    DeviceRecord,
    JobRecord,
    Scope,
    StoredBackup,
    StoredNotification,
)
from bmserver.storage._entries import Original

__all__ = ["NO_REPORTS", "JobReports", "RowReader", "SortKey", "recent_text", "schedule_text"]

InstantT = TypeVar("InstantT")
#: A row's place in its list, as a cursor holds it: (UTC microseconds, seq).
SortKey = tuple[int, int]
_Row = tuple[Any, ...]


class JobReports(NamedTuple):
    """What a job's row keeps of its backups: their summary, and the latest one's id and status."""

    summary: bmcore.ReportSummary
    latest_backup_id: str | None
    latest_status: str | None


#: A job's reports before its first backup.
NO_REPORTS: Final = JobReports(bmcore.ReportSummary(), None, None)


def recent_text(times: Iterable[datetime]) -> str:
    """Report times as a job's ``recent`` column holds them: ``<UTC µs>:<offset>``, by spaces.

    Plain text in both stores, so that each migration can also write it in SQL.

    >>> from datetime import timezone, timedelta
    >>> recent_text([datetime(1970, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))])
    '0:60'
    """
    return " ".join("{}:{}".format(*bmcore.split_instant(at)) for at in times)


def _recent_times(text: str) -> tuple[datetime, ...]:
    # Sorted here: a migration's SQL may aggregate in any order.
    pairs = (item.split(":") for item in text.split())
    times = sorted(bmcore.join_instant(int(utc_us), int(offset)) for utc_us, offset in pairs)
    return tuple(times[-bmcore.RECENT_REPORTS :])


def schedule_text(schedule: bmcore.Schedule | None) -> str | None:
    """A schedule as a job's ``schedule`` column holds it: the JSON of its canonical wire form."""
    return None if schedule is None else json.dumps(schedule.to_wire())


def _schedule(text: str | None) -> bmcore.Schedule | None:
    return None if text is None else bmcore.parse_schedule(json.loads(text))


@attrs.frozen
class RowReader(Generic[InstantT]):
    """Reads the rows of one store, given how it keeps instants."""

    #: A stored instant and its offset in minutes -> the aware datetime that was sent.
    shown: Callable[[InstantT, int], datetime]
    #: A stored instant -> UTC microseconds.
    micros: Callable[[InstantT], int]
    #: The stored scopes of a key -> the scope values.
    scope_values: Callable[[Any], Iterable[str]]

    def account(self, row: _Row) -> Account:
        """(id, name, created, created_offset)."""
        account_id, name, created, created_offset = row
        return Account(id=account_id, name=name, created_at=self.shown(created, created_offset))

    def api_key(self, row: _Row) -> ApiKeyRecord:
        """(id, account_id, key_hash, prefix, scopes, created, offset, revoked, offset)."""
        key_id, account_id, key_hash, prefix, scopes, created, created_offset = row[:7]
        revoked, revoked_offset = row[7:9]
        return ApiKeyRecord(
            id=key_id,
            account_id=account_id,
            key_hash=key_hash,
            prefix=prefix,
            scopes=frozenset(Scope(value) for value in self.scope_values(scopes)),
            created_at=self.shown(created, created_offset),
            revoked_at=None if revoked is None else self.shown(revoked, revoked_offset),
        )

    def original(self, row: _Row) -> Original:
        """The entry stored under an identity: (id, content_hash, received, offset, device, job)."""
        entry_id, content_hash, received, received_offset, device_id, job_id = row
        return Original(
            id=entry_id,
            fingerprint=content_hash,
            received_at=self.shown(received, received_offset),
            device_id=device_id,
            job_id=job_id,
        )

    def device(self, row: _Row) -> tuple[DeviceRecord, SortKey]:
        """A devices row of a listing, and its place."""
        device_id, account_id, sender, device_name, created, created_offset = row[:6]
        last_seen, last_seen_offset, seq = row[6:]
        record = DeviceRecord(
            id=device_id,
            account_id=account_id,
            sender=sender,
            device_name=device_name,
            created_at=self.shown(created, created_offset),
            last_seen_at=self.shown(last_seen, last_seen_offset),
        )
        return record, (self.micros(created), seq)

    def job(self, row: _Row) -> tuple[JobRecord, SortKey]:
        """A jobs row, with its reports, schedule and pause, and its place."""
        job_id, account_id, device_id, sender, device_name, job_name = row[:6]
        created, created_offset, seq = row[6:9]
        reports = self.reports(row[9:20])
        schedule, scheduled, scheduled_offset = row[20:23]
        paused, paused_offset, resumes, resumes_offset = row[23:27]
        latest_outcome = reports.summary.latest_outcome
        record = JobRecord(
            id=job_id,
            account_id=account_id,
            device_id=device_id,
            sender=sender,
            device_name=device_name,
            job_name=job_name,
            created_at=self.shown(created, created_offset),
            latest_backup_id=reports.latest_backup_id,
            latest_timestamp=reports.summary.latest_at,
            latest_status=reports.latest_status,
            latest_outcome=None if latest_outcome is None else latest_outcome.value,
            summary=reports.summary,
            schedule=_schedule(schedule),
            scheduled_at=self._shown_or_none(scheduled, scheduled_offset),
            pause=None
            if paused is None
            else bmcore.Pause(
                since=self.shown(paused, paused_offset),
                until=self._shown_or_none(resumes, resumes_offset),
            ),
        )
        return record, (self.micros(created), seq)

    def reports(self, row: _Row) -> JobReports:
        """A job's reports, from its columns of them (``_REPORTS_COLUMNS`` of ``_sql``)."""
        latest_id, latest, latest_offset, latest_status, latest_outcome = row[:5]
        last_success, last_success_offset, failures, failing, failing_offset, recent = row[5:]
        summary = bmcore.ReportSummary(
            latest_at=self._shown_or_none(latest, latest_offset),
            latest_outcome=None if latest_outcome is None else bmcore.Outcome(latest_outcome),
            last_success_at=self._shown_or_none(last_success, last_success_offset),
            consecutive_failures=int(failures),
            failing_since=self._shown_or_none(failing, failing_offset),
            recent=_recent_times(recent),
        )
        return JobReports(summary, latest_id, latest_status)

    def report(self, row: _Row) -> tuple[datetime, bmcore.Outcome]:
        """A backup as a report of its job: (timestamp, offset, outcome)."""
        timestamp, offset, outcome = row
        return self.shown(timestamp, offset), bmcore.Outcome(outcome)

    def _shown_or_none(self, instant: InstantT | None, offset: int | None) -> datetime | None:
        if instant is None or offset is None:
            return None
        return self.shown(instant, offset)

    def backup(self, row: _Row) -> tuple[StoredBackup, SortKey]:
        """A backups row, and its place."""
        entry_id, account_id, device_id, job_id, timestamp, ts_offset = row[:6]
        sender, device_name, job_name, status, message = row[6:11]
        received, received_offset, seq = row[11:]
        entry = bmcore.BackupEntry(
            device_name=device_name,
            job_name=job_name,
            timestamp=self.shown(timestamp, ts_offset),
            status=status,
            message=message,
            sender=sender,
        )
        record = StoredBackup(
            id=entry_id,
            account_id=account_id,
            device_id=device_id,
            job_id=job_id,
            entry=entry,
            received_at=self.shown(received, received_offset),
        )
        return record, (self.micros(timestamp), seq)

    def notification(self, row: _Row) -> tuple[StoredNotification, SortKey]:
        """A notifications row, and its place."""
        entry_id, account_id, device_id, job_id, timestamp, ts_offset = row[:6]
        sender, device_name, job_name, severity, event_type, message = row[6:12]
        received, received_offset, seq = row[12:]
        notification = bmcore.Notification(
            device_name=device_name,
            timestamp=self.shown(timestamp, ts_offset),
            severity=bmcore.Severity(severity),
            type=event_type,
            job_name=job_name,
            message=message,
            sender=sender,
        )
        record = StoredNotification(
            id=entry_id,
            account_id=account_id,
            device_id=device_id,
            job_id=job_id,
            notification=notification,
            received_at=self.shown(received, received_offset),
        )
        return record, (self.micros(timestamp), seq)
