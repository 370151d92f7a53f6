"""6. Job health at scale: 100,000 jobs on SQLite, listed with health, filtered, scraped.

Each job's health is assessed from the summary its row keeps (bmcore.assess), so listing jobs
with health should cost little more than listing them. Measured in one process, on one
database, in the same run:

- **listing with health**: every job, page by page (1,000 a page), as ``GET /api/jobs`` builds
  its pages: the store's page, each job assessed, its suggestion, its JSON. The baseline is the
  same pages with the job JSON the endpoint answered before health existed (no assessment, no
  schedule, no suggestion). Goal: at most 1.5x.
- **``?state=missing``**: walking every page of the filtered listing (10,000 jobs looked at per
  request), beside the unfiltered listing.
- **one /metrics scrape**: its time and size, beside the listing.

A tenth of the jobs have a schedule, and a tenth of those are overdue.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import bmcore
from bench._report import Figure, Goal
from bmserver import JobRecord, SqliteStore
from bmserver.http._jobs import listing_page
from bmserver.http._metrics import all_jobs, job_exposition
from bmserver.http._representations import job_identity_json, json_bytes

NAME: Final = "6. Job health"
JOBS: Final = 100_000
SMOKE_JOBS: Final = 1_000
PAGE: Final = 1_000
AT_MOST_1_5X: Final = Goal(on="ratio", bound="at most", limit=1.5)
NOW: Final = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


async def _seed(store: SqliteStore, count: int) -> str:
    account = await store.create_account("bench", now=NOW)
    every = bmcore.parse_schedule({"every": "1d", "grace": "1h"})
    batch: list[Awaitable[object]] = []
    for index in range(count):
        overdue = index % 100 == 0
        ran = NOW - (timedelta(days=3) if overdue else timedelta(hours=index % 20))
        entry = bmcore.BackupEntry(
            device_name=f"srv{index // 10:05d}",
            job_name=f"job {index % 10}",
            status="Error" if index % 7 == 0 else "Success",
            message="ok",
            timestamp=ran,
        )
        batch.append(store.add_backup(account.id, entry, now=NOW))
        if len(batch) == 500:
            await asyncio.gather(*batch)
            batch.clear()
    await asyncio.gather(*batch)
    cursor: str | None = None
    index = 0
    while True:
        page = await store.list_jobs(account.id, device_name=None, limit=PAGE, cursor=cursor)
        await asyncio.gather(
            *(
                store.set_schedule(account.id, job.id, every, now=NOW - timedelta(days=5))
                for offset, job in enumerate(page.items)
                if (index + offset) % 10 == 0
            )
        )
        index += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return account.id


async def _walk_plain(store: SqliteStore, account: str) -> int:
    cursor: str | None = None
    size = 0
    while True:
        page = await store.list_jobs(account, device_name=None, limit=PAGE, cursor=cursor)
        size += sum(len(json_bytes(job_identity_json(job))) for job in page.items)
        cursor = page.next_cursor
        if cursor is None:
            return size


async def _walk_health(
    store: SqliteStore, account: str, states: frozenset[bmcore.JobState] | None
) -> int:
    async def fetch(size: int, at: str | None) -> tuple[Sequence[JobRecord], str | None]:
        page = await store.list_jobs(account, device_name=None, limit=size, cursor=at)
        return page.items, page.next_cursor

    cursor: str | None = None
    size = 0
    while True:
        parts, cursor = await listing_page(
            fetch, states, NOW, limit=PAGE, cursor=cursor, budget=sys.maxsize
        )
        size += sum(len(part) for part in parts)
        if cursor is None:
            return size


async def _scrape(store: SqliteStore, account: str) -> int:
    """The /metrics endpoint's per-job work, without the request around it."""
    return len(job_exposition(account, await all_jobs(store, account), NOW))


async def _timed(action: Callable[[], Awaitable[int]], repeats: int) -> tuple[float, int]:
    best = float("inf")
    size = 0
    for _ in range(repeats):
        started = time.perf_counter()
        size = await action()
        best = min(best, time.perf_counter() - started)
    return best, size


async def _measure(count: int, repeats: int) -> list[Figure]:
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "jobs.sqlite3")
        await store.open()
        try:
            account = await _seed(store, count)
            plain, plain_size = await _timed(lambda: _walk_plain(store, account), repeats)
            health, health_size = await _timed(lambda: _walk_health(store, account, None), repeats)
            missing = frozenset({bmcore.JobState.MISSING})
            filtered, _ = await _timed(lambda: _walk_health(store, account, missing), repeats)
            scrape, scrape_size = await _timed(lambda: _scrape(store, account), repeats)
        finally:
            await store.close()
    per_job = f"{count:,} jobs"
    return [
        Figure(
            NAME,
            f"list {per_job} with health",
            health,
            "s",
            "the same pages without health",
            plain,
            AT_MOST_1_5X,
            details={"bytes": health_size, "baseline_bytes": plain_size},
        ),
        Figure(
            NAME, f"?state=missing over {per_job}", filtered, "s", "listing with health", health
        ),
        Figure(
            NAME,
            f"/metrics scrape of {per_job}",
            scrape,
            "s",
            "listing with health",
            health,
            details={"bytes": scrape_size, "listing_bytes": health_size},
        ),
    ]


def run(*, smoke: bool) -> list[Figure]:
    """Seed the jobs, then measure; the best of three runs each (one in a smoke run)."""
    count = SMOKE_JOBS if smoke else JOBS
    figures = asyncio.run(_measure(count, 1 if smoke else 3))
    scrape = figures[-1]
    print(f"#   /metrics: {int(scrape.details['bytes']):,} bytes for {count:,} jobs", flush=True)
    return figures
