"""The read side: devices, jobs, backups and notifications of the key's own account."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Final, TypeVar

import attrs
from starlette.requests import Request
from starlette.responses import Response

import bmcore
from bmserver._problems import AsciiJSONResponse, ProblemError
from bmserver._settings import Settings
from bmserver._store import (
    ApiKeyRecord,
    BackupQuery,
    DeviceRecord,
    InvalidCursorError,
    JobRecord,
    NotificationQuery,
    Page,
    Scope,
    Store,
    StoredBackup,
    StoredNotification,
)

__all__ = ["ReadSide"]

T = TypeVar("T")

_OUTCOMES: Final = {outcome.value.casefold(): outcome.value for outcome in bmcore.Outcome}
_SEVERITIES: Final = {severity.value for severity in bmcore.Severity}


@attrs.frozen
class ReadSide:
    """The GET endpoints; each needs a key with the ``read`` scope and sees only its account."""

    settings: Settings
    store: Store
    authenticate: Callable[[Request, Scope], Awaitable[ApiKeyRecord]]

    async def devices(self, request: Request) -> Response:
        """GET /api/devices."""
        key = await self.authenticate(request, Scope.READ)
        params = _Params(request, self.settings, allowed={"limit", "cursor"})
        limit, cursor = params.page()
        params.done()
        page = await _paged(self.store.list_devices(key.account_id, limit=limit, cursor=cursor))
        return _page_response(page, _device_json)

    async def jobs(self, request: Request) -> Response:
        """GET /api/jobs: each job with its latest entry and outcome."""
        key = await self.authenticate(request, Scope.READ)
        params = _Params(request, self.settings, allowed={"limit", "cursor", "deviceName"})
        limit, cursor = params.page()
        device_name = params.text("deviceName")
        params.done()
        page = await _paged(
            self.store.list_jobs(
                key.account_id, device_name=device_name, limit=limit, cursor=cursor
            )
        )
        return _page_response(page, _job_json)

    async def backups(self, request: Request) -> Response:
        """GET /api/backups, newest first, with filters."""
        key = await self.authenticate(request, Scope.READ)
        params = _Params(
            request,
            self.settings,
            allowed={"limit", "cursor", "deviceName", "jobName", "sender", "outcome", "status"}
            | {"since", "until"},
        )
        limit, cursor = params.page()
        query = BackupQuery(
            device_name=params.text("deviceName"),
            job_name=params.text("jobName"),
            sender=params.text("sender"),
            outcome=params.choice("outcome", _OUTCOMES),
            status=params.text("status"),
            since=params.timestamp("since"),
            until=params.timestamp("until"),
        )
        params.done()
        page = await _paged(
            self.store.list_backups(key.account_id, query, limit=limit, cursor=cursor)
        )
        return _page_response(page, _backup_json)

    async def backup(self, request: Request) -> Response:
        """GET /api/backups/{id}: the entry a 201's Location names."""
        key = await self.authenticate(request, Scope.READ)
        entry_id = str(request.path_params["entry_id"])
        found = await self.store.get_backup(key.account_id, entry_id)
        if found is None:
            raise _no_entry("backup", entry_id)
        return AsciiJSONResponse(_backup_json(found))

    async def notification(self, request: Request) -> Response:
        """GET /api/notifications/{id}."""
        key = await self.authenticate(request, Scope.READ)
        entry_id = str(request.path_params["entry_id"])
        found = await self.store.get_notification(key.account_id, entry_id)
        if found is None:
            raise _no_entry("notification", entry_id)
        return AsciiJSONResponse(_notification_json(found))

    async def notifications(self, request: Request) -> Response:
        """GET /api/notifications, newest first, with filters."""
        key = await self.authenticate(request, Scope.READ)
        params = _Params(
            request,
            self.settings,
            allowed={"limit", "cursor", "deviceName", "jobName", "sender", "severity", "type"}
            | {"since", "until"},
        )
        limit, cursor = params.page()
        query = NotificationQuery(
            device_name=params.text("deviceName"),
            job_name=params.text("jobName"),
            sender=params.text("sender"),
            severity=params.choice("severity", {s: s for s in _SEVERITIES}),
            type=params.text("type"),
            since=params.timestamp("since"),
            until=params.timestamp("until"),
        )
        params.done()
        page = await _paged(
            self.store.list_notifications(key.account_id, query, limit=limit, cursor=cursor)
        )
        return _page_response(page, _notification_json)


def _no_entry(kind: str, entry_id: str) -> ProblemError:
    # Another account's entry is "not found" too: its existence is not revealed.
    return ProblemError(404, "not_found", f"this account has no {kind} with id {entry_id!r}")


async def _paged(listing: Awaitable[Page[T]]) -> Page[T]:
    try:
        return await listing
    except InvalidCursorError:
        raise ProblemError(
            400,
            "invalid_query",
            "the cursor is not one this server handed out; start again without a cursor",
            errors=(bmcore.FieldError(field="cursor", code="invalid_cursor", message="unknown"),),
        ) from None


_MAX_LIMIT_DIGITS = 9


class _Params:
    """Query parameters, checked one by one; every problem is reported at once by done()."""

    def __init__(self, request: Request, settings: Settings, *, allowed: set[str]) -> None:
        self._query = request.query_params
        self._settings = settings
        self.errors: list[bmcore.FieldError] = [
            bmcore.FieldError(
                field=name,
                code="unknown_parameter",
                message=f"{name} is not a parameter here; use one of {', '.join(sorted(allowed))}",
            )
            for name in self._query
            if name not in allowed
        ]

    def page(self) -> tuple[int, str | None]:
        limit = self._settings.default_page_size
        raw = self._query.get("limit")
        if raw is not None:
            # isascii: str.isdigit() accepts "²" and other digits that int() refuses; the
            # length: int() refuses more than 4300 digits, and no page is that large anyway.
            if (
                raw.isascii()
                and raw.isdigit()
                and len(raw) <= _MAX_LIMIT_DIGITS
                and 1 <= int(raw) <= self._settings.max_page_size
            ):
                limit = int(raw)
            else:
                shown = raw if len(raw) <= _MAX_LIMIT_DIGITS else raw[:_MAX_LIMIT_DIGITS] + "..."
                self.errors.append(
                    bmcore.FieldError(
                        field="limit",
                        code="invalid_limit",
                        message=f"limit must be a whole number from 1 to "
                        f"{self._settings.max_page_size}, got {shown!r}",
                    )
                )
        return limit, self._query.get("cursor") or None

    def text(self, name: str) -> str | None:
        return self._query.get(name) or None

    def choice(self, name: str, choices: dict[str, str]) -> str | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        value = choices.get(raw.casefold())
        if value is None:
            self.errors.append(
                bmcore.FieldError(
                    field=name,
                    code="invalid_choice",
                    message=f"{name} must be one of {', '.join(sorted(choices.values()))}, "
                    f"got {raw!r}",
                )
            )
        return value

    def timestamp(self, name: str) -> datetime | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        try:
            return bmcore.parse_timestamp(raw)
        except bmcore.TimestampError as error:
            self.errors.append(
                bmcore.FieldError(field=name, code=error.code, message=error.message)
            )
            return None

    def done(self) -> None:
        if self.errors:
            raise ProblemError(
                400,
                "invalid_query",
                f"{len(self.errors)} query parameter(s) are invalid; see errors",
                errors=tuple(self.errors),
            )


def _page_response(page: Page[T], to_json: Callable[[T], dict[str, object]]) -> Response:
    return AsciiJSONResponse(
        {"items": [to_json(item) for item in page.items], "nextCursor": page.next_cursor}
    )


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else bmcore.format_timestamp(moment)


def _device_json(device: DeviceRecord) -> dict[str, object]:
    return {
        "id": device.id,
        "deviceName": device.device_name,
        "sender": device.sender,
        "createdAt": _when(device.created_at),
        "lastSeenAt": _when(device.last_seen_at),
    }


def _job_json(job: JobRecord) -> dict[str, object]:
    latest = None
    if job.latest_backup_id is not None:
        latest = {
            "id": job.latest_backup_id,
            "timestamp": _when(job.latest_timestamp),
            "status": job.latest_status,
            "outcome": job.latest_outcome,
        }
    return {
        "id": job.id,
        "deviceId": job.device_id,
        "deviceName": job.device_name,
        "jobName": job.job_name,
        "sender": job.sender,
        "createdAt": _when(job.created_at),
        "latest": latest,
    }


def _backup_json(stored: StoredBackup) -> dict[str, object]:
    entry = stored.entry
    return {
        "id": stored.id,
        "deviceId": stored.device_id,
        "jobId": stored.job_id,
        "deviceName": entry.device_name,
        "jobName": entry.job_name,
        "timestamp": _when(entry.timestamp),
        "status": entry.status,
        "outcome": entry.outcome.value,
        "message": entry.message,
        "sender": entry.sender,
        "receivedAt": _when(stored.received_at),
    }


def _notification_json(stored: StoredNotification) -> dict[str, object]:
    item = stored.notification
    return {
        "id": stored.id,
        "deviceId": stored.device_id,
        "jobId": stored.job_id,
        "deviceName": item.device_name,
        "jobName": item.job_name,
        "timestamp": _when(item.timestamp),
        "severity": item.severity.value,
        "type": item.type,
        "message": item.message,
        "sender": item.sender,
        "receivedAt": _when(stored.received_at),
    }
