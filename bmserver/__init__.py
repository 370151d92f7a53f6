"""bmserver: the BackupMonitor ingest service over HTTP, a thin Starlette adapter on bmcore.

Build an app with everything it needs passed in::

    from bmserver import MemoryLimiter, Settings, SqliteStore, SystemClock, create_app

    settings = Settings()
    app = create_app(
        settings,
        store=SqliteStore("bm-ingest.sqlite3"),
        limiter=MemoryLimiter(settings.rate_policy),
        clock=SystemClock(),
    )

or run ``bmserver serve`` (see ``bmserver --help``). ``PostgresStore`` (several instances on
one PostgreSQL database) and ``RedisLimiter`` with ``connect_redis`` (their rate limits shared
in Redis) need the ``scale`` extra (psycopg, redis); they are imported on first use, as is
``GuardedH11Protocol``, the uvicorn protocol ``bmserver serve`` serves with.
"""

import importlib
from typing import TYPE_CHECKING

from bmserver._arguments import port_argument, positive_int_argument, rate_argument
from bmserver._clock import Clock, ManualClock, SystemClock
from bmserver._coroutines import run_unsuspended
from bmserver._keys import issue_api_key
from bmserver._settings import (
    DEFAULT_AUTH_FAILURE_POLICY,
    DEFAULT_RATE_POLICY,
    DEFAULT_READ_RATE_POLICY,
    MAX_BODY_BYTES,
    MAX_PAGE_BYTES,
    Settings,
)
from bmserver.http._app import create_app
from bmserver.http._gate import rate_limit_headers, rate_limit_problem
from bmserver.http._ingest import INGEST_OUTCOME, IngestOutcome, ingest_outcome
from bmserver.http._problems import PROBLEM_CONTENT_TYPE, Problem, ProblemError
from bmserver.limits._contract import Limiter, LimiterUnavailableError, MemoryLimiter
from bmserver.storage._contract import (
    Account,
    ApiKeyRecord,
    BackupQuery,
    ConflictError,
    DeviceRecord,
    InvalidCursorError,
    JobRecord,
    NotificationQuery,
    Page,
    Scope,
    Store,
    StoredBackup,
    StoredNotification,
    StoreError,
    UnknownKeyError,
    WriteResult,
)
from bmserver.storage._memory import MemoryStore
from bmserver.storage._sqlite import SqliteStore

if TYPE_CHECKING:
    from bmserver.http._protocol import GuardedH11Protocol
    from bmserver.limits._redis import RedisLimiter, connect_redis
    from bmserver.storage._postgres import PostgresStore

__all__ = [
    "DEFAULT_AUTH_FAILURE_POLICY",
    "DEFAULT_RATE_POLICY",
    "DEFAULT_READ_RATE_POLICY",
    "INGEST_OUTCOME",
    "MAX_BODY_BYTES",
    "MAX_PAGE_BYTES",
    "PROBLEM_CONTENT_TYPE",
    "Account",
    "ApiKeyRecord",
    "BackupQuery",
    "Clock",
    "ConflictError",
    "DeviceRecord",
    "GuardedH11Protocol",
    "IngestOutcome",
    "InvalidCursorError",
    "JobRecord",
    "Limiter",
    "LimiterUnavailableError",
    "ManualClock",
    "MemoryLimiter",
    "MemoryStore",
    "NotificationQuery",
    "Page",
    "PostgresStore",
    "Problem",
    "ProblemError",
    "RedisLimiter",
    "Scope",
    "Settings",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoredBackup",
    "StoredNotification",
    "SystemClock",
    "UnknownKeyError",
    "WriteResult",
    "connect_redis",
    "create_app",
    "ingest_outcome",
    "issue_api_key",
    "port_argument",
    "positive_int_argument",
    "rate_argument",
    "rate_limit_headers",
    "rate_limit_problem",
    "run_unsuspended",
]


def __getattr__(name: str) -> object:
    """Import the names that need an optional extra, or uvicorn, on first use."""
    if name == "PostgresStore":
        _require("psycopg", "PostgresStore")
        from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415 - psycopg when used

        return PostgresStore
    if name in {"RedisLimiter", "connect_redis"}:
        _require("redis", name)
        from bmserver.limits import _redis  # noqa: PLC0415 - redis when used

        return getattr(_redis, name)
    if name == "GuardedH11Protocol":
        # The app itself needs no uvicorn: only what serves it does.
        from bmserver.http._protocol import GuardedH11Protocol  # noqa: PLC0415

        return GuardedH11Protocol
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _require(driver: str, name: str) -> None:
    """Import ``driver`` now, or say which extra brings it."""
    try:
        importlib.import_module(driver)
    except ImportError as error:
        msg = f"{error}; {name} needs the scale extra: pip install 'bm-ingest[scale]'"
        raise ImportError(msg, name=error.name) from error
