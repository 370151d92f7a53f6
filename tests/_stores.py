"""What the store tests share: their event loop, their times, entries to store, and listings.

``tests/server/test_store_contract.py`` runs one suite against every store;
``test_sql_stores.py`` runs the tests that SQLite and PostgreSQL share (migrations, the
batching writer) against both; ``test_memory_store.py``, ``test_sqlite_store.py`` and
``test_postgres_store.py`` hold what only one store has. All of them build their entries and
walk their lists with these.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest

import bmcore
from bmserver import (
    BackupQuery,
    MemoryStore,
    NotificationQuery,
    Page,
    SqliteStore,
    Store,
    StoredBackup,
    StoredNotification,
)

P = ParamSpec("P")
T = TypeVar("T")

#: When the tests' writes arrive (``now``), unless a test says otherwise.
NOW = datetime(2024, 6, 4, 12, 5, tzinfo=UTC)
#: The time of the first of a job's hourly runs (:func:`run`).
BASE = datetime(2024, 1, 1, tzinfo=UTC)


class _LoopOfTest:
    """The event loop of the running test, shared with its fixtures (see :func:`shared_loop`)."""

    runner: asyncio.Runner | None = None


@contextlib.contextmanager
def shared_loop() -> Generator[asyncio.Runner]:
    """One event loop for a test and its fixtures, that :func:`run_async` tests then run on.

    A PostgresStore's connection pool belongs to the loop that opened it: the fixture that
    opens the store, the test that uses it and the fixture that closes it must share one loop
    (an ``asyncio.run`` each would give each one its own). A module whose fixtures open stores
    makes an autouse fixture of this.
    """
    with asyncio.Runner() as runner:
        _LoopOfTest.runner = runner
        try:
            yield runner
        finally:
            _LoopOfTest.runner = None


def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test function in the test's loop, or a fresh one (no async plugin needed)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        runner = _LoopOfTest.runner
        if runner is None:
            asyncio.run(test(*args, **kwargs))
        else:
            runner.run(test(*args, **kwargs))

    return run


def make_store(request: pytest.FixtureRequest, kind: str, directory: Path) -> Store:
    """A new, unopened store of a kind: memory, sqlite or postgres (in the test's own schema)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SqliteStore(directory / "bm.sqlite3")
    from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415 - psycopg is an optional extra

    url: str = request.getfixturevalue("postgres_url")
    return PostgresStore(url, schema=request.getfixturevalue("postgres_schema"))


# --- entries ----------------------------------------------------------------------------------


def at(text: str) -> datetime:
    """A timestamp as bmcore parses it (fixed offset)."""
    return bmcore.parse_timestamp(text)


def backup(
    job: str = "Nightly Full Backup",
    *,
    device: str = "srv01",
    sender: str = "script-srv01",
    timestamp: str = "2024-06-04T14:00:00+02:00",
    status: str = "Success",
    message: str = "Backup completed.",
) -> bmcore.BackupEntry:
    """A backup entry with sensible defaults."""
    return bmcore.BackupEntry(
        device_name=device,
        job_name=job,
        timestamp=at(timestamp),
        status=status,
        message=message,
        sender=sender,
    )


def notification(
    kind: str = "disk_space_low",
    *,
    device: str = "srv01",
    sender: str = "disk-monitor",
    job: str | None = None,
    timestamp: str = "2024-06-04T14:00:00+02:00",
    severity: bmcore.Severity = bmcore.Severity.WARNING,
    message: str | None = "5% free",
) -> bmcore.Notification:
    """A notification with sensible defaults."""
    return bmcore.Notification(
        device_name=device,
        timestamp=at(timestamp),
        severity=severity,
        type=kind,
        job_name=job,
        message=message,
        sender=sender,
    )


def run(
    index: int, *, job: str = "Nightly", device: str = "srv01", status: str = "Success"
) -> bmcore.BackupEntry:
    """The index-th backup of a job (message ``run <index>``): one hour after the previous one."""
    return bmcore.BackupEntry(
        device_name=device,
        job_name=job,
        timestamp=BASE + timedelta(hours=index),
        status=status,
        message=f"run {index}",
        sender="script-srv01",
    )


def note(index: int) -> bmcore.Notification:
    """The index-th notification about job Nightly on the device of :func:`run`."""
    return bmcore.Notification(
        device_name="srv01",
        timestamp=BASE + timedelta(hours=index),
        severity=bmcore.Severity.WARNING,
        type="disk_space_low",
        job_name="Nightly",
        message=f"note {index}",
        sender="script-srv01",
    )


# --- lists ------------------------------------------------------------------------------------


async def walk(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[T]:
    """Every item of a paginated list, following the cursors to the end."""
    return [item for page in await pages_of(fetch) for item in page.items]


async def pages_of(fetch: Callable[[str | None], Awaitable[Page[T]]]) -> list[Page[T]]:
    """Every page of a paginated list, following the cursors to the end."""
    pages: list[Page[T]] = []
    cursor: str | None = None
    while True:
        page = await fetch(cursor)
        pages.append(page)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


async def backups_of(
    store: Store, account_id: str, query: BackupQuery | None = None, limit: int = 1000
) -> list[StoredBackup]:
    """Every backup of an account matching the query, newest first."""
    wanted = query or BackupQuery()
    return await walk(
        lambda cursor: store.list_backups(account_id, wanted, limit=limit, cursor=cursor)
    )


async def notifications_of(
    store: Store, account_id: str, query: NotificationQuery | None = None, limit: int = 1000
) -> list[StoredNotification]:
    """Every notification of an account matching the query, newest first."""
    wanted = query or NotificationQuery()
    return await walk(
        lambda cursor: store.list_notifications(account_id, wanted, limit=limit, cursor=cursor)
    )


def lists_of(
    store: Store, account_id: str, limit: int = 1
) -> dict[str, Callable[[str | None], Awaitable[Page[object]]]]:
    """The four lists of an account, each as a function of the cursor."""

    async def backups(cursor: str | None) -> Page[object]:
        page = await store.list_backups(account_id, BackupQuery(), limit=limit, cursor=cursor)
        return Page(items=list(page.items), next_cursor=page.next_cursor)

    async def notifications(cursor: str | None) -> Page[object]:
        query = NotificationQuery()
        page = await store.list_notifications(account_id, query, limit=limit, cursor=cursor)
        return Page(items=list(page.items), next_cursor=page.next_cursor)

    async def devices(cursor: str | None) -> Page[object]:
        page = await store.list_devices(account_id, limit=limit, cursor=cursor)
        return Page(items=list(page.items), next_cursor=page.next_cursor)

    async def jobs(cursor: str | None) -> Page[object]:
        page = await store.list_jobs(account_id, device_name=None, limit=limit, cursor=cursor)
        return Page(items=list(page.items), next_cursor=page.next_cursor)

    return {
        "backups": backups,
        "notifications": notifications,
        "devices": devices,
        "jobs": jobs,
    }
