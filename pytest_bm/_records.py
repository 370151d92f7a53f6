"""What the fake received: typed, immutable records, and the journal that keeps them.

The ASGI layer (:mod:`pytest_bm._layer`) hands every finished request to :class:`Journal` as
an :class:`Exchange`: the request and the answer as they passed, the fault applied, and what
bmserver's ingest endpoint decided (:class:`bmserver.IngestOutcome`, which the app leaves in
the request's scope). The journal turns it into records: a :class:`RecordedRequest` for every
request, and for each ``201`` a :class:`ReceivedBackup` or :class:`ReceivedNotification`
holding the entry exactly as the app decoded and stored it: nothing is decoded twice.

This module imports no web framework (the plugin may import it for annotations): bmserver's
types appear in annotations only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast

import attrs

import bmcore
from pytest_bm._faults import AppliedFault

if TYPE_CHECKING:
    from bmserver import IngestOutcome

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
    #: The planned fault applied to this request (:class:`~pytest_bm.Fail`, ...), or None.
    applied_fault: AppliedFault | None

    @property
    def fault(self) -> str | None:
        """How the applied fault is shown, or None.

        "fail 503", "throttle retry_after=2", "delay 0.5s", "drop", "delay 0.5s, dropped at
        reset": for messages; branch on :attr:`applied_fault`.
        """
        return None if self.applied_fault is None else self.applied_fault.label

    @property
    def answered_by_fault(self) -> bool:
        """Whether a planned fail, throttle or drop answered instead of bmserver's app."""
        return self.applied_fault is not None and self.applied_fault.replaces_answer

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
    fault: AppliedFault | None = None
    #: What the ingest endpoint decided, when it stored the entry or found it stored.
    outcome: IngestOutcome[bmcore.BackupEntry] | IngestOutcome[bmcore.Notification] | None = None


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


def _received(exchange: Exchange, headers: Mapping[str, str]) -> Received | None:
    """The backup or notification a 201 stored, as the app decided it; None for other answers."""
    outcome = exchange.outcome
    if exchange.status != 201 or outcome is None:
        return None
    result = outcome.result
    value = outcome.decoded.value
    if isinstance(value, bmcore.BackupEntry):
        return ReceivedBackup(
            entry=value,
            id=result.id,
            received_at=result.received_at,
            headers=headers,
            body=exchange.body,
        )
    return ReceivedNotification(
        notification=value,
        id=result.id,
        received_at=result.received_at,
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

    def add(self, exchange: Exchange, *, generation: int) -> None:
        """Record a finished request that started in ``generation``."""
        headers = _headers(exchange.request_headers)
        request = RecordedRequest(
            method=exchange.method,
            path=exchange.path,
            status=exchange.status,
            headers=headers,
            body=exchange.body,
            problem=_problem(exchange),
            applied_fault=exchange.fault,
        )
        received = _received(exchange, headers)
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
