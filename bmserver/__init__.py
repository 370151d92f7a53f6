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

or run ``bmserver serve`` (see ``bmserver --help``). ``PostgresStore``, for several instances
on one PostgreSQL database, needs the ``scale`` extra (psycopg); it is imported on first use.
"""

from typing import TYPE_CHECKING

from bmserver._app import create_app
from bmserver._clock import Clock, ManualClock, SystemClock
from bmserver._gate import rate_limit_headers
from bmserver._keys import issue_api_key
from bmserver._limiter import Limiter, MemoryLimiter
from bmserver._memory import MemoryStore
from bmserver._problems import PROBLEM_CONTENT_TYPE, ProblemError
from bmserver._settings import (
    DEFAULT_AUTH_FAILURE_POLICY,
    DEFAULT_RATE_POLICY,
    DEFAULT_READ_RATE_POLICY,
    MAX_BODY_BYTES,
    MAX_PAGE_BYTES,
    Settings,
)
from bmserver._sqlite import SqliteStore
from bmserver._store import (
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

if TYPE_CHECKING:
    from bmserver._postgres import PostgresStore

__all__ = [
    "DEFAULT_AUTH_FAILURE_POLICY",
    "DEFAULT_RATE_POLICY",
    "DEFAULT_READ_RATE_POLICY",
    "MAX_BODY_BYTES",
    "MAX_PAGE_BYTES",
    "PROBLEM_CONTENT_TYPE",
    "Account",
    "ApiKeyRecord",
    "BackupQuery",
    "Clock",
    "ConflictError",
    "DeviceRecord",
    "InvalidCursorError",
    "JobRecord",
    "Limiter",
    "ManualClock",
    "MemoryLimiter",
    "MemoryStore",
    "NotificationQuery",
    "Page",
    "PostgresStore",
    "ProblemError",
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
    "create_app",
    "issue_api_key",
    "rate_limit_headers",
]


def __getattr__(name: str) -> object:
    """Import PostgresStore on first use: psycopg is an optional extra (``bm-ingest[scale]``)."""
    if name == "PostgresStore":
        try:
            from bmserver._postgres import PostgresStore  # noqa: PLC0415 - psycopg when used
        except ImportError as error:
            msg = f"{error}; PostgresStore needs the scale extra: pip install 'bm-ingest[scale]'"
            raise ImportError(msg, name=error.name) from error
        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
