"""The read side: devices, jobs, backups and notifications of the key's own account.

Every request needs a key with the ``read`` scope and counts against the key's read quota
(``Settings.read_rate_policy``, apart from ingest's). Query values are checked here, once for
every store, by the rules the fields had to pass when they were posted (bmcore.check_filter).

A page holds at most ``limit`` items and ``Settings.max_page_bytes`` bytes of JSON, then
``nextCursor``: a message may be 16,384 characters that ASCII escaping turns into 12 bytes each,
so a page of 1,000 could be 192 MB. Items are fetched from the store in chunks sized to what is
left of the budget and encoded in a worker thread, so that neither the memory a page takes nor
the time the event loop spends on it grows with what an account stored.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TypeVar

import attrs
from starlette.requests import Request
from starlette.responses import Response

import bmcore
from bmserver._clock import Clock
from bmserver._settings import Settings
from bmserver.http._gate import LimiterGate
from bmserver.http._problems import AsciiJSONResponse, Problem, ProblemError, shown
from bmserver.limits._contract import Limiter
from bmserver.storage._contract import (
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
#: Items fetched at first, before the size of an item is known.
_FIRST_CHUNK: Final = 50
#: Query errors listed in one answer: a huge query string is not echoed back whole.
_MAX_LISTED_ERRORS: Final = 20

#: A page's items fetched from ``cursor`` on: (limit, cursor) -> the store's page.
_Fetch = Callable[[int, str | None], Awaitable[Page[T]]]


@attrs.frozen
class ReadSide:
    """The GET endpoints; each needs a key with the ``read`` scope and sees only its account."""

    settings: Settings
    store: Store
    clock: Clock
    authenticate: Callable[[Request, Scope], Awaitable[ApiKeyRecord]]
    #: Read requests per key.
    limiter: Limiter
    gate: LimiterGate

    async def devices(self, request: Request) -> Response:
        """GET /api/devices."""
        key, headers = await self._admit(request)
        params = _Params(request, self.settings, allowed={"limit", "cursor"})
        limit, cursor = params.page()
        params.done()
        account = key.account_id
        return await self._page(
            lambda size, at: self.store.list_devices(account, limit=size, cursor=at),
            _device_json,
            limit=limit,
            cursor=cursor,
            headers=headers,
        )

    async def jobs(self, request: Request) -> Response:
        """GET /api/jobs: each job with its latest entry and outcome."""
        key, headers = await self._admit(request)
        params = _Params(request, self.settings, allowed={"limit", "cursor", "deviceName"})
        limit, cursor = params.page()
        device_name = params.text("deviceName")
        params.done()
        account = key.account_id
        return await self._page(
            lambda size, at: self.store.list_jobs(
                account, device_name=device_name, limit=size, cursor=at
            ),
            _job_json,
            limit=limit,
            cursor=cursor,
            headers=headers,
        )

    async def backups(self, request: Request) -> Response:
        """GET /api/backups, newest first, with filters."""
        key, headers = await self._admit(request)
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
        account = key.account_id
        return await self._page(
            lambda size, at: self.store.list_backups(account, query, limit=size, cursor=at),
            _backup_json,
            limit=limit,
            cursor=cursor,
            headers=headers,
        )

    async def backup(self, request: Request) -> Response:
        """GET /api/backups/{id}: the entry a 201's Location names."""
        return await self._entry(request, "backup", self.store.get_backup, _backup_json)

    async def notification(self, request: Request) -> Response:
        """GET /api/notifications/{id}."""
        return await self._entry(
            request, "notification", self.store.get_notification, _notification_json
        )

    async def _entry(
        self,
        request: Request,
        kind: str,
        get: Callable[[str, str], Awaitable[T | None]],
        to_json: Callable[[T], dict[str, object]],
    ) -> Response:
        """One entry of the key's account by the id in the path, or a 404 problem."""
        key, headers = await self._admit(request)
        entry_id = str(request.path_params["entry_id"])
        found = await get(key.account_id, entry_id) if _could_be_an_id(entry_id) else None
        if found is None:
            raise _no_entry(kind, entry_id, headers)
        return AsciiJSONResponse(to_json(found), headers=headers)

    async def notifications(self, request: Request) -> Response:
        """GET /api/notifications, newest first, with filters."""
        key, headers = await self._admit(request)
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
        account = key.account_id
        return await self._page(
            lambda size, at: self.store.list_notifications(account, query, limit=size, cursor=at),
            _notification_json,
            limit=limit,
            cursor=cursor,
            headers=headers,
        )

    async def _admit(self, request: Request) -> tuple[ApiKeyRecord, dict[str, str]]:
        """The request's key, charged one read: its record and the RateLimit headers."""
        key = await self.authenticate(request, Scope.READ)
        now_ns = self.clock.monotonic_ns()
        headers = await self.gate.admit(self.limiter, key.id, now_ns, what="read requests")
        return key, headers

    async def _page(
        self,
        fetch: _Fetch[T],
        to_json: Callable[[T], dict[str, object]],
        *,
        limit: int,
        cursor: str | None,
        headers: dict[str, str],
    ) -> Response:
        """One page of at most ``limit`` items and ``max_page_bytes`` of JSON, and its cursor."""
        budget = self.settings.max_page_bytes - _ENVELOPE_BYTES
        parts: list[bytes] = []
        size = 0
        chunk = min(limit, _FIRST_CHUNK)
        while True:
            page = await _paged(fetch(chunk, cursor))
            encoded = await _encoded(page.items, to_json, room=budget - size, first=not parts)
            if len(encoded) < len(page.items):
                # The budget ends inside this chunk. A cursor names the place after an item
                # only as the store hands it out, so ask for exactly the items that fit.
                if encoded:
                    page = await _paged(fetch(len(encoded), cursor))
                    # All of them, even if entries that arrived meanwhile made them longer:
                    # the cursor is after the last one.
                    whole = await _encoded(page.items, to_json, room=sys.maxsize, first=True)
                    parts.extend(whole)
                    cursor = page.next_cursor
                break
            parts.extend(encoded)
            size += sum(len(part) + 1 for part in encoded)
            cursor = page.next_cursor
            if cursor is None or len(parts) >= limit:
                break
            # Sized by what the items so far weigh, so a chunk's rows take about what is left
            # of the budget in memory, never the whole of a deep list.
            average = max(1, size // len(parts))
            chunk = max(1, min(limit - len(parts), (budget - size) // average + 1))
        body = b"".join((b'{"items":[', b",".join(parts), b'],"nextCursor":', _json(cursor), b"}"))
        return Response(body, media_type="application/json", headers=headers)


async def _encoded(
    items: Sequence[T], to_json: Callable[[T], dict[str, object]], *, room: int, first: bool
) -> list[bytes]:
    """The leading items that fit in ``room`` bytes (with a comma each) as ASCII JSON.

    A page's first item always fits. Encoding stops at the first item that does not, so that
    no more is encoded than is sent; it runs in a worker thread, so that a long page holds up
    no other request.
    """

    def encode() -> list[bytes]:
        encoded: list[bytes] = []
        left = room
        for item in items:
            part = _json(to_json(item))
            left -= len(part) + 1
            if left < 0 and not (first and not encoded):
                break
            encoded.append(part)
        return encoded

    if len(items) <= _INLINE_ITEMS:
        return encode()
    return await asyncio.to_thread(encode)


#: What a page holds besides its items: ``{"items":[`` ... ``],"nextCursor":"..."}``, with room
#: for the longest cursor a store hands out (far below 100 characters).
_ENVELOPE_BYTES: Final = len(b'{"items":[],"nextCursor":""}') + 100

#: Items encoded at once on the event loop; more go to a worker thread.
_INLINE_ITEMS: Final = 1


def _json(value: object) -> bytes:
    # ASCII: a stored text may hold anything a client sent, and every answer is escaped JSON.
    return json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode(
        "ascii"
    )


_MAX_ID_LENGTH: Final = 100


def _could_be_an_id(entry_id: str) -> bool:
    """Whether a path segment could be an id this server handed out (printable ASCII, short).

    Anything else is not found without asking the store: PostgreSQL refuses a NUL outright.
    """
    return len(entry_id) <= _MAX_ID_LENGTH and entry_id.isascii() and entry_id.isprintable()


def _no_entry(kind: str, entry_id: str, headers: dict[str, str]) -> ProblemError:
    # Another account's entry is "not found" too: its existence is not revealed.
    return ProblemError(
        Problem.NOT_FOUND,
        f"this account has no {kind} with id {shown(entry_id)!r}",
        headers=headers,
    )


async def _paged(listing: Awaitable[Page[T]]) -> Page[T]:
    try:
        return await listing
    except InvalidCursorError:
        raise ProblemError(
            Problem.INVALID_QUERY,
            "the cursor is not one this server handed out; start again without a cursor",
            errors=(bmcore.FieldError(field="cursor", code="invalid_cursor", message="unknown"),),
        ) from None


_MAX_LIMIT_DIGITS = 9
#: No ISO 8601 timestamp is longer; a longer value is refused without being parsed or echoed.
_MAX_TIMESTAMP_LENGTH = 64


class _Params:
    """Query parameters, checked one by one; every problem is reported at once by done()."""

    def __init__(self, request: Request, settings: Settings, *, allowed: set[str]) -> None:
        self._query = request.query_params
        self._settings = settings
        self.errors: list[bmcore.FieldError] = [
            bmcore.FieldError(
                field=shown(name),
                code="unknown_parameter",
                message=f"{shown(name)} is not a parameter here; use one of "
                f"{', '.join(sorted(allowed))}",
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
                self.errors.append(
                    bmcore.FieldError(
                        field="limit",
                        code="invalid_limit",
                        message=f"limit must be a whole number from 1 to "
                        f"{self._settings.max_page_size}, got {shown(raw, 12)!r}",
                    )
                )
        return limit, self._query.get("cursor") or None

    def text(self, name: str) -> str | None:
        """A filter on a text field; empty means no filter."""
        raw = self._query.get(name)
        if not raw:
            return None
        error = bmcore.check_filter(name, raw)
        if error is not None:
            self.errors.append(error)
            return None
        return raw

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
                    f"got {shown(raw)!r}",
                )
            )
        return value

    def timestamp(self, name: str) -> datetime | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        if len(raw) > _MAX_TIMESTAMP_LENGTH:
            self._invalid_timestamp(name, f"is {len(raw)} characters long")
            return None
        try:
            moment = bmcore.parse_timestamp(raw)
            # Within datetime's range at its own offset, but perhaps not in UTC, which is what
            # every store compares: 0001-01-01T00:00:00+01:00 is in year 0.
            moment.astimezone(UTC)
        except bmcore.TimestampError as error:
            self.errors.append(
                bmcore.FieldError(field=name, code=error.code, message=error.message)
            )
            return None
        except OverflowError:
            self.errors.append(
                bmcore.FieldError(
                    field=name,
                    code="timestamp_out_of_range",
                    message=f"{name} {raw!r} lies outside the years 1 to 9999 in UTC; send a "
                    "time within them, such as 2000-01-01T00:00:00Z",
                )
            )
            return None
        return moment

    def _invalid_timestamp(self, name: str, why: str) -> None:
        self.errors.append(
            bmcore.FieldError(
                field=name,
                code="invalid_timestamp",
                message=f"{name} {why}; send an ISO 8601 timestamp with a UTC offset such as "
                "2024-06-04T12:00:00Z",
            )
        )

    def done(self) -> None:
        count = len(self.errors)
        if not count:
            return
        detail = f"{count} query parameter(s) are invalid; see errors"
        if count > _MAX_LISTED_ERRORS:
            detail += f" (the first {_MAX_LISTED_ERRORS} are listed)"
        raise ProblemError(
            Problem.INVALID_QUERY, detail, errors=tuple(self.errors[:_MAX_LISTED_ERRORS])
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
