"""Jobs: their health on the read side, and their schedules and pauses for ``manage`` keys.

``GET /api/jobs`` and ``GET /api/jobs/{id}`` need a ``read`` key; each job carries its
schedule, a suggested one when it has none, its pause and its health, assessed by
:func:`bmcore.assess` from the summary the store keeps (no history is read).

``GET /api/jobs?state=missing,failing`` keeps the jobs in those states *now*. A state is not
stored (it changes as time passes), so a filtered listing looks at the jobs in the order of
the unfiltered one and keeps the matching ones: a page holds at most ``limit`` of them, and
looks at no more than ``_MAX_SCANNED`` jobs, so that a request costs the same however few jobs
match. A page may then hold fewer than ``limit`` items, even none, and a ``nextCursor``: follow
it until it is null.

Setting a schedule or a pause needs a ``manage`` key; each such request counts against the
key's read quota.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Final, cast

import attrs
from starlette.requests import Request
from starlette.responses import Response

import bmcore
from bmserver._clock import Clock
from bmserver._settings import Settings
from bmserver.http._body import check_content_type, read_body
from bmserver.http._gate import LimiterGate
from bmserver.http._problems import AsciiJSONResponse, Problem, ProblemError, shown
from bmserver.http._query import Params, could_be_an_id, no_such_item, paged
from bmserver.http._representations import (
    PAGE_ENVELOPE_BYTES,
    job_health,
    job_json,
    json_bytes,
    page_body,
)
from bmserver.limits._contract import Limiter
from bmserver.storage._contract import ApiKeyRecord, JobRecord, Scope, Store

__all__ = ["JobSide", "listing_page"]

#: Jobs looked at per request by a filtered listing, at most.
_MAX_SCANNED: Final = 10_000
#: Jobs fetched from the store at once.
_CHUNK: Final = 1000
#: A schedule or pause body is a few fields: anything longer is not one.
_MAX_SETTING_BYTES: Final = 4096
_STATES: Final = {state.value: state for state in bmcore.JobState}


@attrs.frozen
class JobSide:
    """The /api/jobs endpoints."""

    settings: Settings
    store: Store
    clock: Clock
    authenticate: Callable[[Request, Scope], Awaitable[ApiKeyRecord]]
    #: A read request's admission: its key (``read`` scope), charged one read.
    admit_read: Callable[[Request], Awaitable[tuple[ApiKeyRecord, dict[str, str]]]]
    #: Read requests per key: manage requests count against it too.
    limiter: Limiter
    gate: LimiterGate

    async def jobs(self, request: Request) -> Response:
        """GET /api/jobs: each job with its latest backup, schedule and health."""
        key, headers = await self.admit_read(request)
        params = Params(request, self.settings, allowed={"limit", "cursor", "deviceName", "state"})
        limit, cursor = params.page()
        device_name = params.text("deviceName")
        states = _states(params, request.query_params.get("state"))
        params.done()
        now = self.clock.now()

        async def fetch(size: int, at: str | None) -> tuple[Sequence[JobRecord], str | None]:
            page = await paged(
                self.store.list_jobs(key.account_id, device_name=device_name, limit=size, cursor=at)
            )
            return page.items, page.next_cursor

        parts, next_cursor = await listing_page(
            fetch, states, now, limit=limit, cursor=cursor, budget=self._budget()
        )
        body = page_body(parts, next_cursor)
        return Response(body, media_type="application/json", headers=headers)

    async def job(self, request: Request) -> Response:
        """GET /api/jobs/{job_id}."""
        key, headers = await self.admit_read(request)
        job = await self._job(key, request, headers)
        return AsciiJSONResponse(job_json(job, self.clock.now()), headers=headers)

    async def put_schedule(self, request: Request) -> Response:
        """PUT /api/jobs/{job_id}/schedule: ``every`` or ``cron`` and ``timezone``; ``grace``."""
        fields, key, headers = await self._setting(request)
        try:
            schedule = bmcore.parse_schedule(fields)
        except bmcore.PayloadError as error:
            raise ProblemError(
                Problem.VALIDATION_FAILED,
                "the schedule is not valid; see errors",
                errors=error.errors,
                headers=headers,
            ) from None
        job = await self._job(key, request, headers)
        return await self._answer(
            self.store.set_schedule(key.account_id, job.id, schedule, now=self.clock.now()),
            job,
            headers,
        )

    async def delete_schedule(self, request: Request) -> Response:
        """DELETE /api/jobs/{job_id}/schedule: the job is judged on its outcome alone."""
        key, headers = await self._admit_manage(request)
        job = await self._job(key, request, headers)
        return await self._answer(
            self.store.set_schedule(key.account_id, job.id, None, now=self.clock.now()),
            job,
            headers,
        )

    async def pause(self, request: Request) -> Response:
        """POST /api/jobs/{job_id}/pause with ``{"until": timestamp}``; without: until resumed."""
        fields, key, headers = await self._setting(request)
        now = self.clock.now()
        until = _until(fields, now, headers)
        job = await self._job(key, request, headers)
        pause = bmcore.Pause(since=now, until=until)
        return await self._answer(self.store.set_pause(key.account_id, job.id, pause), job, headers)

    async def resume(self, request: Request) -> Response:
        """POST /api/jobs/{job_id}/resume: the pause ends now; the job is due a period later."""
        key, headers = await self._admit_manage(request)
        job = await self._job(key, request, headers)
        now = self.clock.now()
        if job.pause is None or not job.pause.covers(now):
            return AsciiJSONResponse(job_json(job, now), headers=headers)
        ended = bmcore.Pause(since=job.pause.since, until=now)
        return await self._answer(self.store.set_pause(key.account_id, job.id, ended), job, headers)

    # --- helpers --------------------------------------------------------------------------

    def _budget(self) -> int:
        return self.settings.max_page_bytes - PAGE_ENVELOPE_BYTES

    async def _admit_manage(self, request: Request) -> tuple[ApiKeyRecord, dict[str, str]]:
        key = await self.authenticate(request, Scope.MANAGE)
        now_ns = self.clock.monotonic_ns()
        headers = await self.gate.admit(self.limiter, key.id, now_ns, what="read requests")
        return key, headers

    async def _setting(
        self, request: Request
    ) -> tuple[dict[str, object], ApiKeyRecord, dict[str, str]]:
        """A manage request's JSON object body, read before the key is looked up."""
        raw = await read_body(
            request,
            _MAX_SETTING_BYTES,
            self.settings.body_timeout_s,
            advice="a schedule or pause is a few short fields",
        )
        key, headers = await self._admit_manage(request)
        check_content_type(request)
        try:
            fields: object = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise ProblemError(
                Problem.INVALID_JSON,
                "the body is not valid JSON; send a JSON object such as "
                '{"every": "24h", "grace": "1h"}',
                headers=headers,
            ) from None
        if not isinstance(fields, dict):
            raise ProblemError(
                Problem.VALIDATION_FAILED,
                "the body must be a JSON object",
                errors=(
                    bmcore.FieldError(field="", code="wrong_type", message="send a JSON object"),
                ),
                headers=headers,
            )
        members = cast("dict[object, object]", fields)
        return {str(name): value for name, value in members.items()}, key, headers

    async def _job(self, key: ApiKeyRecord, request: Request, headers: dict[str, str]) -> JobRecord:
        job_id = str(request.path_params["job_id"])
        job = await self.store.get_job(key.account_id, job_id) if could_be_an_id(job_id) else None
        if job is None:
            raise no_such_item("job", job_id, headers)
        return job

    async def _answer(
        self, change: Awaitable[JobRecord | None], job: JobRecord, headers: dict[str, str]
    ) -> Response:
        changed = await change
        if changed is None:  # gone between the lookup and the change: never, as jobs stay
            raise no_such_item("job", job.id, headers)
        return AsciiJSONResponse(job_json(changed, self.clock.now()), headers=headers)


def _states(params: Params, raw: str | None) -> frozenset[bmcore.JobState] | None:
    if raw is None:
        return None
    names = [name.strip().casefold() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in _STATES]
    if unknown or not names:
        params.errors.append(
            bmcore.FieldError(
                field="state",
                code="invalid_choice",
                message=f"state is a comma-separated list of {', '.join(_STATES)}; "
                f"got {shown(raw, 40)!r}",
            )
        )
        return None
    return frozenset(_STATES[name] for name in names)


def _until(fields: dict[str, object], now: datetime, headers: dict[str, str]) -> datetime | None:
    errors = [
        bmcore.FieldError(
            field=f"/{shown(name, 40)}",
            code="unknown_field",
            message="a pause has one field, until",
        )
        for name in fields
        if name != "until"
    ]
    raw = fields.get("until")
    until: datetime | None = None
    if raw is not None:
        if isinstance(raw, str):
            try:
                until = bmcore.parse_timestamp(raw)
            except bmcore.TimestampError as error:
                errors.append(
                    bmcore.FieldError(field="/until", code=error.code, message=error.message)
                )
        else:
            errors.append(
                bmcore.FieldError(
                    field="/until",
                    code="wrong_type",
                    message="until is an ISO 8601 timestamp with a UTC offset, or null",
                )
            )
    if until is not None and until <= now:
        errors.append(
            bmcore.FieldError(
                field="/until",
                code="not_in_the_future",
                message="until must be in the future; to end a pause, POST to .../resume",
            )
        )
    if errors:
        raise ProblemError(
            Problem.VALIDATION_FAILED,
            "the pause is not valid; see errors",
            errors=tuple(errors),
            headers=headers,
        )
    return until


_Fetch = Callable[[int, str | None], Awaitable[tuple[Sequence[JobRecord], str | None]]]


async def listing_page(
    fetch: _Fetch,
    states: frozenset[bmcore.JobState] | None,
    now: datetime,
    *,
    limit: int,
    cursor: str | None,
    budget: int,
) -> tuple[list[bytes], str | None]:
    """The encoded jobs of one page, and the cursor after the last job looked at.

    At most ``limit`` jobs (of ``states``, if given) and ``budget`` bytes; at most
    ``_MAX_SCANNED`` jobs are looked at. A cursor names the place after a job only as the
    store hands it out: when a page ends inside a chunk, the jobs up to there are fetched again.
    """
    parts: list[bytes] = []
    size = scanned = 0
    while True:
        start = cursor
        want = _CHUNK if states else min(_CHUNK, limit - len(parts))
        items, cursor = await fetch(want, start)
        taken, used = await asyncio.to_thread(
            _take, items, states, now, room=budget - size, want=limit - len(parts), first=not parts
        )
        scanned += used
        if used < len(items):
            if used == 0:
                return parts, start
            again, cursor = await fetch(used, start)
            whole, _ = _take(again, states, now, room=sys.maxsize, want=sys.maxsize, first=True)
            parts.extend(whole)
            return parts, cursor
        parts.extend(taken)
        size += sum(len(part) + 1 for part in taken)
        if cursor is None or len(parts) >= limit or scanned >= _MAX_SCANNED:
            return parts, cursor


def _take(
    jobs: Sequence[JobRecord],
    states: frozenset[bmcore.JobState] | None,
    now: datetime,
    *,
    room: int,
    want: int,
    first: bool,
) -> tuple[list[bytes], int]:
    """The encoded jobs of ``states`` that fit, and how many of ``jobs`` were used up."""
    taken: list[bytes] = []
    used = 0
    for job in jobs:
        health = job_health(job, now)
        if states is None or health.state in states:
            if len(taken) == want:
                break
            part = json_bytes(job_json(job, now, health))
            if room - (len(part) + 1) < 0 and not (first and not taken):
                break
            room -= len(part) + 1
            taken.append(part)
        used += 1
    return taken, used
