"""The versioned schema of the PostgreSQL store, and the code that brings a database up to date.

The same mechanism as the SQLite store's (:mod:`bmserver.storage._sqlite_migrations`): a list
of :class:`~bmserver.storage._migrations.Migration`, each applied in its own transaction together
with the record of its version, so that a migration is applied completely or not at all. Version
``N`` means the same schema in both stores, in each one's own SQL.

PostgreSQL has no ``user_version``: the versions applied are rows of ``bm_schema_migrations``
(prefixed, because a database shared with other software may already hold a
``schema_migrations`` of another tool). Several bmserver processes may start at once on one
database, so each migration runs under ``pg_advisory_xact_lock``, keyed on the schema the
tables go to, and re-reads the version once it holds the lock: the first process applies the
migration, the others wait for its commit, find the new version and skip it.

Timestamps are ``timestamptz`` (exact microseconds, ordered as instants, readable by anyone
with psql) plus the UTC offset that was sent, in minutes (``*_offset``), which gives the original
wall-clock reading back. ``seq`` is an identity column: the order of insertion, which breaks
ties between equal times in the read side's ordering and makes the pagination key unique.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from bmserver.storage._contract import StoreError
from bmserver.storage._migrations import (
    REKEY_READS,
    Backfill,
    Migration,
    check_versions,
    rekey_devices_and_jobs,
)

__all__ = ["LOCK_CLASS", "MIGRATIONS", "VERSION_TABLE", "apply_migrations", "schema_version"]

#: The table that records which migrations a schema has had.
VERSION_TABLE: Final = "bm_schema_migrations"

#: The first key of the migrations' advisory lock: "bmig", so that bmserver's lock cannot be
#: mistaken for another application's; the second key is ``hashtext(schema name)``.
LOCK_CLASS: Final = 0x626D6967

_SCHEMA: Final = Migration(
    version=1,
    description="accounts, keys, devices, jobs, backups and notifications",
    statements=(
        """
        CREATE TABLE accounts (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            name text NOT NULL UNIQUE,
            created_at timestamptz NOT NULL,
            created_offset smallint NOT NULL
        )
        """,
        """
        CREATE TABLE api_keys (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            account_id text NOT NULL REFERENCES accounts (id),
            key_hash text NOT NULL UNIQUE,
            prefix text NOT NULL,
            scopes text[] NOT NULL,  -- the scope values, sorted
            created_at timestamptz NOT NULL,
            created_offset smallint NOT NULL,
            revoked_at timestamptz,
            revoked_offset smallint,
            CHECK ((revoked_at IS NULL) = (revoked_offset IS NULL))
        )
        """,
        "CREATE INDEX api_keys_by_prefix ON api_keys (prefix)",
        """
        CREATE TABLE devices (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            account_id text NOT NULL REFERENCES accounts (id),
            digest text NOT NULL,  -- bmcore.DeviceKey digest
            sender text NOT NULL,
            device_name text NOT NULL,
            created_at timestamptz NOT NULL,
            created_offset smallint NOT NULL,
            last_seen_at timestamptz NOT NULL,
            last_seen_offset smallint NOT NULL,
            UNIQUE (account_id, digest)
        )
        """,
        """
        CREATE TABLE jobs (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            account_id text NOT NULL REFERENCES accounts (id),
            device_id text NOT NULL REFERENCES devices (id),
            digest text NOT NULL,  -- bmcore.JobKey digest
            sender text NOT NULL,
            device_name text NOT NULL,
            job_name text NOT NULL,
            created_at timestamptz NOT NULL,
            created_offset smallint NOT NULL,
            UNIQUE (account_id, digest)
        )
        """,
        """
        CREATE TABLE backups (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            account_id text NOT NULL REFERENCES accounts (id),
            device_id text NOT NULL REFERENCES devices (id),
            job_id text NOT NULL REFERENCES jobs (id),
            ts timestamptz NOT NULL,
            ts_offset smallint NOT NULL,
            sender text NOT NULL,
            device_name text NOT NULL,
            job_name text NOT NULL,
            status text NOT NULL,
            outcome text NOT NULL,
            message text NOT NULL,
            content_hash bytea NOT NULL,  -- SHA-256 of bmcore.encode_backup(entry)
            received_at timestamptz NOT NULL,
            received_offset smallint NOT NULL,
            UNIQUE (job_id, ts)  -- the idempotency key; also finds a job's latest entry
        )
        """,
        """
        CREATE TABLE notifications (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            account_id text NOT NULL REFERENCES accounts (id),
            device_id text NOT NULL REFERENCES devices (id),
            job_id text REFERENCES jobs (id),
            ts timestamptz NOT NULL,
            ts_offset smallint NOT NULL,
            sender text NOT NULL,
            device_name text NOT NULL,
            job_name text,
            severity text NOT NULL,
            type text NOT NULL,
            message text,
            content_hash bytea NOT NULL,  -- SHA-256 of bmcore.encode_notification(notification)
            received_at timestamptz NOT NULL,
            received_offset smallint NOT NULL,
            UNIQUE (account_id, content_hash)  -- the idempotency key
        )
        """,
    ),
)

# The read side lists newest first within one account, optionally filtered by a name. Unlike
# SQLite's, a PostgreSQL index does not end with the row's position, so each one names the
# whole sort key (time, seq): a backward index scan then yields the rows in order, with no sort.
_READ_INDEXES: Final = Migration(
    version=2,
    description="indexes for the read side's listings and filters",
    statements=(
        "CREATE INDEX devices_newest ON devices (account_id, created_at, seq)",
        "CREATE INDEX jobs_newest ON jobs (account_id, created_at, seq)",
        "CREATE INDEX jobs_by_device_name ON jobs (account_id, device_name, created_at, seq)",
        "CREATE INDEX backups_newest ON backups (account_id, ts, seq)",
        "CREATE INDEX backups_by_device_name ON backups (account_id, device_name, ts, seq)",
        "CREATE INDEX backups_by_job_name ON backups (account_id, job_name, ts, seq)",
        "CREATE INDEX notifications_newest ON notifications (account_id, ts, seq)",
        "CREATE INDEX notifications_by_device ON notifications (account_id, device_name, ts, seq)",
        "CREATE INDEX notifications_by_type ON notifications (account_id, type, ts, seq)",
    ),
)

# As SQLite's migration 3 (see there, and rekey_devices_and_jobs for the re-keying and its rule
# for digests that collide). The defaults fill the rows there are and are dropped at once, so
# that an insert that forgets a canonical name fails instead of storing ''. The backfill runs
# in the migration's transaction, under its advisory lock: one process computes it, and the
# others wait for the commit and skip the migration.
_NAME_KEYS: Final = Migration(
    version=3,
    description="canonical names of devices and jobs; keys without invisible characters",
    statements=(
        (
            "ALTER TABLE devices ADD COLUMN sender_key text NOT NULL DEFAULT '',"
            " ADD COLUMN device_name_key text NOT NULL DEFAULT ''"
        ),
        (
            "ALTER TABLE devices ALTER COLUMN sender_key DROP DEFAULT,"
            " ALTER COLUMN device_name_key DROP DEFAULT"
        ),
        (
            "ALTER TABLE jobs ADD COLUMN sender_key text NOT NULL DEFAULT '',"
            " ADD COLUMN device_name_key text NOT NULL DEFAULT '',"
            " ADD COLUMN job_name_key text NOT NULL DEFAULT ''"
        ),
        (
            "ALTER TABLE jobs ALTER COLUMN sender_key DROP DEFAULT,"
            " ALTER COLUMN device_name_key DROP DEFAULT, ALTER COLUMN job_name_key DROP DEFAULT"
        ),
        (
            "CREATE INDEX jobs_by_device_name_key"
            " ON jobs (account_id, device_name_key, created_at, seq)"
        ),
        "DROP INDEX jobs_by_device_name",
    ),
    backfill=Backfill(
        reads=REKEY_READS,
        plan=rekey_devices_and_jobs,
        writes=(
            "UPDATE devices SET digest = %s, sender_key = %s, device_name_key = %s WHERE id = %s",
            (
                "UPDATE jobs SET digest = %s, sender_key = %s, device_name_key = %s,"
                " job_name_key = %s WHERE id = %s"
            ),
        ),
    ),
)

# As SQLite's migration 4: entries copy their canonical names from their device and job rows,
# one UPDATE each (a join, where SQLite looks each row up), then the filters' indexes change.
_ENTRY_NAME_KEYS: Final = Migration(
    version=4,
    description="canonical names of backups and notifications, and their filters' indexes",
    statements=(
        (
            "ALTER TABLE backups ADD COLUMN sender_key text NOT NULL DEFAULT '',"
            " ADD COLUMN device_name_key text NOT NULL DEFAULT '',"
            " ADD COLUMN job_name_key text NOT NULL DEFAULT ''"
        ),
        (
            "ALTER TABLE notifications ADD COLUMN sender_key text NOT NULL DEFAULT '',"
            " ADD COLUMN device_name_key text NOT NULL DEFAULT '',"
            " ADD COLUMN job_name_key text"
        ),
        """
        UPDATE backups SET
            sender_key = devices.sender_key,
            device_name_key = devices.device_name_key,
            job_name_key = jobs.job_name_key
        FROM devices, jobs
        WHERE devices.id = backups.device_id AND jobs.id = backups.job_id
        """,
        """
        UPDATE notifications SET
            sender_key = devices.sender_key,
            device_name_key = devices.device_name_key,
            job_name_key = (SELECT job_name_key FROM jobs WHERE jobs.id = notifications.job_id)
        FROM devices
        WHERE devices.id = notifications.device_id
        """,
        (
            "ALTER TABLE backups ALTER COLUMN sender_key DROP DEFAULT,"
            " ALTER COLUMN device_name_key DROP DEFAULT, ALTER COLUMN job_name_key DROP DEFAULT"
        ),
        (
            "ALTER TABLE notifications ALTER COLUMN sender_key DROP DEFAULT,"
            " ALTER COLUMN device_name_key DROP DEFAULT"
        ),
        (
            "CREATE INDEX backups_by_device_name_key"
            " ON backups (account_id, device_name_key, ts, seq)"
        ),
        "CREATE INDEX backups_by_job_name_key ON backups (account_id, job_name_key, ts, seq)",
        (
            "CREATE INDEX notifications_by_device_name_key"
            " ON notifications (account_id, device_name_key, ts, seq)"
        ),
        "DROP INDEX backups_by_device_name",
        "DROP INDEX backups_by_job_name",
        "DROP INDEX notifications_by_device",
    ),
)

# As SQLite's migration 5 (see there): each job's summary of its backups, its schedule and its
# pause, on its row; the jobs there are get their summaries from their backups in SQL. The
# defaults stay: they are the summary of a new job, which an insert leaves to them.
_JOB_HEALTH: Final = Migration(
    version=5,
    description="each job's summary of its backups, its schedule and its pause",
    statements=(
        """
        ALTER TABLE jobs
            ADD COLUMN latest_backup_id text,
            ADD COLUMN latest_at timestamptz,
            ADD COLUMN latest_offset smallint,
            ADD COLUMN latest_status text,
            ADD COLUMN latest_outcome text,
            ADD COLUMN last_success_at timestamptz,
            ADD COLUMN last_success_offset smallint,
            ADD COLUMN consecutive_failures bigint NOT NULL DEFAULT 0,
            ADD COLUMN failing_since_at timestamptz,
            ADD COLUMN failing_since_offset smallint,
            ADD COLUMN recent text NOT NULL DEFAULT '',
            ADD COLUMN schedule text,
            ADD COLUMN scheduled_at timestamptz,
            ADD COLUMN scheduled_offset smallint,
            ADD COLUMN paused_at timestamptz,
            ADD COLUMN paused_offset smallint,
            ADD COLUMN resumes_at timestamptz,
            ADD COLUMN resumes_offset smallint
        """,
        """
        UPDATE jobs SET
            (latest_backup_id, latest_at, latest_offset, latest_status, latest_outcome) = (
                SELECT id, ts, ts_offset, status, outcome FROM backups
                WHERE backups.job_id = jobs.id ORDER BY ts DESC LIMIT 1
            )
        """,
        """
        UPDATE jobs SET
            (last_success_at, last_success_offset) = (
                SELECT ts, ts_offset FROM backups
                WHERE backups.job_id = jobs.id AND outcome = 'Success' ORDER BY ts DESC LIMIT 1
            )
        """,
        """
        UPDATE jobs SET
            (consecutive_failures, failing_since_at) = (
                SELECT count(*), min(ts) FROM backups
                WHERE backups.job_id = jobs.id AND outcome = 'Error'
                AND (jobs.last_success_at IS NULL OR ts > jobs.last_success_at)
            )
        """,
        """
        UPDATE jobs SET failing_since_offset = (
            SELECT ts_offset FROM backups
            WHERE backups.job_id = jobs.id AND backups.ts = jobs.failing_since_at
        )
        """,
        # The text that bmserver.storage._rows.recent_text writes. extract(epoch) is numeric,
        # exact to the microsecond, since PostgreSQL 14 (before, a double: exact once rounded
        # for the times of this era, not for the far future).
        """
        UPDATE jobs SET recent = coalesce((
            SELECT string_agg(
                round(extract(epoch FROM ts) * 1000000)::bigint || ':' || ts_offset, ' '
                ORDER BY ts
            ) FROM (
                SELECT ts, ts_offset FROM backups
                WHERE backups.job_id = jobs.id ORDER BY ts DESC LIMIT 10
            ) AS newest
        ), '')
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

_Connection = AsyncConnection[TupleRow]


async def schema_version(connection: _Connection) -> int:
    """The version the schema on the search path is at: 0 before the first migration."""
    # The catalog itself, not to_regclass(): that one looks names up in this session's cache,
    # which can still say "no such table" after waiting for the lock of a process that has
    # just created it; a query of pg_class sees what was committed before it started.
    cursor = await connection.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace"
        " ON pg_namespace.oid = pg_class.relnamespace"
        " WHERE nspname = current_schema() AND relname = %s)",
        (VERSION_TABLE,),
    )
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return 0
    cursor = await connection.execute("SELECT coalesce(max(version), 0) FROM bm_schema_migrations")
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def apply_migrations(
    connection: _Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Apply the pending migrations in order, each in its own transaction; return how many.

    ``connection`` must be in autocommit mode, with the search path naming the schema to
    migrate. A schema at a version newer than the last migration is refused with
    :class:`StoreError`: this code does not know its tables.
    """
    check_versions(migrations)
    schema = await _target_schema(connection)
    latest = len(migrations)
    version = await schema_version(connection)
    if version > latest:
        msg = (
            f"the database is at schema version {version}, newer than this bmserver knows"
            f" ({latest}); upgrade bmserver"
        )
        raise StoreError(msg)
    applied = 0
    for migration in migrations[version:]:
        async with connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(%s::integer, hashtext(%s))", (LOCK_CLASS, schema)
            )
            # Another process may have applied it while this one waited for the lock.
            if await schema_version(connection) >= migration.version:
                continue
            await _apply(connection, migration)
        applied += 1
    return applied


async def _target_schema(connection: _Connection) -> str:
    """The schema that new tables go to; StoreError when the search path names none that exists."""
    cursor = await connection.execute("SELECT current_schema()")
    row = await cursor.fetchone()
    if row is None or row[0] is None:
        msg = "no schema to create the tables in: the search path names none that exists"
        raise StoreError(f"{msg}; create the schema first")
    return str(row[0])


async def _apply(connection: _Connection, migration: Migration) -> None:
    if migration.version == 1:
        # The first migration starts a schema: the record of versions comes with it, in the
        # same transaction, so that a failed first migration leaves nothing behind.
        await connection.execute(
            """
            CREATE TABLE IF NOT EXISTS bm_schema_migrations (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
    for statement in migration.statements:
        await connection.execute(statement)
    if migration.backfill is not None:
        await _backfill(connection, migration.backfill)
    await connection.execute(
        "INSERT INTO bm_schema_migrations (version, description) VALUES (%s, %s)",
        (migration.version, migration.description),
    )


async def _backfill(connection: _Connection, backfill: Backfill) -> None:
    read: list[list[tuple[Any, ...]]] = []
    for query in backfill.reads:
        cursor = await connection.execute(query)
        read.append(await cursor.fetchall())
    for statement, rows in zip(backfill.writes, backfill.plan(read), strict=True):
        async with connection.cursor() as cursor:
            await cursor.executemany(statement, rows)
