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
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import attrs
from starlette.requests import Request
from starlette.responses import Response

import bmcore
from bmserver._clock import Clock
from bmserver._settings import Settings
from bmserver.http._gate import LimiterGate
from bmserver.http._problems import AsciiJSONResponse
from bmserver.http._query import Params, could_be_an_id, no_such_item, paged
from bmserver.http._representations import (
    PAGE_ENVELOPE_BYTES,
    backup_json,
    device_json,
    json_bytes,
    notification_json,
    page_body,
)
from bmserver.limits._contract import Limiter
from bmserver.storage._contract import (
    ApiKeyRecord,
    BackupQuery,
    NotificationQuery,
    Page,
    Scope,
    Store,
)

__all__ = ["ReadSide"]

T = TypeVar("T")

_OUTCOMES: Final = {outcome.value.casefold(): outcome.value for outcome in bmcore.Outcome}
_SEVERITIES: Final = {severity.value for severity in bmcore.Severity}
#: Items fetched at first, before the size of an item is known.
_FIRST_CHUNK: Final = 50

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
        key, headers = await self.admit(request)
        params = Params(request, self.settings, allowed={"limit", "cursor"})
        limit, cursor = params.page()
        params.done()
        account = key.account_id
        return await self._page(
            lambda size, at: self.store.list_devices(account, limit=size, cursor=at),
            device_json,
            limit=limit,
            cursor=cursor,
            headers=headers,
        )

    async def backups(self, request: Request) -> Response:
        """GET /api/backups, newest first, with filters."""
        key, headers = await self.admit(request)
        params = Params(
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
            backup_json,
            limit=limit,
            cursor=cursor,
            headers=headers,
        )

    async def backup(self, request: Request) -> Response:
        """GET /api/backups/{id}: the entry a 201's Location names."""
        return await self._entry(request, "backup", self.store.get_backup, backup_json)

    async def notification(self, request: Request) -> Response:
        """GET /api/notifications/{id}."""
        return await self._entry(
            request, "notification", self.store.get_notification, notification_json
        )

    async def _entry(
        self,
        request: Request,
        kind: str,
        get: Callable[[str, str], Awaitable[T | None]],
        to_json: Callable[[T], dict[str, object]],
    ) -> Response:
        """One entry of the key's account by the id in the path, or a 404 problem."""
        key, headers = await self.admit(request)
        entry_id = str(request.path_params["entry_id"])
        found = await get(key.account_id, entry_id) if could_be_an_id(entry_id) else None
        if found is None:
            raise no_such_item(kind, entry_id, headers)
        return AsciiJSONResponse(to_json(found), headers=headers)

    async def notifications(self, request: Request) -> Response:
        """GET /api/notifications, newest first, with filters."""
        key, headers = await self.admit(request)
        params = Params(
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
            notification_json,
            limit=limit,
            cursor=cursor,
            headers=headers,
        )

    async def admit(self, request: Request) -> tuple[ApiKeyRecord, dict[str, str]]:
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
            page = await paged(fetch(chunk, cursor))
            encoded = await _encoded(page.items, to_json, room=budget - size, first=not parts)
            if len(encoded) < len(page.items):
                # The budget ends inside this chunk. A cursor names the place after an item
                # only as the store hands it out, so ask for exactly the items that fit.
                if encoded:
                    page = await paged(fetch(len(encoded), cursor))
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
        return Response(page_body(parts, cursor), media_type="application/json", headers=headers)


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
            part = json_bytes(to_json(item))
            left -= len(part) + 1
            if left < 0 and not (first and not encoded):
                break
            encoded.append(part)
        return encoded

    if len(items) <= _INLINE_ITEMS:
        return encode()
    return await asyncio.to_thread(encode)


_ENVELOPE_BYTES: Final = PAGE_ENVELOPE_BYTES

#: Items encoded at once on the event loop; more go to a worker thread.
_INLINE_ITEMS: Final = 1
