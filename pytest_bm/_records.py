"""What the fake received: typed, immutable records, and the journal that keeps them.

The ASGI layer (:mod:`pytest_bm._faults`) hands every finished request to :class:`Journal` as
an :class:`Exchange` (the raw request and the raw answer). The journal turns it into records:
a :class:`RecordedRequest` for every request, and for each ``201`` on an ingest path a
:class:`ReceivedBackup` or :class:`ReceivedNotification`, decoded again from the request body
with bmcore, the same function with the same input as the server, so the same result.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, cast

import attrs

import bmcore

__all__ = [
    "BACKUP_PATH",
    "NOTIFICATION_PATH",
    "Exchange",
    "Journal",
    "Kind",
    "ReceivedBackup",
    "ReceivedNotification",
    "RecordedRequest",
    "redact_key",
]

BACKUP_PATH: Final = "/api/ingest/backup"
NOTIFICATION_PATH: Final = "/api/ingest/notification"

#: What :meth:`Journal.wait_for` can wait for.
Kind: TypeAlias = Literal["backup", "notification", "request"]
KINDS: Final[tuple[Kind, ...]] = ("backup", "notification", "request")

# RFC 9457's media type, as bmserver sends it. Spelled out rather than imported from bmserver,
# so that the records (which the plugin may import for annotations) import no web framework.
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

# Faults that answer (or refuse to) in place of the app; a delayed request is answered by it.
_ANSWERING_FAULTS: Final = frozenset({"fail", "throttle", "drop"})

# A key shorter than this is shown not at all: its display prefix would be most of it.
_SHOWABLE_KEY_LENGTH: Final = 32
_SECRET_HEADERS: Final = frozenset({"x-api-key", "authorization"})


def redact_key(value: str) -> str:
    """A key as it may be shown: its display prefix and "…", or only "…" for a short value.

    >>> redact_key("bm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_xyz")
    'bm_AbCdEfGh…'
    >>> redact_key("hunter2")
    '…'
    """
    if len(value) < _SHOWABLE_KEY_LENGTH:
        return "…"
    return bmcore.display_prefix(value) + "…"


def _redact_header(name: str, value: str) -> str:
    if name == "authorization":
        # Keep the scheme ("Bearer"), which tells what the client tried, hide the credential.
        scheme, _, credential = value.partition(" ")
        return f"{scheme} {redact_key(credential)}" if credential else redact_key(value)
    return redact_key(value)


def _headers(raw: Sequence[tuple[bytes, bytes]]) -> Mapping[str, str]:
    """Raw ASGI headers as a read-only mapping: names lower-case, repeats joined, keys hidden."""
    joined: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        if name in _SECRET_HEADERS:
            value = _redact_header(name, value)
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return MappingProxyType(joined)


@attrs.frozen(kw_only=True)
class RecordedRequest:
    """One HTTP request the fake received, whatever happened to it, and how it was answered."""

    method: str
    #: The path, without the query string.
    path: str
    #: The response status; None when the connection was closed without an answer.
    status: int | None
    #: The request headers, names in lower case; ``x-api-key`` shows only its display prefix.
    headers: Mapping[str, str]
    #: The request body exactly as sent (still compressed if it was sent gzip-encoded).
    body: bytes
    #: The parsed ``application/problem+json`` body of an error answer, else None.
    problem: dict[str, Any] | None
    #: The planned fault applied to this request ("fail 503", "throttle retry_after=2",
    #: "delay 0.5s", "drop"), or None.
    fault: str | None

    @property
    def answered_by_fault(self) -> bool:
        """Whether a planned fail, throttle or drop answered instead of bmserver's app."""
        return self.fault is not None and self.fault.split()[0] in _ANSWERING_FAULTS

    @property
    def rejected(self) -> bool:
        """Whether the app answered 4xx: a planned ``fail_next``/``throttle_next`` is not."""
        in_4xx = self.status is not None and 400 <= self.status < 500
        return in_4xx and not self.answered_by_fault


@attrs.frozen(kw_only=True)
class ReceivedBackup:
    """A backup result the fake accepted (answered 201)."""

    #: The entry as bmcore decoded it.
    entry: bmcore.BackupEntry
    #: The id the fake answered with.
    id: str
    #: When the fake received it, by the fake's clock.
    received_at: datetime
    #: The request headers, as in :attr:`RecordedRequest.headers`.
    headers: Mapping[str, str]
    #: The request body exactly as sent.
    body: bytes


@attrs.frozen(kw_only=True)
class ReceivedNotification:
    """A notification the fake accepted (answered 201)."""

    #: The notification as bmcore decoded it.
    notification: bmcore.Notification
    #: The id the fake answered with.
    id: str
    #: When the fake received it, by the fake's clock.
    received_at: datetime
    #: The request headers, as in :attr:`RecordedRequest.headers`.
    headers: Mapping[str, str]
    #: The request body exactly as sent.
    body: bytes


@attrs.frozen(kw_only=True)
class Exchange:
    """One finished request as the ASGI layer saw it: raw, before it becomes records."""

    method: str
    path: str
    request_headers: Sequence[tuple[bytes, bytes]]
    body: bytes
    status: int | None = None
    response_headers: Sequence[tuple[bytes, bytes]] = ()
    response_body: bytes = b""
    fault: str | None = None


Received: TypeAlias = ReceivedBackup | ReceivedNotification


def _header(raw: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    return next((value.decode("latin-1") for key, value in raw if key.lower() == name), "")


def _problem(exchange: Exchange) -> dict[str, Any] | None:
    media = _header(exchange.response_headers, b"content-type").partition(";")[0].strip()
    if media != PROBLEM_CONTENT_TYPE:
        return None
    try:
        parsed: object = json.loads(exchange.response_body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return cast("dict[str, Any]", parsed)


def _inflated(exchange: Exchange) -> bytes:
    """The body as the server decoded it: gzip undone exactly as bmserver does it."""
    encoding = _header(exchange.request_headers, b"content-encoding").strip().lower()
    if encoding in {"gzip", "x-gzip"}:
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(exchange.body)
    return exchange.body


def _received(exchange: Exchange, headers: Mapping[str, str], now: datetime) -> Received | None:
    """The backup or notification a 201 stored, or None for any other answer."""
    if exchange.status != 201 or exchange.method != "POST":
        return None
    if exchange.path not in {BACKUP_PATH, NOTIFICATION_PATH}:
        return None
    answer = json.loads(exchange.response_body)
    entry_id = str(answer["id"])
    received_at = bmcore.parse_timestamp(str(answer["receivedAt"]))
    # The server accepted this body with bmcore at a time no later than ``now``; the clock
    # only moves forward and the time policy only gets looser with time, so decoding again
    # gives the same value.
    if exchange.path == BACKUP_PATH:
        backup = bmcore.decode_backup(_inflated(exchange), now=now).value
        return ReceivedBackup(
            entry=backup, id=entry_id, received_at=received_at, headers=headers, body=exchange.body
        )
    notification = bmcore.decode_notification(_inflated(exchange), now=now).value
    return ReceivedNotification(
        notification=notification,
        id=entry_id,
        received_at=received_at,
        headers=headers,
        body=exchange.body,
    )


class Journal:
    """Every request the fake received, and what it stored; safe to use from any thread.

    The server thread adds; test threads read, wait and reset. Each reset starts a new
    generation: a request that started before it (one stuck in ``delay_next``, say) is not
    recorded into the next test's journal when it finishes.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._generation = 0
        self._requests: list[RecordedRequest] = []
        self._backups: list[ReceivedBackup] = []
        self._notifications: list[ReceivedNotification] = []

    @property
    def generation(self) -> int:
        """The current generation: requests carry the one they started in."""
        with self._changed:
            return self._generation

    def reset(self) -> None:
        """Forget everything and start a new generation."""
        with self._changed:
            self._generation += 1
            self._requests = []
            self._backups = []
            self._notifications = []
            self._changed.notify_all()

    def add(self, exchange: Exchange, *, generation: int, now: datetime) -> None:
        """Record a finished request that started in ``generation``, decoded at ``now``."""
        headers = _headers(exchange.request_headers)
        request = RecordedRequest(
            method=exchange.method,
            path=exchange.path,
            status=exchange.status,
            headers=headers,
            body=exchange.body,
            problem=_problem(exchange),
            fault=exchange.fault,
        )
        received = _received(exchange, headers, now)
        with self._changed:
            if generation != self._generation:
                return
            self._requests.append(request)
            if isinstance(received, ReceivedBackup):
                self._backups.append(received)
            elif isinstance(received, ReceivedNotification):
                self._notifications.append(received)
            self._changed.notify_all()

    def requests(self) -> list[RecordedRequest]:
        """A copy of every request, in arrival order."""
        with self._changed:
            return list(self._requests)

    def backups(self) -> list[ReceivedBackup]:
        """A copy of the accepted backups, in arrival order."""
        with self._changed:
            return list(self._backups)

    def notifications(self) -> list[ReceivedNotification]:
        """A copy of the accepted notifications, in arrival order."""
        with self._changed:
            return list(self._notifications)

    def records(self, kind: Kind) -> list[Any]:
        """A copy of the records of ``kind``, in arrival order."""
        with self._changed:
            return list(self._of_kind(kind))

    def _of_kind(self, kind: Kind) -> Sequence[Any]:
        if kind == "backup":
            return self._backups
        if kind == "notification":
            return self._notifications
        return self._requests

    def wait_for(self, count: int, kind: Kind, timeout: float) -> list[Any] | None:
        """The records of ``kind`` once at least ``count`` exist, or None after ``timeout``."""
        with self._changed:
            # Condition.wait_for re-checks after every notify (each new record, each reset)
            # and keeps to the overall timeout across wake-ups.
            arrived = self._changed.wait_for(
                lambda: len(self._of_kind(kind)) >= count, timeout=timeout
            )
            return list(self._of_kind(kind)) if arrived else None
