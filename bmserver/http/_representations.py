"""The JSON the read side answers with: one function per kind of record.

Every answer is ASCII JSON: a stored text may hold anything a client sent.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

import bmcore
from bmserver.storage._contract import DeviceRecord, JobRecord, StoredBackup, StoredNotification

__all__ = [
    "PAGE_ENVELOPE_BYTES",
    "backup_json",
    "device_json",
    "job_health",
    "job_identity_json",
    "job_json",
    "json_bytes",
    "notification_json",
    "page_body",
    "when",
]


# ASCII: a stored text may hold anything a client sent, and every answer is escaped JSON. One
# encoder for all: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def json_bytes(value: object) -> bytes:
    """``value`` as compact ASCII JSON."""
    return _ENCODER.encode(value).encode("ascii")


#: What a page holds besides its items: ``{"items":[`` ... ``],"nextCursor":"..."}``, with room
#: for the longest cursor a store hands out (far below 100 characters).
PAGE_ENVELOPE_BYTES: Final = len(b'{"items":[],"nextCursor":""}') + 100


def page_body(parts: list[bytes], cursor: str | None) -> bytes:
    """A page's JSON from its encoded items and the cursor after them."""
    return b"".join((b'{"items":[', b",".join(parts), b'],"nextCursor":', json_bytes(cursor), b"}"))


def when(moment: datetime | None) -> str | None:
    return None if moment is None else bmcore.format_timestamp(moment)


def device_json(device: DeviceRecord) -> dict[str, object]:
    return {
        "id": device.id,
        "deviceName": device.device_name,
        "sender": device.sender,
        "createdAt": when(device.created_at),
        "lastSeenAt": when(device.last_seen_at),
    }


def job_health(job: JobRecord, now: datetime) -> bmcore.JobHealth:
    """The job's health at ``now``, from what its record holds (no history is read)."""
    return bmcore.assess(
        job.schedule, job.summary, now, scheduled_at=job.scheduled_at, pause=job.pause
    )


def job_json(
    job: JobRecord, now: datetime, health: bmcore.JobHealth | None = None
) -> dict[str, object]:
    """A job with its latest backup, schedule (or the suggested one), pause and health."""
    health = health or job_health(job, now)
    suggestion = None if job.schedule is not None else bmcore.suggest_schedule(job.summary.recent)
    pause = None
    if job.pause is not None:
        pause = {"since": when(job.pause.since), "until": when(job.pause.until)}
    identity = job_identity_json(job)
    # The latest report's time stands in up to four places: formatted once.
    latest = job.summary.latest_at
    latest_text = when(latest)

    def at(moment: datetime | None) -> str | None:
        return latest_text if moment is latest else when(moment)

    return {
        **identity,
        "schedule": None if job.schedule is None else job.schedule.to_wire(),
        "suggestedSchedule": None if suggestion is None else suggestion.to_wire(),
        "pause": pause,
        "health": {
            "state": health.state.value,
            "since": at(health.since),
            "nextDueAt": when(health.next_due_at),
            "lastReportAt": at(health.last_report_at),
            "lastSuccessAt": at(health.last_success_at),
            "consecutiveFailures": health.consecutive_failures,
        },
    }


def job_identity_json(job: JobRecord) -> dict[str, object]:
    """A job's names and ids and its latest backup: what a job was before it had health."""
    latest = None
    if job.latest_backup_id is not None:
        latest = {
            "id": job.latest_backup_id,
            "timestamp": when(job.latest_timestamp),
            "status": job.latest_status,
            "outcome": job.latest_outcome,
        }
    return {
        "id": job.id,
        "deviceId": job.device_id,
        "deviceName": job.device_name,
        "jobName": job.job_name,
        "sender": job.sender,
        "createdAt": when(job.created_at),
        "latest": latest,
    }


def backup_json(stored: StoredBackup) -> dict[str, object]:
    entry = stored.entry
    return {
        "id": stored.id,
        "deviceId": stored.device_id,
        "jobId": stored.job_id,
        "deviceName": entry.device_name,
        "jobName": entry.job_name,
        "timestamp": when(entry.timestamp),
        "status": entry.status,
        "outcome": entry.outcome.value,
        "message": entry.message,
        "sender": entry.sender,
        "receivedAt": when(stored.received_at),
    }


def notification_json(stored: StoredNotification) -> dict[str, object]:
    item = stored.notification
    return {
        "id": stored.id,
        "deviceId": stored.device_id,
        "jobId": stored.job_id,
        "deviceName": item.device_name,
        "jobName": item.job_name,
        "timestamp": when(item.timestamp),
        "severity": item.severity.value,
        "type": item.type,
        "message": item.message,
        "sender": item.sender,
        "receivedAt": when(stored.received_at),
    }
