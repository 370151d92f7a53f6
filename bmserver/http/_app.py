"""The app's assembly: create_app, its routes, its lifespan and its exception handlers.

A thin adapter: validation, matching, rate and key logic live in bmcore; storage behind the
Store protocol. What each route does lives in its own module: ingest (:mod:`._ingest`), the
read side (:mod:`._reads`), authentication for both (:mod:`._authentication`); the middleware
in :mod:`._middleware`. Every error answer is a problem of :class:`~._problems.Problem`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Route, Router

from bmserver._clock import Clock
from bmserver._settings import Settings
from bmserver.http._authentication import Authenticator
from bmserver.http._gate import LimiterGate
from bmserver.http._ingest import Ingest
from bmserver.http._jobs import JobSide
from bmserver.http._metrics import MetricsEndpoint, RequestMetrics, ServerMetrics
from bmserver.http._middleware import AccessLog, NoStore, loggable_path
from bmserver.http._openapi import openapi_document
from bmserver.http._problems import (
    AsciiJSONResponse,
    Problem,
    ProblemError,
    problem_response,
    shown,
)
from bmserver.http._reads import ReadSide
from bmserver.limits._contract import Limiter, MemoryLimiter
from bmserver.storage._contract import Store, StoreError

__all__ = ["create_app"]

log = logging.getLogger("bmserver")


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
    ingest = Ingest(
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
    metrics = ServerMetrics()
    store.observe_batches(metrics.batch_sizes.observe)
    scrape = MetricsEndpoint(
        metrics=metrics,
        store=store,
        clock=clock,
        authenticator=authenticator,
        limiter=reads_limiter,
        gate=gate,
    )
    jobs = JobSide(
        settings=settings,
        store=store,
        clock=clock,
        authenticate=authenticator.authenticate,
        admit_read=reads.admit,
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
        Route("/api/jobs", jobs.jobs, methods=["GET"]),
        Route("/api/jobs/{job_id}", jobs.job, methods=["GET"]),
        Route("/api/jobs/{job_id}/schedule", jobs.put_schedule, methods=["PUT"]),
        Route("/api/jobs/{job_id}/schedule", jobs.delete_schedule, methods=["DELETE"]),
        Route("/api/jobs/{job_id}/pause", jobs.pause, methods=["POST"]),
        Route("/api/jobs/{job_id}/resume", jobs.resume, methods=["POST"]),
        Route("/api/backups", reads.backups, methods=["GET"]),
        Route("/api/notifications", reads.notifications, methods=["GET"]),
        Route("/api/backups/{entry_id}", reads.backup, methods=["GET"]),
        Route("/api/notifications/{entry_id}", reads.notification, methods=["GET"]),
        Route("/metrics", scrape.scrape, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(AccessLog),
            Middleware(
                RequestMetrics,
                metrics=metrics,
                templates={route.endpoint: route.path for route in routes},
            ),
            Middleware(NoStore),
        ],
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
        return problem_response(Problem.NOT_FOUND, detail, headers=headers)
    if error.status_code == 405:
        allowed = headers.get("Allow", "")
        return problem_response(
            Problem.METHOD_NOT_ALLOWED,
            f"{shown(request.method)} is not allowed on {shown(path)}; use {allowed}",
            headers=headers,
        )
    return problem_response(
        Problem.HTTP_ERROR, str(error.detail), status=error.status_code, headers=headers
    )


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
        Problem.STORAGE_UNAVAILABLE,
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
        Problem.INTERNAL_ERROR,
        "the server failed to handle this request; send it again (a repeated entry is answered "
        "200 and never stored twice)",
    )
