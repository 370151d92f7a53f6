"""The Starlette application: the two ingest endpoints, the read side, health and OpenAPI.

A thin adapter: validation, matching, rate and key logic live in bmcore; storage behind the
Store protocol. Per ingest request the work is done in this order: body size cap,
authentication, rate limit, decoding, storage, response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import bmcore
from bmserver._clock import Clock
from bmserver._limiter import Limiter, LimiterUnavailableError, MemoryLimiter
from bmserver._openapi import openapi_document
from bmserver._problems import AsciiJSONResponse, ProblemError, problem_response
from bmserver._reads import ReadSide
from bmserver._settings import Settings
from bmserver._store import ApiKeyRecord, ConflictError, Store, StoreError, WriteResult
from bmserver._store import Scope as KeyScope

__all__ = ["create_app", "rate_limit_headers"]

log = logging.getLogger("bmserver")
access_log = logging.getLogger("bmserver.access")

ModelT = TypeVar("ModelT", bmcore.BackupEntry, bmcore.Notification)

_JSON_MEDIA: Final = frozenset({"application/json", "text/json"})
# Sent by curl -d without -H "Content-Type: application/json", or by careless tools: the body
# is still tried as JSON, and the response carries a warning.
_LENIENT_MEDIA: Final = frozenset({"", "application/x-www-form-urlencoded", "text/plain"})


def create_app(
    settings: Settings,
    *,
    store: Store,
    limiter: Limiter,
    clock: Clock,
    auth_failures: Limiter | None = None,
) -> Starlette:
    """Build the ingest app; everything it uses is passed in.

    ``limiter`` limits requests per key; ``auth_failures`` counts failed authentications per
    client address (in this process's memory unless given, e.g. a RedisLimiter shared by all
    instances).

    The app owns the store's and the limiters' lifecycle: its lifespan opens the store at
    start-up, and at shutdown closes it, after every accepted write has been committed, and
    then the limiters.
    """
    ingest = _Ingest(
        settings=settings,
        store=store,
        limiter=limiter,
        clock=clock,
        auth_failures=auth_failures or MemoryLimiter(settings.auth_failure_policy),
    )
    reads = ReadSide(settings=settings, store=store, authenticate=ingest.authenticate)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncGenerator[None]:
        await store.open()
        try:
            yield
        finally:
            try:
                await store.close()
            finally:
                await ingest.limiter.close()
                await ingest.auth_failures.close()

    async def healthz(_: Request) -> Response:
        return AsciiJSONResponse({"status": "ok"})

    document = openapi_document(settings)

    async def openapi(_: Request) -> Response:
        return AsciiJSONResponse(document)

    routes = [
        Route("/api/ingest/backup", ingest.backup, methods=["POST"]),
        Route("/api/ingest/notification", ingest.notification, methods=["POST"]),
        Route("/api/devices", reads.devices, methods=["GET"]),
        Route("/api/jobs", reads.jobs, methods=["GET"]),
        Route("/api/backups", reads.backups, methods=["GET"]),
        Route("/api/notifications", reads.notifications, methods=["GET"]),
        Route("/api/backups/{entry_id}", reads.backup, methods=["GET"]),
        Route("/api/notifications/{entry_id}", reads.notification, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AccessLog)],
        exception_handlers={
            ProblemError: _problem_handler,
            HTTPException: _http_exception_handler,
            ClientDisconnect: _client_disconnect_handler,
            StoreError: _store_error_handler,
            Exception: _internal_error_handler,
        },
    )


async def _problem_handler(_: Request, error: Exception) -> Response:
    assert isinstance(error, ProblemError)  # noqa: S101 - registered for this type only
    return error.response()


async def _http_exception_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)  # noqa: S101 - registered for this type only
    headers = dict(error.headers or {})
    if error.status_code == 404:
        return problem_response(
            404, "not_found", f"there is no resource at {request.url.path}", headers=headers
        )
    if error.status_code == 405:
        allowed = headers.get("Allow", "")
        return problem_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}; use {allowed}",
            headers=headers,
        )
    return problem_response(error.status_code, "http_error", str(error.detail), headers=headers)


async def _client_disconnect_handler(_: Request, __: Exception) -> Response:
    # The client went away mid-body: nothing was stored, and nobody reads this answer.
    return Response(status_code=400)


async def _store_error_handler(request: Request, error: Exception) -> Response:
    # The database failed (PostgreSQL down, a SQLite file locked too long): the entry was not
    # committed, and a retry may well succeed.
    log.error("storage failed on %s %s: %s", request.method, loggable_path(request.url.path), error)
    return problem_response(
        503,
        "storage_unavailable",
        "the database could not be reached or did not commit; nothing was acknowledged, send "
        "the request again",
        headers={"Retry-After": str(_STORAGE_RETRY_AFTER_S)},
    )


#: How long a client is told to wait when the database failed.
_STORAGE_RETRY_AFTER_S: Final = 5


async def _internal_error_handler(request: Request, error: Exception) -> Response:
    log.error(
        "unexpected error on %s %s", request.method, loggable_path(request.url.path), exc_info=error
    )
    return problem_response(
        500,
        "internal_error",
        "the server failed to handle this request; send it again (a repeated entry is answered "
        "200 and never stored twice)",
    )


# Anything shaped like a key (the prefix and at least 8 key characters): a client may paste
# its key into a URL path as easily as into a query string.
_KEY_SHAPED: Final = re.compile(r"bm_[A-Za-z0-9_-]{8,}")
_DISPLAYED_KEY_BODY: Final = 8


def loggable_path(path: str) -> str:
    r"""The path as an access log may show it: keys cut to their display prefix, controls escaped.

    >>> loggable_path("/api/backups/bm_n7ukAAAABBBBCCCCDDDDEEEEFFFFGGGGHHHH")
    '/api/backups/bm_n7ukAAAA...'
    >>> loggable_path("/api/x\nFAKE LOG LINE")
    '/api/x\\nFAKE LOG LINE'
    """
    cut = _KEY_SHAPED.sub(lambda key: key[0][: 3 + _DISPLAYED_KEY_BODY] + "...", path)
    # A decoded %0A would otherwise start a forged log line.
    return cut if cut.isprintable() else cut.encode("unicode_escape").decode("ascii")


class AccessLog:
    """One log line per request: method, path without the query, status, key prefix.

    It replaces uvicorn's access log, which prints the query string, where a careless client
    may have put its key. Request bodies are never logged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        logged = False

        def log_line(status: int) -> None:
            # Logged when the response starts, so the line exists before the client can read
            # the answer (tests and operators see it in order).
            client = scope.get("client")
            access_log.info(
                '%s "%s %s" %d key=%s',
                client[0] if client else "-",
                scope["method"],
                loggable_path(scope["path"]),
                status,
                scope.get("state", {}).get("key_prefix", "-"),
            )

        async def send_and_log(message: Message) -> None:
            nonlocal logged
            if message["type"] == "http.response.start" and not logged:
                logged = True
                log_line(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_log)
        except Exception:
            if not logged:
                log_line(500)
            raise


@attrs.define
class _Ingest:
    settings: Settings
    store: Store
    limiter: Limiter
    clock: Clock
    auth_failures: Limiter
    # When the limiter's backend was last reported unreachable: one warning per interval.
    _last_limiter_warning_ns: int | None = attrs.field(default=None, init=False)

    async def backup(self, request: Request) -> Response:
        return await self._ingest(request, KeyScope.INGEST, _backup_kind)

    async def notification(self, request: Request) -> Response:
        return await self._ingest(request, KeyScope.INGEST, _notification_kind)

    async def _ingest(self, request: Request, scope: KeyScope, kind: _Kind[ModelT]) -> Response:
        raw = await _read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_s)
        key = await self.authenticate(request, scope)
        rate_headers = await self._rate_limit(key)
        warnings = _check_content_type(request)
        body = _decode_content(request, raw, self.settings.max_body_bytes)
        now = self.clock.now()
        try:
            decoded = kind.decode(body, now)
        except bmcore.PayloadError as error:
            code = "invalid_json" if _is_syntax_error(error) else "validation_failed"
            raise ProblemError(
                400, code, _summary(error), errors=error.errors, headers=rate_headers
            ) from None
        try:
            result = await kind.store(self.store, key.account_id, decoded.value, now)
        except ConflictError as conflict:
            raise ProblemError(
                409,
                "conflict",
                "an entry with different content already exists for this job and timestamp; "
                "send a different timestamp for a new run, or the same content to repeat",
                headers=rate_headers,
                extra={"existingId": conflict.existing_id},
            ) from None
        payload = _created_body(kind.name, decoded, result, warnings)
        headers = {**rate_headers, "Location": f"/api/{kind.name}s/{result.id}"}
        return AsciiJSONResponse(
            payload, status_code=200 if result.duplicate else 201, headers=headers
        )

    async def authenticate(self, request: Request, scope: KeyScope) -> ApiKeyRecord:
        """The key record of the request's X-Api-Key, or a 401/403/429 problem."""
        address = request.client.host if request.client else "unknown"
        now_ns = self.clock.monotonic_ns()
        # An address that failed too often is refused before its key is even looked at, so
        # that a guess that happens to be right is not told apart from a wrong one.
        standing = await self._decide(self.auth_failures, address, now_ns, 0)
        if standing is not None and standing.remaining < 1:
            raise _too_many_failures(self.auth_failures)
        supplied = request.headers.get("x-api-key")
        if not supplied:
            detail = "send your API key in the X-Api-Key header"
            if "api_key" in request.query_params or "apiKey" in request.query_params:
                detail += "; keys in the URL end up in logs and are not accepted"
            raise ProblemError(401, "missing_api_key", detail)
        try:
            bmcore.check_api_key_format(supplied)
        except bmcore.ApiKeyFormatError as error:
            await self._failed(address, now_ns)
            raise ProblemError(401, "invalid_api_key", str(error)) from None
        record = await self.store.find_api_key(
            bmcore.hash_api_key(supplied, secret=self.settings.key_secret)
        )
        if record is None:
            await self._failed(address, now_ns)
            raise ProblemError(
                401, "invalid_api_key", "this API key is unknown or was revoked; check the key"
            )
        request.state.key_prefix = record.prefix
        if scope not in record.scopes:
            raise ProblemError(
                403,
                "insufficient_scope",
                f"this key ({record.prefix}...) lacks the {scope.value!r} scope; create a key "
                f"with it: bmserver keys create --scope {scope.value}",
            )
        return record

    async def _failed(self, address: str, now_ns: int) -> None:
        await self._decide(self.auth_failures, address, now_ns, 1)

    async def _rate_limit(self, key: ApiKeyRecord) -> dict[str, str]:
        decision = await self._decide(self.limiter, key.id, self.clock.monotonic_ns(), 1)
        if decision is None:  # the limiter is unreachable and the setting is to fail open
            return {}
        headers = rate_limit_headers(self.limiter.policy, decision)
        if not decision.allowed:
            raise ProblemError(
                429,
                "rate_limited",
                f"this key sent more than its quota of {self.limiter.policy.burst} requests; "
                f"retry after {decision.retry_after_s} s",
                headers={**headers, "Retry-After": str(decision.retry_after_s)},
            )
        return headers

    async def _decide(
        self, limiter: Limiter, key: str, now_ns: int, cost: int
    ) -> bmcore.Decision | None:
        """The limiter's decision; None when it is unreachable and the setting is "open"."""
        try:
            return await limiter.decide(key, now_ns, cost)
        except LimiterUnavailableError as error:
            self._warn_limiter_unavailable(error, now_ns)
            if self.settings.on_limiter_error == "open":
                return None
            raise ProblemError(
                503,
                "rate_limiter_unavailable",
                "the rate limiter cannot be reached, so no request is admitted; retry later",
                headers={"Retry-After": str(_LIMITER_RETRY_AFTER_S)},
            ) from None

    def _warn_limiter_unavailable(self, error: LimiterUnavailableError, now_ns: int) -> None:
        last = self._last_limiter_warning_ns
        if last is not None and now_ns - last < _LIMITER_WARNING_INTERVAL_NS:
            return  # one line per interval, not one per request, while it lasts
        self._last_limiter_warning_ns = now_ns
        admitted = (
            "admitting requests unlimited"
            if self.settings.on_limiter_error == "open"
            else ("refusing requests with 503")
        )
        log.warning("rate limiter unavailable (%s): %s", error, admitted)


#: How long a client is told to wait when the limiter is unavailable and the setting is closed.
_LIMITER_RETRY_AFTER_S: Final = 5
_LIMITER_WARNING_INTERVAL_NS: Final = 10 * 1_000_000_000


def rate_limit_headers(policy: bmcore.RatePolicy, decision: bmcore.Decision) -> dict[str, str]:
    """The RateLimit-Policy and RateLimit headers of draft-ietf-httpapi-ratelimit-headers."""
    return {
        "RateLimit-Policy": f'"default";q={policy.burst};w={policy.window_s}',
        "RateLimit": f'"default";r={decision.remaining};t={decision.reset_s}',
    }


def _too_many_failures(failures: Limiter) -> ProblemError:
    wait = max(1, -(-failures.policy.interval_ns // 1_000_000_000))
    return ProblemError(
        429,
        "rate_limited",
        f"too many failed authentications from this address; retry after {wait} s",
        headers={"Retry-After": str(wait)},
    )


@attrs.frozen
class _Kind(Generic[ModelT]):
    """What differs between the two ingest endpoints."""

    name: str
    decode: Callable[[bytes, datetime], bmcore.Decoded[ModelT]]
    store: Callable[[Store, str, ModelT, datetime], Awaitable[WriteResult]]


_backup_kind: Final = _Kind[bmcore.BackupEntry](
    "backup",
    lambda body, now: bmcore.decode_backup(body, now=now),
    lambda store, account_id, entry, now: store.add_backup(account_id, entry, now=now),
)
_notification_kind: Final = _Kind[bmcore.Notification](
    "notification",
    lambda body, now: bmcore.decode_notification(body, now=now),
    lambda store, account_id, item, now: store.add_notification(account_id, item, now=now),
)


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, read only up to ``limit`` bytes and ``timeout_s`` seconds.

    A larger body is refused, never buffered; a body still arriving after ``timeout_s`` gets a
    408, so that a client trickling its body cannot hold a connection (and a graceful
    shutdown) for ever.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit, f"Content-Length is {declared}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, "the body is longer")
                chunks.append(chunk)
    except TimeoutError:
        raise ProblemError(
            408,
            "request_timeout",
            f"the body did not arrive within {timeout_s:g} s ({size} bytes came); send it at "
            "once, with an accurate Content-Length",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def _too_large(limit: int, what: str) -> ProblemError:
    return ProblemError(
        413,
        "payload_too_large",
        f"the body may be at most {limit} bytes and {what}; shorten the message field",
    )


def _check_content_type(request: Request) -> list[dict[str, str]]:
    """Refuse types that are clearly not JSON; warn about a missing or form type."""
    header = request.headers.get("content-type", "")
    media, _, params = header.partition(";")
    media = media.strip().lower()
    charset = _charset(params)
    if charset not in {None, "utf-8", "utf8"}:
        raise ProblemError(415, "unsupported_media_type", f"the body must be UTF-8, not {charset}")
    if media in _JSON_MEDIA or media.endswith("+json"):
        return []
    if media in _LENIENT_MEDIA:
        shown = f"Content-Type {media}" if media else "no Content-Type"
        return [
            {
                "code": "content_type",
                "message": f"the request had {shown}; send Content-Type: application/json",
            }
        ]
    raise ProblemError(
        415,
        "unsupported_media_type",
        f"the body must be JSON, but Content-Type is {media}; send Content-Type: application/json",
    )


def _charset(params: str) -> str | None:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _decode_content(request: Request, raw: bytes, limit: int) -> bytes:
    """Undo Content-Encoding gzip, never producing more than ``limit`` bytes."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in {"identity", ""}:
        return raw
    if encoding not in {"gzip", "x-gzip"}:
        raise ProblemError(
            415,
            "unsupported_media_type",
            f"Content-Encoding {encoding} is not supported; send the body as is, or gzip",
        )
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as error:
        raise ProblemError(
            400, "invalid_json", f"the gzip body could not be decompressed: {error}"
        ) from None
    if len(body) > limit or inflater.unconsumed_tail:
        raise _too_large(limit, "the decompressed body is longer")
    if not inflater.eof:
        raise ProblemError(400, "invalid_json", "the gzip body is truncated")
    return body


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


def dumps(payload: object) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
