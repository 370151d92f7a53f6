"""The OpenAPI 3.1 document served at /openapi.json, built from bmcore's limits."""

from __future__ import annotations

from typing import Any, Final

import bmcore
from bmserver._settings import Settings
from bmserver.http._openapi_jobs import JOB_SCHEMAS, job_paths
from bmserver.http._openapi_parts import (
    NO_STORE,
    RATE_HEADERS,
    READS_LIMITED,
    UNAUTHORIZED,
    problem,
)

__all__ = ["openapi_document"]

_NAME: Final = {
    "type": "string",
    "minLength": 1,
    "maxLength": bmcore.MAX_NAME_LENGTH,
    "description": "Not blank, no control characters.",
}
_TIMESTAMP: Final = {
    "type": "string",
    "description": "ISO 8601 with a UTC offset, e.g. 2024-06-04T14:00:00+02:00 or "
    "2024-06-04T12:00:00Z. At most 24 h ahead of the server (5 min gives warning clock_skew), "
    "not before 2000-01-01.",
    "examples": ["2024-06-04T14:00:00+02:00"],
}
_SENDER: Final = {
    **_NAME,
    "default": bmcore.DEFAULT_SENDER,
    "description": "Source identifier; with deviceName (and jobName) it decides which device and "
    "job the entry is matched to. null means absent.",
}
_MESSAGE: Final = {
    "type": "string",
    "description": f"Longer than {bmcore.MAX_MESSAGE_LENGTH} characters is truncated (warning "
    "message_truncated). No NUL characters.",
}

_BACKUP: Final = {
    "type": "object",
    "required": ["deviceName", "jobName", "timestamp", "status", "message"],
    "properties": {
        "deviceName": _NAME,
        "jobName": _NAME,
        "timestamp": _TIMESTAMP,
        "status": {
            "type": "string",
            "minLength": 1,
            "maxLength": bmcore.MAX_STATUS_LENGTH,
            "description": "Stored as sent. Success, Warning or Error (any case) give the outcome; "
            "anything else is outcome Unknown with warning unknown_status.",
            "examples": ["Success", "Warning", "Error"],
        },
        "message": _MESSAGE,
        "sender": _SENDER,
    },
    "additionalProperties": True,
}
_NOTIFICATION: Final = {
    "type": "object",
    "required": ["deviceName", "timestamp", "severity", "type"],
    "properties": {
        "deviceName": _NAME,
        "timestamp": _TIMESTAMP,
        "severity": {
            "type": "string",
            "enum": [severity.value for severity in bmcore.Severity],
            "description": "Any case; stored lowercase.",
        },
        "type": {
            "type": "string",
            "minLength": 1,
            "maxLength": bmcore.MAX_TYPE_LENGTH,
            "pattern": r"^\S+$",
            "examples": ["disk_space_low", "ssl_expiry"],
        },
        "jobName": {**_NAME, "type": ["string", "null"]},
        "message": {**_MESSAGE, "type": ["string", "null"]},
        "sender": {**_SENDER, "type": ["string", "null"]},
    },
    "additionalProperties": True,
}
_PROBLEM: Final = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "code", "message"],
                "properties": {
                    "field": {"type": "string", "description": "JSON pointer"},
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
_ACCEPTED: Final = {
    "type": "object",
    "required": ["id", "kind", "receivedAt", "duplicate", "device", "warnings", "ignoredFields"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["backup", "notification"]},
        "receivedAt": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "device": {"$ref": "#/components/schemas/Matched"},
        "job": {"$ref": "#/components/schemas/Matched"},
        "outcome": {"type": "string", "enum": [outcome.value for outcome in bmcore.Outcome]},
        "warnings": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
            },
        },
        "ignoredFields": {"type": "array", "items": {"type": "string"}},
    },
}


def _ingest(summary: str, schema: str, settings: Settings) -> dict[str, Any]:
    accepted = {"schema": {"$ref": "#/components/schemas/Accepted"}}
    rate = RATE_HEADERS
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "requestBody": {
                "required": True,
                "description": f"At most {settings.max_body_bytes} bytes, also after "
                "Content-Encoding: gzip.",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
                },
            },
            "responses": {
                "201": {
                    "description": "Stored.",
                    "headers": {"Location": {"schema": {"type": "string"}}, **rate, **NO_STORE},
                    "content": {"application/json": accepted},
                },
                "200": {
                    "description": "An idempotent repeat: nothing new stored.",
                    "headers": {**rate, **NO_STORE},
                    "content": {"application/json": accepted},
                },
                "400": problem(
                    "Invalid JSON or fields (errors lists every field error), or a gzip body "
                    "that is truncated or has data after its one member."
                ),
                "401": UNAUTHORIZED,
                "403": problem("The key lacks the ingest scope."),
                "408": problem("The body did not arrive in time."),
                "409": problem("The same job and timestamp hold different content."),
                "413": problem("The body is too large."),
                "415": problem("The body is not JSON, or its encoding is not supported."),
                "429": problem(
                    "The key's ingest quota is used up, or this address failed to "
                    "authenticate too often.",
                    headers={"Retry-After": {"schema": {"type": "integer"}}, **rate},
                ),
                "503": problem(
                    "The database failed, or the rate limiter cannot be reached and the server "
                    "is set to fail closed; retry after Retry-After.",
                    headers={"Retry-After": {"schema": {"type": "integer"}}},
                ),
            },
        }
    }


_NAME_FILTERS: Final = frozenset({"deviceName", "jobName", "sender"})


def _listing(summary: str, parameters: list[str], settings: Settings) -> dict[str, Any]:
    def described(name: str) -> dict[str, Any]:
        parameter: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
        }
        if name in _NAME_FILTERS:
            parameter["description"] = (
                "Matches names as reports are matched: case, surrounding and repeated "
                "whitespace and invisible characters aside. A value no report could carry "
                "(a control character, too long) is a 400."
            )
        return parameter

    return {
        "get": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "parameters": [described(name) for name in ["limit", "cursor", *parameters]],
            "responses": {
                "200": {
                    "description": "A page, newest first: {items, nextCursor}. It holds at most "
                    f"limit items and {settings.max_page_bytes} bytes (at least one item); "
                    "nextCursor continues after its last item.",
                    "headers": {**RATE_HEADERS, **NO_STORE},
                },
                "400": problem("Invalid query parameters."),
                "401": UNAUTHORIZED,
                "403": problem("The key lacks the read scope."),
                "429": READS_LIMITED,
            },
        }
    }


def _item(summary: str, schema: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [{"apiKey": []}],
            "parameters": [
                {
                    "name": "entry_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[a-z]+_[0-9a-f]{16}$"},
                }
            ],
            "responses": {
                "200": {
                    "description": f"The stored {schema}, with its id and matched device and job."
                },
                "401": UNAUTHORIZED,
                "403": problem("The key lacks the read scope."),
                "404": problem("No entry of the key's account has this id."),
                "429": READS_LIMITED,
            },
        }
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 description of this server."""
    filters = ["deviceName", "jobName", "sender", "since", "until"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "BackupMonitor Custom Ingest API (bm-ingest)",
            "version": "1",
            "description": "Paths have no trailing slash: one is answered 404, never redirected.",
        },
        "paths": {
            "/api/ingest/backup": _ingest("Post a backup entry", "BackupEntry", settings),
            "/api/ingest/notification": _ingest("Post a notification", "Notification", settings),
            "/api/devices": _listing("List devices", [], settings),
            **job_paths(_listing("List jobs", ["deviceName", "state"], settings)),
            "/api/backups": _listing("List backups", [*filters, "outcome", "status"], settings),
            "/api/notifications": _listing(
                "List notifications", [*filters, "severity", "type"], settings
            ),
            "/api/backups/{entry_id}": _item("Get one backup", "backup"),
            "/api/notifications/{entry_id}": _item("Get one notification", "notification"),
            "/healthz": {"get": {"summary": "Health", "responses": {"200": {"description": "OK"}}}},
        },
        "components": {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "The same key."},
            },
            "schemas": {
                "BackupEntry": _BACKUP,
                "Notification": _NOTIFICATION,
                "Problem": _PROBLEM,
                "Accepted": _ACCEPTED,
                **JOB_SCHEMAS,
                "Matched": {
                    "type": "object",
                    "required": ["id", "created"],
                    "properties": {"id": {"type": "string"}, "created": {"type": "boolean"}},
                },
            },
        },
    }
