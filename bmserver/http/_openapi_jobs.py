"""The OpenAPI description of /api/jobs (health, schedules and pauses) and /metrics."""

from __future__ import annotations

from typing import Any, Final

import bmcore
from bmserver.http._openapi_parts import (
    NO_STORE,
    RATE_HEADERS,
    READS_LIMITED,
    UNAUTHORIZED,
    problem,
)

__all__ = ["JOB_SCHEMAS", "job_paths"]

_DURATION: Final = {
    "type": "string",
    "pattern": r"^\s*(\d{1,10}[dhmsDHMS])+\s*$",
    "description": "A whole number and a unit, s, m, h or d, alone or combined: 24h, 90m, "
    "1h30m, 7d. Written back in the largest unit that divides it (24h as 1d).",
    "examples": ["24h", "90m"],
}
_OPTIONAL_TIME: Final = {"type": ["string", "null"], "description": "ISO 8601, UTC offset."}

_SCHEDULE: Final = {
    "type": "object",
    "description": "Either every (an interval), or cron (five fields, crontab(5)) read in "
    "timezone (an IANA name, UTC if absent): one of the two, not both. And grace, how long past "
    "the due time a job is late before it is missing. Cron follows Debian cron across daylight "
    "saving time.",
    "required": ["grace"],
    "properties": {
        "every": _DURATION,
        "cron": {"type": "string", "maxLength": 200, "examples": ["30 2 * * *"]},
        "timezone": {"type": "string", "examples": ["Europe/Berlin"], "default": "UTC"},
        "grace": _DURATION,
    },
    "additionalProperties": False,
}
_HEALTH: Final = {
    "type": "object",
    "required": [
        "state",
        "since",
        "nextDueAt",
        "lastReportAt",
        "lastSuccessAt",
        "consecutiveFailures",
    ],
    "description": "Judged from each report's own timestamp. state is the worst of timing "
    "(late past nextDueAt, missing past nextDueAt + grace) and the latest outcome (failing: "
    "Error, warning: Warning or Unknown, ok: Success); new before a scheduled job's first "
    "report, paused during a pause.",
    "properties": {
        "state": {"type": "string", "enum": [state.value for state in bmcore.JobState]},
        "since": _OPTIONAL_TIME,
        "nextDueAt": _OPTIONAL_TIME,
        "lastReportAt": _OPTIONAL_TIME,
        "lastSuccessAt": _OPTIONAL_TIME,
        "consecutiveFailures": {
            "type": "integer",
            "minimum": 0,
            "description": "Error reports after the latest Success, in timestamp order.",
        },
    },
}
_JOB: Final = {
    "type": "object",
    "required": [
        *("id", "deviceId", "deviceName", "jobName", "sender", "createdAt", "latest"),
        *("schedule", "suggestedSchedule", "pause", "health"),
    ],
    "properties": {
        "id": {"type": "string"},
        "deviceId": {"type": "string"},
        "deviceName": {"type": "string"},
        "jobName": {"type": "string"},
        "sender": {"type": "string"},
        "createdAt": {"type": "string"},
        "latest": {"type": ["object", "null"]},
        "schedule": {"oneOf": [{"$ref": "#/components/schemas/Schedule"}, {"type": "null"}]},
        "suggestedSchedule": {
            "description": "For a job without a schedule, from five or more reports: the median "
            "gap rounded to a common period, and a grace that covers the lateness seen.",
            "oneOf": [{"$ref": "#/components/schemas/Schedule"}, {"type": "null"}],
        },
        "pause": {
            "type": ["object", "null"],
            "properties": {"since": {"type": "string"}, "until": _OPTIONAL_TIME},
        },
        "health": {"$ref": "#/components/schemas/Health"},
    },
}

#: The schemas the job paths refer to.
JOB_SCHEMAS: Final = {"Schedule": _SCHEDULE, "Health": _HEALTH, "Job": _JOB}

_JOB_ID: Final = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^job_[0-9a-f]{16}$"},
}
_A_JOB: Final = {
    "description": "The job, with its schedule and health.",
    "headers": {**RATE_HEADERS, **NO_STORE},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
}
_SECURITY: Final[list[dict[str, list[str]]]] = [{"apiKey": []}]
#: /metrics also takes the key as a Bearer token: what Prometheus sends.
_METRICS_SECURITY: Final[list[dict[str, list[str]]]] = [{"apiKey": []}, {"bearer": []}]


def _manage(summary: str, body: dict[str, Any] | None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "security": _SECURITY,
        "parameters": [_JOB_ID],
        "responses": {
            "200": _A_JOB,
            "400": problem("An invalid body: errors names each field and what is expected."),
            "401": UNAUTHORIZED,
            "403": problem("The key lacks the manage scope."),
            "404": problem("No job of the key's account has this id."),
            "413": problem("The body is longer than 4096 bytes."),
            "429": READS_LIMITED,
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


def job_paths(listing: dict[str, Any]) -> dict[str, Any]:
    """The /api/jobs paths; ``listing`` is the document's description of a list endpoint."""
    listed = listing["get"]
    for parameter in listed["parameters"]:
        if parameter["name"] == "state":
            parameter["description"] = (
                "Comma-separated states (missing,failing,...): the jobs in those states now. "
                "A filtered page looks at 10,000 jobs at most, so it may hold fewer than limit "
                "items, even none, and a nextCursor: follow it until it is null."
            )
    listed["summary"] = "List jobs with their schedule and health"
    listed["security"] = _SECURITY
    return {
        "/api/jobs": listing,
        "/api/jobs/{job_id}": {
            "get": {
                "summary": "Get one job with its schedule and health",
                "security": _SECURITY,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _A_JOB,
                    "401": UNAUTHORIZED,
                    "403": problem("The key lacks the read scope."),
                    "404": problem("No job of the key's account has this id."),
                    "429": READS_LIMITED,
                },
            }
        },
        "/api/jobs/{job_id}/schedule": {
            "put": _manage("Set the job's schedule", {"$ref": "#/components/schemas/Schedule"}),
            "delete": _manage("Remove the job's schedule: judged on its outcome alone", None),
        },
        "/api/jobs/{job_id}/pause": {
            "post": _manage(
                "Pause the job: state paused until `until` (or until resumed); it is then due "
                "a period after the pause ends",
                {
                    "type": "object",
                    "properties": {"until": {**_OPTIONAL_TIME, "description": "In the future."}},
                    "additionalProperties": False,
                },
            )
        },
        "/api/jobs/{job_id}/resume": {"post": _manage("End the job's pause now", None)},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: the server's, and each job's health",
                "security": _METRICS_SECURITY,
                "responses": {
                    "200": {
                        "description": "The Prometheus text format, version 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": UNAUTHORIZED,
                    "403": problem("The key lacks the read scope."),
                    "429": READS_LIMITED,
                },
            }
        },
    }
