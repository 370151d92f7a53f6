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
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import bmcore
from bmserver._authentication import Authenticator
from bmserver._clock import Clock
from bmserver._gate import LimiterGate
from bmserver._limiter import Limiter, MemoryLimiter
from bmserver._openapi import openapi_document
from bmserver._problems import AsciiJSONResponse, ProblemError, problem_response, shown
from bmserver._protocol import ANSWERED_BY_PROTOCOL
from bmserver._reads import ReadSide
from bmserver._settings import Settings
from bmserver._store import ConflictError, Store, StoreError, WriteResult
from bmserver._store import Scope as KeyScope

__all__ = ["create_app"]

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
    read_limiter: Limiter | None = None,
) -> Starlette:
    """Build the ingest app; everything it uses is passed in.

    ``limiter`` limits ingest requests per key; ``read_limiter`` the read side's requests per
    key (``settings.read_rate_policy``); ``auth_failures`` counts failed authentications per
    client address. The last two are in this process's memory unless given (e.g. RedisLimiters
    shared by all instances).

    The app owns the store's and the limiters' lifecycle: its lifespan opens the store at
    start-up, and at shutdown closes it, after every accepted write has been committed, and
    then the limiters.
    """
    gate = LimiterGate(settings.on_limiter_error)
    failures = auth_failures or MemoryLimiter(settings.auth_failure_policy)
    reads_limiter = read_limiter or MemoryLimiter(settings.read_rate_policy)
    authenticator = Authenticator(
        settings=settings, store=store, clock=clock, failures=failures, gate=gate
    )
    ingest = _Ingest(
        settings=settings,
        store=store,
        limiter=limiter,
        clock=clock,
        authenticator=authenticator,
        gate=gate,
    )
    reads = ReadSide(
        settings=settings,
        store=store,
        clock=clock,
        authenticate=authenticator.authenticate,
        limiter=reads_limiter,
        gate=gate,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncGenerator[None]:
        await store.open()
        try:
            yield
        finally:
            try:
                await store.close()
            finally:
                for each in (limiter, reads_limiter, failures):
                    await each.close()

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
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(AccessLog), Middleware(NoStore)],
        exception_handlers={
            ProblemError: _problem_handler,
            HTTPException: _http_exception_handler,
            ClientDisconnect: _client_disconnect_handler,
            StoreError: _store_error_handler,
            Exception: _internal_error_handler,
        },
    )
    # Starlette answers /api/ingest/backup/ with a 307 to a URL built from the Host header,
    # before any authentication: curl -L would then send the key and the body wherever the
    # request named (in plain text behind a TLS proxy). A trailing slash is a 404 instead,
    # naming the path meant.
    app.router.redirect_slashes = False
    return app


async def _problem_handler(_: Request, error: Exception) -> Response:
    assert isinstance(error, ProblemError)  # noqa: S101 - registered for this type only
    return error.response()


async def _http_exception_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)  # noqa: S101 - registered for this type only
    headers = dict(error.headers or {})
    path = request.scope["path"]
    if error.status_code == 404:
        detail = f"there is no resource at {shown(path)}"
        meant = _without_trailing_slash(request)
        if meant is not None:
            detail += f"; send the request to {meant}, without the trailing slash"
        return problem_response(404, "not_found", detail, headers=headers)
    if error.status_code == 405:
        allowed = headers.get("Allow", "")
        return problem_response(
            405,
            "method_not_allowed",
            f"{shown(request.method)} is not allowed on {shown(path)}; use {allowed}",
            headers=headers,
        )
    return problem_response(error.status_code, "http_error", str(error.detail), headers=headers)


def _without_trailing_slash(request: Request) -> str | None:
    """The path without its trailing slashes, if that names a route of this app."""
    path: str = request.scope["path"]
    if not path.endswith("/") or path == "/":
        return None
    trimmed = path.rstrip("/") or "/"
    candidate = {**request.scope, "path": trimmed}
    router: Router = request.scope["app"].router
    for route in router.routes:
        match, _ = route.matches(candidate)
        if match is not Match.NONE:
            return trimmed
    return None


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
    return loggable_text(
        _KEY_SHAPED.sub(lambda key: key[0][: 3 + _DISPLAYED_KEY_BODY] + "...", path)
    )


def loggable_text(text: str) -> str:
    r"""Text a client chose, as a log line may hold it: controls and other unprintables escaped.

    A decoded %0A in a path would otherwise start a forged log line, and U+009B (a C1 control
    that terminals read as an escape sequence) or U+0085 (a line break to some log readers) in
    an X-Forwarded-For address would pass through.

    >>> loggable_text("203.0.113.5\x9b31m")
    '203.0.113.5\\x9b31m'
    """
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


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
            state = scope.get("state", {})
            access_log.info(
                '%s "%s %s" %d key=%s',
                # From X-Forwarded-For behind a trusted proxy: whatever the client wrote there.
                loggable_text(str(client[0])) if client else "-",
                scope["method"],
                loggable_path(scope["path"]),
                # The server answered malformed HTTP itself: the app's answer was never sent.
                state.get(ANSWERED_BY_PROTOCOL, status),
                state.get("key_prefix", "-"),
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


class NoStore:
    """``Cache-Control: no-store`` on every answer under /api/: they carry an account's data.

    No cache between the client and the server (a proxy, a browser) may keep a copy that
    another user of it could be served.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_no_store)


@attrs.frozen
class _Ingest:
    settings: Settings
    store: Store
    limiter: Limiter
    clock: Clock
    authenticator: Authenticator
    gate: LimiterGate

    async def backup(self, request: Request) -> Response:
        return await self._ingest(request, KeyScope.INGEST, _backup_kind)

    async def notification(self, request: Request) -> Response:
        return await self._ingest(request, KeyScope.INGEST, _notification_kind)

    async def _ingest(self, request: Request, scope: KeyScope, kind: _Kind[ModelT]) -> Response:
        raw = await _read_body(request, self.settings.max_body_bytes, self.settings.body_timeout_s)
        key = await self.authenticator.authenticate(request, scope)
        rate_headers = await self.gate.admit(
            self.limiter, key.id, self.clock.monotonic_ns(), what="requests"
        )
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
    if inflater.unused_data:
        # zlib stops at the end of the first member; gzip -d (and a proxy or an inspector)
        # would go on, and see another body than the one stored.
        raise ProblemError(
            400,
            "invalid_json",
            f"the gzip body has {len(inflater.unused_data)} bytes after its end (a second gzip "
            "member or trailing data); send one gzip member holding the whole JSON body",
        )
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
