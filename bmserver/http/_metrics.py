"""GET /metrics in the Prometheus text format, built with prometheus_client.

Two kinds of series:

- **The server's own**, kept in a registry per app (not prometheus_client's global one, so that
  several apps in one process, as tests make them, do not collide): requests by endpoint
  (the route's template, never the raw path), method and status; a latency histogram per
  endpoint; rate-limit rejections (429s) per endpoint; the sizes of the store's write batches.
- **Per job**, of the scraping key's account only, assessed at scrape time:
  ``bm_job_state{account,sender,device,job,state}`` is 1 for the job's current state (only that
  state is exported: seven series per job would multiply a large account's series by seven),
  ``bm_job_last_success_timestamp_seconds``, ``bm_job_next_due_timestamp_seconds`` (scheduled
  jobs only) and ``bm_job_consecutive_failures``.

Label values are user text; prometheus_client escapes backslashes, double quotes and line
feeds in them, as the text format requires.

Access needs a ``read`` key, in ``X-Api-Key`` or as ``Authorization: Bearer`` (what
Prometheus's ``authorization`` setting sends); a scrape counts as one read request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from bmserver._clock import Clock
from bmserver.http._authentication import Authenticator
from bmserver.http._gate import LimiterGate
from bmserver.http._representations import job_health
from bmserver.limits._contract import Limiter
from bmserver.storage._contract import JobRecord, Store
from bmserver.storage._contract import Scope as KeyScope

__all__ = [
    "METRICS_MEDIA_TYPE",
    "MetricsEndpoint",
    "RequestMetrics",
    "ServerMetrics",
    "all_jobs",
    "job_exposition",
]

#: The Prometheus text format, version 0.0.4.
METRICS_MEDIA_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Jobs read from the store per query while a scrape lists them.
_SCRAPE_PAGE: Final = 1000
#: The endpoint label of a request that matched no route.
_UNMATCHED: Final = "unmatched"


class ServerMetrics:
    """The server's own series, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bm_http_requests",
            "HTTP requests answered, by endpoint (route template), method and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bm_http_request_duration_seconds",
            "Time from a request's start to the end of its answer, by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "bm_rate_limit_rejections",
            "Requests refused with 429 (a key's quota or an address's failed logins), by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "bm_store_batch_size",
            "Entries committed per write batch of the store.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )


class RequestMetrics:
    """ASGI middleware: counts each answered request and times it, by route template."""

    def __init__(
        self, app: ASGIApp, *, metrics: ServerMetrics, templates: dict[object, str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        #: The route endpoints' templates: ``/api/jobs/{job_id}``, not the job's id.
        self.templates = templates

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = [500]  # the status sent; 500 if the app raised before answering

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            endpoint = self.templates.get(scope.get("endpoint"), _UNMATCHED)
            status = answered[0]
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            if status == 429:
                self.metrics.rate_limited.labels(endpoint).inc()


# eq=False: a registry keeps its collectors in a dict, by identity.
@attrs.frozen(eq=False)
class _JobCollector(Collector):
    """The per-job series of one account's jobs, assessed at ``now``."""

    account_id: str
    jobs: list[JobRecord]
    now: datetime

    def collect(self) -> Iterator[Metric]:
        labels = ["account", "sender", "device", "job"]
        state = GaugeMetricFamily(
            "bm_job_state", "1 for the job's current state.", labels=[*labels, "state"]
        )
        success = GaugeMetricFamily(
            "bm_job_last_success_timestamp_seconds",
            "When the job's latest Success report ran (its timestamp), in Unix seconds.",
            labels=labels,
        )
        due = GaugeMetricFamily(
            "bm_job_next_due_timestamp_seconds",
            "When the scheduled job should next report, in Unix seconds.",
            labels=labels,
        )
        failures = GaugeMetricFamily(
            "bm_job_consecutive_failures",
            "Error reports after the job's latest Success.",
            labels=labels,
        )
        for job in self.jobs:
            health = job_health(job, self.now)
            values = [self.account_id, job.sender, job.device_name, job.job_name]
            state.add_metric([*values, health.state.value], 1)
            if health.last_success_at is not None:
                success.add_metric(values, health.last_success_at.timestamp())
            if health.next_due_at is not None:
                due.add_metric(values, health.next_due_at.timestamp())
            failures.add_metric(values, health.consecutive_failures)
        yield from (state, success, due, failures)


@attrs.frozen
class MetricsEndpoint:
    """GET /metrics: the server's series, then the key's account's jobs."""

    metrics: ServerMetrics
    store: Store
    clock: Clock
    authenticator: Authenticator
    #: Read requests per key: a scrape is one.
    limiter: Limiter
    gate: LimiterGate

    async def scrape(self, request: Request) -> Response:
        """GET /metrics, for a read key in X-Api-Key or as Authorization: Bearer."""
        key = await self.authenticator.authenticate(request, KeyScope.READ, bearer=True)
        now_ns = self.clock.monotonic_ns()
        headers = await self.gate.admit(self.limiter, key.id, now_ns, what="read requests")
        jobs = await all_jobs(self.store, key.account_id)
        now = self.clock.now()

        def render() -> bytes:
            return generate_latest(self.metrics.registry) + job_exposition(
                key.account_id, jobs, now
            )

        # Thousands of jobs take a while to assess and format: not on the event loop.
        body = await asyncio.to_thread(render)
        return Response(body, media_type=METRICS_MEDIA_TYPE, headers=headers)


async def all_jobs(store: Store, account_id: str) -> list[JobRecord]:
    """Every job of the account, read page by page."""
    jobs: list[JobRecord] = []
    cursor: str | None = None
    while True:
        page = await store.list_jobs(
            account_id, device_name=None, limit=_SCRAPE_PAGE, cursor=cursor
        )
        jobs.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return jobs


def job_exposition(account_id: str, jobs: list[JobRecord], now: datetime) -> bytes:
    """The per-job series of ``jobs`` at ``now``, in the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_JobCollector(account_id, jobs, now))
    return generate_latest(registry)
