"""Rows of the SQL stores read into records, one reading for SQLite and PostgreSQL alike.

Both stores select the same columns in the same order (the statements of
:mod:`bmserver.storage._sql`); they differ only in how an instant is kept (SQLite: integer UTC
microseconds; PostgreSQL: timestamptz), each beside the UTC offset in minutes it was sent with,
and in how a key's scopes are (SQLite: the values separated by spaces; PostgreSQL: a text
array). A :class:`RowReader` is told how to turn an instant back into the aware datetime that
was sent and into the UTC microseconds a cursor's sort key holds, and how to read scopes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, Generic, TypeVar

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

__all__ = ["RowReader", "SortKey"]

InstantT = TypeVar("InstantT")
#: A row's place in its list, as a cursor holds it: (UTC microseconds, seq).
SortKey = tuple[int, int]
_Row = tuple[Any, ...]


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
        """A jobs row of a listing, with its latest backup, and its place."""
        job_id, account_id, device_id, sender, device_name, job_name = row[:6]
        created, created_offset, seq = row[6:9]
        latest_id, latest, latest_offset, latest_status, latest_outcome = row[9:]
        record = JobRecord(
            id=job_id,
            account_id=account_id,
            device_id=device_id,
            sender=sender,
            device_name=device_name,
            job_name=job_name,
            created_at=self.shown(created, created_offset),
            latest_backup_id=latest_id,
            latest_timestamp=None if latest is None else self.shown(latest, latest_offset),
            latest_status=latest_status,
            latest_outcome=latest_outcome,
        )
        return record, (self.micros(created), seq)

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
