"""The two ingest endpoints: POST /api/ingest/backup and /api/ingest/notification.

Per request, in this order: body size cap and time-out, authentication, rate limit, content
type and encoding, decoding (bmcore), storage, answer. What the endpoint decided for an entry
it stored, or found stored, is left in the request's scope for whoever serves the app
(:data:`INGEST_OUTCOME`): pytest_bm's journal reads it there instead of decoding the body again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar, cast

import attrs
from starlette.requests import Request
from starlette.responses import Response

import bmcore
from bmserver._clock import Clock
from bmserver._settings import Settings
from bmserver.http._authentication import Authenticator
from bmserver.http._body import check_content_type, decode_content, read_body
from bmserver.http._gate import LimiterGate
from bmserver.http._problems import AsciiJSONResponse, Problem, ProblemError
from bmserver.limits._contract import Limiter
from bmserver.storage._contract import ConflictError, Store, WriteResult
from bmserver.storage._contract import Scope as KeyScope

__all__ = ["INGEST_OUTCOME", "AnyIngestOutcome", "Ingest", "IngestOutcome", "ingest_outcome"]

ModelT = TypeVar("ModelT", bmcore.BackupEntry, bmcore.Notification)

#: Key of a request's ``scope["state"]`` under which an ingest endpoint leaves its
#: :class:`IngestOutcome`, once the entry is stored (201) or found stored (200). An ASGI layer
#: around the app reads it with :func:`ingest_outcome` after the app has answered.
INGEST_OUTCOME: Final = "bmserver.ingest_outcome"


@attrs.frozen(kw_only=True)
class IngestOutcome(Generic[ModelT]):
    """What an ingest endpoint decided for an entry it stored or found stored.

    ``decoded`` is bmcore's result for the body as received (gzip undone): the entry, its
    warnings and its ignored fields; ``result`` is what the store did (``duplicate`` for a
    repeat answered 200).
    """

    kind: Literal["backup", "notification"]
    decoded: bmcore.Decoded[ModelT]
    result: WriteResult


#: What :func:`ingest_outcome` finds: ``decoded.value`` tells a backup from a notification.
AnyIngestOutcome: TypeAlias = IngestOutcome[bmcore.BackupEntry] | IngestOutcome[bmcore.Notification]


def ingest_outcome(scope: Mapping[str, Any]) -> AnyIngestOutcome | None:
    """The outcome an ingest endpoint left in this request's ``scope``, or None.

    None for any request that stored nothing: another path, or one answered with a problem.
    """
    state: object = scope.get("state")
    if not isinstance(state, Mapping):
        return None
    outcome = cast("Mapping[str, object]", state).get(INGEST_OUTCOME)
    if not isinstance(outcome, IngestOutcome):
        return None
    return cast("AnyIngestOutcome", outcome)


@attrs.frozen
class Ingest:
    """The ingest endpoints of one app."""

    settings: Settings
    store: Store
    limiter: Limiter
    clock: Clock
    authenticator: Authenticator
    gate: LimiterGate

    async def backup(self, request: Request) -> Response:
        """POST /api/ingest/backup."""
        return await self._ingest(request, _BACKUP)

    async def notification(self, request: Request) -> Response:
        """POST /api/ingest/notification."""
        return await self._ingest(request, _NOTIFICATION)

    async def _ingest(self, request: Request, kind: _Kind[ModelT]) -> Response:
        limit = self.settings.max_body_bytes
        raw = await read_body(request, limit, self.settings.body_timeout_s)
        key = await self.authenticator.authenticate(request, KeyScope.INGEST)
        rate_headers = await self.gate.admit(
            self.limiter, key.id, self.clock.monotonic_ns(), what="requests"
        )
        warnings = check_content_type(request)
        body = decode_content(request, raw, limit)
        now = self.clock.now()
        try:
            decoded = kind.decode(body, now)
        except bmcore.PayloadError as error:
            problem = Problem.INVALID_JSON if _is_syntax_error(error) else Problem.VALIDATION_FAILED
            raise ProblemError(
                problem, _summary(error), errors=error.errors, headers=rate_headers
            ) from None
        try:
            result = await kind.store(self.store, key.account_id, decoded.value, now)
        except ConflictError as conflict:
            raise ProblemError(
                Problem.CONFLICT,
                "an entry with different content already exists for this job and timestamp; "
                "send a different timestamp for a new run, or the same content to repeat",
                headers=rate_headers,
                extra={"existingId": conflict.existing_id},
            ) from None
        request.scope.setdefault("state", {})[INGEST_OUTCOME] = IngestOutcome(
            kind=kind.name, decoded=decoded, result=result
        )
        verdict = bmcore.Verdict.REPEAT if result.duplicate else bmcore.Verdict.NEW
        return AsciiJSONResponse(
            _created_body(kind.name, decoded, result, warnings),
            status_code=verdict.status_hint,
            headers={**rate_headers, "Location": f"/api/{kind.name}s/{result.id}"},
        )


@attrs.frozen
class _Kind(Generic[ModelT]):
    """What differs between the two ingest endpoints."""

    name: Literal["backup", "notification"]
    decode: Callable[[bytes, datetime], bmcore.Decoded[ModelT]]
    store: Callable[[Store, str, ModelT, datetime], Awaitable[WriteResult]]


_BACKUP: Final = _Kind[bmcore.BackupEntry](
    "backup",
    lambda body, now: bmcore.decode_backup(body, now=now),
    lambda store, account_id, entry, now: store.add_backup(account_id, entry, now=now),
)
_NOTIFICATION: Final = _Kind[bmcore.Notification](
    "notification",
    lambda body, now: bmcore.decode_notification(body, now=now),
    lambda store, account_id, item, now: store.add_notification(account_id, item, now=now),
)

# bmcore's field-error codes (not problem codes) that mean the body is not JSON at all.
_SYNTAX_CODES: Final = frozenset({"invalid_json", "duplicate_key"})


def _is_syntax_error(error: bmcore.PayloadError) -> bool:
    return any(code in _SYNTAX_CODES for code in error.codes)


def _summary(error: bmcore.PayloadError) -> str:
    count = len(error.errors)
    first = error.errors[0]
    if count == 1:
        return first.message
    return f"{count} fields are invalid; see errors (the first: {first.message})"


def _created_body(
    kind: str,
    decoded: bmcore.Decoded[Any],
    result: WriteResult,
    warnings: list[dict[str, str]],
) -> dict[str, object]:
    body: dict[str, object] = {
        "id": result.id,
        "kind": kind,
        "receivedAt": bmcore.format_timestamp(result.received_at),
        "duplicate": result.duplicate,
        "device": {"id": result.device_id, "created": result.device_created},
    }
    if result.job_id is not None:
        body["job"] = {"id": result.job_id, "created": result.job_created}
    value = decoded.value
    if isinstance(value, bmcore.BackupEntry):
        body["outcome"] = value.outcome.value
    body["warnings"] = [
        *warnings,
        *(
            {"code": w.code, "message": w.message, **({"field": w.field} if w.field else {})}
            for w in decoded.warnings
        ),
    ]
    body["ignoredFields"] = list(decoded.ignored_fields)
    return body
