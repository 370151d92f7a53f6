"""The versioned schema of the SQLite store, and the code that brings a database up to date.

The migrations are :class:`~bmserver.storage._migrations.Migration` records, shared in form
with PostgreSQL's. The version a database is at is kept in ``PRAGMA user_version`` (0 for a new
file), so that a database says by itself which migrations it has had.
:func:`apply_migrations` runs the pending ones in order, each in its own ``BEGIN IMMEDIATE``
transaction that also sets the new version: a migration is applied completely or not at all,
and a crash between two migrations leaves a consistent database at the earlier version.

Timestamps are stored as integer microseconds since the Unix epoch in UTC (``*_us``) plus the
offset that was sent, in minutes (``*_offset``): integers sort and compare exactly, and the
offset gives the original wall-clock reading back. ``seq`` is each table's rowid: the order of
insertion, which breaks ties between equal timestamps in the read side's ordering.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from bmserver.storage._contract import StoreError
from bmserver.storage._migrations import (
    REKEY_READS,
    Backfill,
    Migration,
    check_versions,
    rekey_devices_and_jobs,
)

__all__ = ["MIGRATIONS", "apply_migrations", "schema_version"]


_SCHEMA: Final = Migration(
    version=1,
    description="accounts, keys, devices, jobs, backups and notifications",
    statements=(
        """
        CREATE TABLE accounts (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL UNIQUE,
            created_us INTEGER NOT NULL,
            created_offset INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE api_keys (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            scopes TEXT NOT NULL,  -- the scope values, sorted, separated by one space
            created_us INTEGER NOT NULL,
            created_offset INTEGER NOT NULL,
            revoked_us INTEGER,
            revoked_offset INTEGER
        )
        """,
        "CREATE INDEX api_keys_by_prefix ON api_keys (prefix)",
        """
        CREATE TABLE devices (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            digest TEXT NOT NULL,  -- bmcore.DeviceKey digest
            sender TEXT NOT NULL,
            device_name TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            created_offset INTEGER NOT NULL,
            last_seen_us INTEGER NOT NULL,
            last_seen_offset INTEGER NOT NULL,
            UNIQUE (account_id, digest)
        )
        """,
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            device_id TEXT NOT NULL REFERENCES devices (id),
            digest TEXT NOT NULL,  -- bmcore.JobKey digest
            sender TEXT NOT NULL,
            device_name TEXT NOT NULL,
            job_name TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            created_offset INTEGER NOT NULL,
            UNIQUE (account_id, digest)
        )
        """,
        """
        CREATE TABLE backups (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            device_id TEXT NOT NULL REFERENCES devices (id),
            job_id TEXT NOT NULL REFERENCES jobs (id),
            ts_us INTEGER NOT NULL,
            ts_offset INTEGER NOT NULL,
            sender TEXT NOT NULL,
            device_name TEXT NOT NULL,
            job_name TEXT NOT NULL,
            status TEXT NOT NULL,
            outcome TEXT NOT NULL,
            message TEXT NOT NULL,
            content_hash BLOB NOT NULL,  -- SHA-256 of bmcore.encode_backup(entry)
            received_us INTEGER NOT NULL,
            received_offset INTEGER NOT NULL,
            UNIQUE (job_id, ts_us)  -- the idempotency key; also finds a job's latest entry
        )
        """,
        """
        CREATE TABLE notifications (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts (id),
            device_id TEXT NOT NULL REFERENCES devices (id),
            job_id TEXT REFERENCES jobs (id),
            ts_us INTEGER NOT NULL,
            ts_offset INTEGER NOT NULL,
            sender TEXT NOT NULL,
            device_name TEXT NOT NULL,
            job_name TEXT,
            severity TEXT NOT NULL,
            type TEXT NOT NULL,
            message TEXT,
            content_hash BLOB NOT NULL,  -- SHA-256 of bmcore.encode_notification(notification)
            received_us INTEGER NOT NULL,
            received_offset INTEGER NOT NULL,
            UNIQUE (account_id, content_hash)  -- the idempotency key
        )
        """,
    ),
)

# The read side lists newest first within one account, optionally filtered by a name. An
# index's entries end with the rowid (seq), so (account_id, ts_us) already yields the full
# sort key (ts_us, seq) in order and SQLite needs no sort step.
_READ_INDEXES: Final = Migration(
    version=2,
    description="indexes for the read side's listings and filters",
    statements=(
        "CREATE INDEX devices_newest ON devices (account_id, created_us)",
        "CREATE INDEX jobs_newest ON jobs (account_id, created_us)",
        "CREATE INDEX jobs_by_device_name ON jobs (account_id, device_name, created_us)",
        "CREATE INDEX backups_newest ON backups (account_id, ts_us)",
        "CREATE INDEX backups_by_device_name ON backups (account_id, device_name, ts_us)",
        "CREATE INDEX backups_by_job_name ON backups (account_id, job_name, ts_us)",
        "CREATE INDEX notifications_newest ON notifications (account_id, ts_us)",
        "CREATE INDEX notifications_by_device ON notifications (account_id, device_name, ts_us)",
        "CREATE INDEX notifications_by_type ON notifications (account_id, type, ts_us)",
    ),
)


# The name filters compare canonical names (bmcore.canonical_name), which only Python computes:
# every row keeps them beside the names as sent. Here the small tables get them, and the rows
# whose digest changed with the canonical form are re-keyed (see rekey_devices_and_jobs).
_NAME_KEYS: Final = Migration(
    version=3,
    description="canonical names of devices and jobs; keys without invisible characters",
    statements=(
        # SQLite adds a NOT NULL column only with a default; the backfill sets every row there
        # is, and every insert names these columns.
        "ALTER TABLE devices ADD COLUMN sender_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE devices ADD COLUMN device_name_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN sender_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN device_name_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN job_name_key TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX jobs_by_device_name_key ON jobs (account_id, device_name_key, created_us)",
        "DROP INDEX jobs_by_device_name",
    ),
    backfill=Backfill(
        reads=REKEY_READS,
        plan=rekey_devices_and_jobs,
        writes=(
            "UPDATE devices SET digest = ?, sender_key = ?, device_name_key = ? WHERE id = ?",
            (
                "UPDATE jobs SET digest = ?, sender_key = ?, device_name_key = ?, job_name_key = ?"
                " WHERE id = ?"
            ),
        ),
    ),
)

# Entries keep the canonical names too, so that a name filter is an equality on an index of
# (account_id, name, time), which yields a page in order whatever the filter selects, as the
# indexes on the names as sent did. Each entry's are its device's and job's (the same names in
# canonical form), copied in SQL: the large tables need no Python. A notification without a job
# has no job name, hence NULL.
_ENTRY_NAME_KEYS: Final = Migration(
    version=4,
    description="canonical names of backups and notifications, and their filters' indexes",
    statements=(
        "ALTER TABLE backups ADD COLUMN sender_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE backups ADD COLUMN device_name_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE backups ADD COLUMN job_name_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE notifications ADD COLUMN sender_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE notifications ADD COLUMN device_name_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE notifications ADD COLUMN job_name_key TEXT",
        """
        UPDATE backups SET
            (sender_key, device_name_key) = (
                SELECT sender_key, device_name_key FROM devices WHERE devices.id = backups.device_id
            ),
            job_name_key = (SELECT job_name_key FROM jobs WHERE jobs.id = backups.job_id)
        """,
        """
        UPDATE notifications SET
            (sender_key, device_name_key) = (
                SELECT sender_key, device_name_key FROM devices
                WHERE devices.id = notifications.device_id
            ),
            job_name_key = (SELECT job_name_key FROM jobs WHERE jobs.id = notifications.job_id)
        """,
        "CREATE INDEX backups_by_device_name_key ON backups (account_id, device_name_key, ts_us)",
        "CREATE INDEX backups_by_job_name_key ON backups (account_id, job_name_key, ts_us)",
        (
            "CREATE INDEX notifications_by_device_name_key"
            " ON notifications (account_id, device_name_key, ts_us)"
        ),
        "DROP INDEX backups_by_device_name",
        "DROP INDEX backups_by_job_name",
        "DROP INDEX notifications_by_device",
    ),
)

# Job health (bmcore.ReportSummary), schedules and pauses, on each job's row. The summary is
# kept up to date by every new backup (see bmserver.storage._sql_jobs); here the jobs there are
# get theirs from their backups, in SQL, as bmcore.summarize would count them: the latest
# backup; the last Success; the Errors after it (Warnings and Unknowns neither count nor break
# the streak); and the newest report times (10: bmcore.RECENT_REPORTS when this was written).
# Each subquery walks one job's rows of UNIQUE (job_id, ts_us) backwards from its newest.
_JOB_HEALTH: Final = Migration(
    version=5,
    description="each job's summary of its backups, its schedule and its pause",
    statements=(
        "ALTER TABLE jobs ADD COLUMN latest_backup_id TEXT",
        "ALTER TABLE jobs ADD COLUMN latest_us INTEGER",
        "ALTER TABLE jobs ADD COLUMN latest_offset INTEGER",
        "ALTER TABLE jobs ADD COLUMN latest_status TEXT",
        "ALTER TABLE jobs ADD COLUMN latest_outcome TEXT",
        "ALTER TABLE jobs ADD COLUMN last_success_us INTEGER",
        "ALTER TABLE jobs ADD COLUMN last_success_offset INTEGER",
        "ALTER TABLE jobs ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN failing_since_us INTEGER",
        "ALTER TABLE jobs ADD COLUMN failing_since_offset INTEGER",
        # The newest report times, "<UTC microseconds>:<offset>" separated by spaces.
        "ALTER TABLE jobs ADD COLUMN recent TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN schedule TEXT",  # the JSON of Schedule.to_wire()
        "ALTER TABLE jobs ADD COLUMN scheduled_us INTEGER",
        "ALTER TABLE jobs ADD COLUMN scheduled_offset INTEGER",
        "ALTER TABLE jobs ADD COLUMN paused_us INTEGER",  # a pause: since when
        "ALTER TABLE jobs ADD COLUMN paused_offset INTEGER",
        "ALTER TABLE jobs ADD COLUMN resumes_us INTEGER",  # and until when, if it ends
        "ALTER TABLE jobs ADD COLUMN resumes_offset INTEGER",
        """
        UPDATE jobs SET
            (latest_backup_id, latest_us, latest_offset, latest_status, latest_outcome) = (
                SELECT id, ts_us, ts_offset, status, outcome FROM backups
                WHERE job_id = jobs.id ORDER BY ts_us DESC LIMIT 1
            )
        """,
        """
        UPDATE jobs SET
            (last_success_us, last_success_offset) = (
                SELECT ts_us, ts_offset FROM backups
                WHERE job_id = jobs.id AND outcome = 'Success' ORDER BY ts_us DESC LIMIT 1
            )
        """,
        """
        UPDATE jobs SET
            (consecutive_failures, failing_since_us) = (
                SELECT count(*), min(ts_us) FROM backups
                WHERE job_id = jobs.id AND outcome = 'Error'
                AND (jobs.last_success_us IS NULL OR ts_us > jobs.last_success_us)
            )
        """,
        """
        UPDATE jobs SET failing_since_offset = (
            SELECT ts_offset FROM backups WHERE job_id = jobs.id AND ts_us = jobs.failing_since_us
        )
        """,
        """
        UPDATE jobs SET recent = (
            SELECT coalesce(group_concat(ts_us || ':' || ts_offset, ' '), '') FROM (
                SELECT ts_us, ts_offset FROM backups
                WHERE job_id = jobs.id ORDER BY ts_us DESC LIMIT 10
            )
        )
        """,
    ),
)

#: Every migration, in order: the one at index ``i`` brings a database to version ``i + 1``.
MIGRATIONS: Final[tuple[Migration, ...]] = (
    _SCHEMA,
    _READ_INDEXES,
    _NAME_KEYS,
    _ENTRY_NAME_KEYS,
    _JOB_HEALTH,
)


def schema_version(connection: sqlite3.Connection) -> int:
    """The version a database is at: the number of migrations applied to it."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    return int(version)


def apply_migrations(
    connection: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Apply the pending migrations in order, each in its own transaction; return how many.

    ``connection`` must be in autocommit mode (``isolation_level=None``) with no transaction
    open. A database at a version newer than the last migration is refused with
    :class:`StoreError`: this code does not know its schema.
    """
    check_versions(migrations)
    latest = len(migrations)
    version = schema_version(connection)
    if version > latest:
        msg = (
            f"the database is at schema version {version}, newer than this bmserver knows"
            f" ({latest}); upgrade bmserver"
        )
        raise StoreError(msg)
    applied = 0
    for migration in migrations[version:]:
        # IMMEDIATE takes the write lock first, so that two processes starting on the same new
        # file cannot both apply a migration: the second one finds the new version and skips.
        connection.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(connection) >= migration.version:
                connection.execute("COMMIT")
                continue
            for statement in migration.statements:
                connection.execute(statement)
            if migration.backfill is not None:
                _backfill(connection, migration.backfill)
            # PRAGMA takes no parameters; the version is an int from our own list.
            connection.execute(f"PRAGMA user_version = {migration.version:d}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        applied += 1
    return applied


def _backfill(connection: sqlite3.Connection, backfill: Backfill) -> None:
    read = [connection.execute(query).fetchall() for query in backfill.reads]
    for statement, rows in zip(backfill.writes, backfill.plan(read), strict=True):
        connection.executemany(statement, rows)
