"""Schema migrations as both SQL stores have them: the records, and what they compute alike.

Each dialect's migrations (:mod:`bmserver.storage._sqlite_migrations`,
:mod:`bmserver.storage._postgres_migrations`) are an ordered list of :class:`Migration`: SQL
statements, and optionally a :class:`Backfill`, data that only Python can compute (bmcore's
canonical names and digests), filled in after the statements in the same transaction. Version
``N`` means the same schema in both stores, in each one's own SQL. A migration is applied
completely or not at all, together with the record of its version. Released migrations are
never edited; a change of schema is a new one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, LiteralString

import attrs

import bmcore

__all__ = [
    "REKEY_READS",
    "Backfill",
    "Migration",
    "ReadRows",
    "WriteRows",
    "check_versions",
    "rekey_devices_and_jobs",
]

#: The rows of each query of a backfill's ``reads``, in order.
ReadRows = Sequence[Sequence[tuple[Any, ...]]]
#: The parameter rows of each statement of a backfill's ``writes``, in order.
WriteRows = Sequence[Sequence[tuple[object, ...]]]


@attrs.frozen(kw_only=True)
class Backfill:
    """Data a migration computes in Python, after its statements and in their transaction.

    The queries of ``reads`` run first; ``plan`` turns their rows into one list of parameter
    rows per statement of ``writes``, and each statement then runs once per row, in order. The
    plan is a pure function, tested without a database and shared by the SQLite and PostgreSQL
    migrations, which differ only in their SQL.
    """

    reads: tuple[LiteralString, ...]
    plan: Callable[[ReadRows], WriteRows]
    writes: tuple[LiteralString, ...]


@attrs.frozen(kw_only=True)
class Migration:
    """One step of the schema: the version it brings a database to, and its statements."""

    version: int
    description: str
    #: Literal SQL only (never text built from values): psycopg's execute() insists on it.
    statements: tuple[LiteralString, ...]
    #: Run after the statements, in the same transaction.
    backfill: Backfill | None = None


def rekey_devices_and_jobs(tables: ReadRows) -> WriteRows:
    r"""The canonical names and digests of every device and job row, by today's bmcore rules.

    Reads ``devices`` as (id, account_id, digest, sender, device_name) and ``jobs`` as (id,
    account_id, device_id, digest, sender, device_name, job_name), each oldest first; gives the
    updates (digest, sender_key, device_name_key, id) of every device and (digest, sender_key,
    device_name_key, job_name_key, id) of every job, to run in that order.

    The canonical names are those of each row's own names. The digest is the one bmcore gives
    the row's names now, so that future reports find the row; it differs from the stored one
    only for names with default-ignorable characters, whose canonical form changed when
    canonical_name began to remove them (``srv\u200b01`` now has the key of ``srv01``).

    When the new digest is already held by another row of the same account (``srv01`` and
    ``srv\u200b01`` were stored as two devices), nothing is merged and nothing is lost: the row
    that holds it keeps it, since reports of that name already match it, and the other row keeps
    its old digest. That row is retired: no report computes its digest any more, so new
    entries go to the row that holds the new digest, while the retired row, its jobs and its
    entries stay as they are, listed and found by id and by the name filters (its canonical
    names are set like any other row's). Among rows that all need one free digest, the oldest
    gets it. A job moves to its new digest only when that digest is free and the device that
    holds the job's new device digest is its own device, so that no job of a live key belongs
    to a retired device; the jobs of a retired device are retired with it.

    Each update is checked against the rows as they are at that point of the sequence, so that
    running the updates in order never violates the UNIQUE (account_id, digest) constraints.
    """
    devices, jobs = tables
    device_at: dict[tuple[str, str], str] = {
        (account_id, digest): device_id for device_id, account_id, digest, *_ in devices
    }
    device_updates: list[tuple[object, ...]] = []
    for device_id, account_id, digest, sender, device_name in devices:
        device_key = bmcore.DeviceKey.of(sender, device_name)
        kept = digest
        if device_key.digest != digest and (account_id, device_key.digest) not in device_at:
            del device_at[account_id, digest]
            device_at[account_id, device_key.digest] = device_id
            kept = device_key.digest
        device_updates.append((kept, device_key.sender, device_key.device_name, device_id))
    held_jobs = {(account_id, digest) for _, account_id, _, digest, *_ in jobs}
    job_updates: list[tuple[object, ...]] = []
    for job_id, account_id, device_id, digest, sender, device_name, job_name in jobs:
        job_key = bmcore.JobKey.of(sender, device_name, job_name)
        kept = digest
        if (
            job_key.digest != digest
            and (account_id, job_key.digest) not in held_jobs
            and device_at.get((account_id, job_key.device.digest)) == device_id
        ):
            held_jobs.remove((account_id, digest))
            held_jobs.add((account_id, job_key.digest))
            kept = job_key.digest
        job_updates.append((kept, job_key.sender, job_key.device_name, job_key.job_name, job_id))
    return [device_updates, job_updates]


#: What rekey_devices_and_jobs reads, the same SQL in both dialects.
REKEY_READS: Final[tuple[LiteralString, ...]] = (
    "SELECT id, account_id, digest, sender, device_name FROM devices ORDER BY seq",
    (
        "SELECT id, account_id, device_id, digest, sender, device_name, job_name FROM jobs"
        " ORDER BY seq"
    ),
)


def check_versions(migrations: Sequence[Migration]) -> None:
    """Refuse a list whose versions are not 1, 2, 3, ... in order (ValueError), before any runs.

    Both dialects' ``apply_migrations`` check their list first.
    """
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            msg = (
                f"migration {migration.description!r} has version {migration.version}, not {index}"
            )
            raise ValueError(msg)
