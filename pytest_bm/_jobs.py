"""The fake's view of its jobs: find one by its names, set its schedule, assess its health.

A downstream test configures the schedule its script is meant to keep, advances the fake's
clock, and asserts the job's health, as bmserver would judge it::

    fake.set_schedule(device="srv01", job="Nightly", every="24h", grace="1h")
    fake.clock.advance(25 * 3600)
    assert fake.job_health(device="srv01", job="Nightly").state is bmcore.JobState.LATE
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Final

import attrs

import bmcore
from bmserver import JobRecord, MemoryStore, run_unsuspended

__all__ = ["JobNames", "find_job", "job_health", "set_job_schedule"]

_REFUSAL: Final = "a MemoryStore call suspended, which its contract rules out"
_PAGE: Final = 1000


def set_job_schedule(
    store: MemoryStore, where: JobNames, fields: Mapping[str, str], *, now: datetime
) -> dict[str, str]:
    """Give the job a schedule from its wire fields; its canonical form.

    Raises :class:`bmcore.PayloadError` naming each field at fault, LookupError (see
    :func:`find_job`) when no job has these names.
    """
    schedule = bmcore.parse_schedule(fields)
    found = find_job(store, where, now=now)
    run_unsuspended(
        store.set_schedule(found.account_id, found.id, schedule, now=now), refusal=_REFUSAL
    )
    return schedule.to_wire()


def job_health(store: MemoryStore, where: JobNames, *, now: datetime) -> bmcore.JobHealth:
    """The job's health at ``now``, as ``GET /api/jobs/{id}`` reports it."""
    found = find_job(store, where, now=now)
    return bmcore.assess(
        found.schedule, found.summary, now, scheduled_at=found.scheduled_at, pause=found.pause
    )


@attrs.frozen
class JobNames:
    """A job as a test names it: its account, device, job and sender, as they were sent."""

    account: str
    device: str
    job: str
    sender: str


def find_job(store: MemoryStore, where: JobNames, *, now: datetime) -> JobRecord:
    """The job of these names, compared as reports are matched; or LookupError naming the jobs."""
    account, device, job, sender = where.account, where.device, where.job, where.sender
    owner = run_unsuspended(store.create_account(account, now=now), refusal=_REFUSAL)
    wanted = bmcore.JobKey.of(sender, device, job)
    known: list[str] = []
    cursor: str | None = None
    while True:
        page = run_unsuspended(
            store.list_jobs(owner.id, device_name=None, limit=_PAGE, cursor=cursor),
            refusal=_REFUSAL,
        )
        for record in page.items:
            if bmcore.JobKey.of(record.sender, record.device_name, record.job_name) == wanted:
                return record
            known.append(f"{record.device_name!r}/{record.job_name!r} (sender {record.sender!r})")
        cursor = page.next_cursor
        if cursor is None:
            break
    listed = "; ".join(known) or "none: no backup has arrived yet"
    msg = (
        f"no job {device!r}/{job!r} (sender {sender!r}) has reported to the fake in account "
        f"{account!r}: a job exists once its first backup arrived. Jobs known: {listed}"
    )
    raise LookupError(msg)
