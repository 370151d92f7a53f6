"""The storage interface of bmserver, and the records it stores and returns.

Every method is a coroutine: the SQLite store runs its queries off the event loop (a single
writer thread that commits in batches, readers on their own connections), the in-memory store
answers at once. A write's coroutine returns only once the write is durable (committed), so
the HTTP layer never acknowledges an entry that could still be lost.

Names filter the way reports are matched. The name filters of :class:`BackupQuery` and
:class:`NotificationQuery` (``device_name``, ``job_name``, ``sender``) and ``list_jobs``'
``device_name`` take the text as the client sent it and compare canonical forms
(:func:`bmcore.canonical_name`: case-folded, whitespace collapsed, invisible characters
removed): a device sent as ``FiltDev`` and as ``filtdev`` is one device, and a filter of either
spelling finds every entry of it, whichever spelling each entry was sent with. Every store
does it identically. ``status`` and ``type`` filters compare the text exactly as sent.

Error hierarchy::

    StoreError(Exception)
    ├── ConflictError        the same job and timestamp already hold different content (409)
    ├── UnknownKeyError      revoke: no key has that display prefix
    └── InvalidCursorError   a list cursor this store did not hand out (400)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import attrs

from bmcore import BackupEntry, Notification, Pause, ReportSummary, Schedule

__all__ = [
    "Account",
    "ApiKeyRecord",
    "BackupQuery",
    "ConflictError",
    "DeviceRecord",
    "InvalidCursorError",
    "JobRecord",
    "NotificationQuery",
    "Page",
    "Scope",
    "Store",
    "StoreError",
    "StoredBackup",
    "StoredNotification",
    "UnknownKeyError",
    "WriteResult",
]


class Scope(enum.Enum):
    """What a key may do."""

    INGEST = "ingest"
    READ = "read"
    #: Change jobs' schedules and pauses (PUT /api/jobs/{id}/schedule, ...).
    MANAGE = "manage"


class StoreError(Exception):
    """Base class of the errors a store raises on purpose."""


class ConflictError(StoreError):
    """The same job and timestamp (or the same notification) already hold different content."""

    def __init__(self, existing_id: str) -> None:
        self.existing_id = existing_id
        super().__init__(f"an entry with the same job and timestamp exists: {existing_id}")


class UnknownKeyError(StoreError):
    """No (unrevoked) key has the given display prefix."""


class InvalidCursorError(StoreError):
    """A pagination cursor that this store did not hand out (or that was tampered with)."""


T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Account:
    """A customer: keys, devices, jobs and entries all belong to exactly one account."""

    id: str
    name: str
    created_at: datetime


@attrs.frozen(kw_only=True)
class ApiKeyRecord:
    """A stored key: never the key itself, only its hash and display prefix."""

    id: str
    account_id: str
    key_hash: str
    prefix: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None = None


@attrs.frozen(kw_only=True)
class WriteResult:
    """What storing an entry did: its id, and the device and job it was matched to.

    ``duplicate`` is True for an idempotent repeat: nothing new was stored and ``id`` is the
    original entry's id (``device_created``/``job_created`` are then False).
    """

    id: str
    received_at: datetime
    device_id: str
    device_created: bool
    job_id: str | None
    job_created: bool
    duplicate: bool


@attrs.frozen(kw_only=True)
class DeviceRecord:
    """A device: created the first time its matching key (sender + deviceName) is seen."""

    id: str
    account_id: str
    sender: str  # as first sent
    device_name: str  # as first sent
    created_at: datetime
    last_seen_at: datetime


@attrs.frozen(kw_only=True)
class JobRecord:
    """A job: created the first time its matching key (sender + deviceName + jobName) is seen."""

    id: str
    account_id: str
    device_id: str
    sender: str
    device_name: str
    job_name: str
    created_at: datetime
    #: The newest backup entry of this job (by timestamp), if any.
    latest_backup_id: str | None
    latest_timestamp: datetime | None
    latest_status: str | None
    latest_outcome: str | None
    #: What health needs of the job's backups (latest, last success, failures since, recent
    #: times), kept up to date as backups are written, backfills included: assessing a job
    #: reads no history.
    summary: ReportSummary = attrs.field(factory=ReportSummary)
    schedule: Schedule | None = None
    #: When the schedule was last set: a job with no report is ``new`` from then on.
    scheduled_at: datetime | None = None
    #: The job's current or last pause; :meth:`bmcore.Pause.covers` says if it holds now.
    pause: Pause | None = None


@attrs.frozen(kw_only=True)
class StoredBackup:
    """A stored backup entry as the read side returns it."""

    id: str
    account_id: str
    device_id: str
    job_id: str
    entry: BackupEntry  # timestamp with its original offset
    received_at: datetime


@attrs.frozen(kw_only=True)
class StoredNotification:
    """A stored notification as the read side returns it."""

    id: str
    account_id: str
    device_id: str
    job_id: str | None
    notification: Notification
    received_at: datetime


@attrs.frozen(kw_only=True)
class BackupQuery:
    """Filters for listing backups; None means no filter.

    Names (``device_name``, ``job_name``, ``sender``) match by canonical form, as reports are
    matched (see the module documentation); ``outcome`` and ``status`` match exactly.
    """

    device_name: str | None = None
    job_name: str | None = None
    sender: str | None = None
    outcome: str | None = None  # Success | Warning | Error | Unknown
    status: str | None = None
    since: datetime | None = None  # timestamp >= since
    until: datetime | None = None  # timestamp < until


@attrs.frozen(kw_only=True)
class NotificationQuery:
    """Filters for listing notifications; None means no filter.

    Names (``device_name``, ``job_name``, ``sender``) match by canonical form, as reports are
    matched (see the module documentation); ``severity`` and ``type`` match exactly. A job name
    filter finds only notifications that name a job.
    """

    device_name: str | None = None
    job_name: str | None = None
    sender: str | None = None
    severity: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@attrs.frozen(kw_only=True)
class Page(Generic[T]):
    """One page of a list, newest first; ``next_cursor`` is None on the last page."""

    items: Sequence[T]
    next_cursor: str | None


class Store(Protocol):
    """Where bmserver keeps accounts, keys, devices, jobs and entries."""

    async def open(self) -> None:
        """Connect, apply pending migrations, start background work."""
        ...

    async def close(self) -> None:
        """Finish every write already accepted, then release everything."""
        ...

    # --- accounts and keys ----------------------------------------------------------------

    async def create_account(self, name: str, *, now: datetime) -> Account:
        """Create an account (names are unique; an existing name returns that account)."""
        ...

    async def add_api_key(
        self,
        *,
        account_id: str,
        key_hash: str,
        prefix: str,
        scopes: frozenset[Scope],
        now: datetime,
    ) -> ApiKeyRecord:
        """Store a new key's hash."""
        ...

    async def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        """The unrevoked key with this hash, or None."""
        ...

    async def list_api_keys(self) -> Sequence[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke_api_key(self, prefix: str, *, now: datetime) -> ApiKeyRecord:
        """Revoke the unrevoked key with this display prefix; UnknownKeyError if none."""
        ...

    def observe_batches(self, observer: Callable[[int], None]) -> None:
        """Call ``observer`` with the size of each write batch the store commits (for metrics).

        A store that does not batch its writes (the memory store) never calls it.
        """
        ...

    async def count_accounts(self) -> int:
        """How many accounts exist (0 on a new database)."""
        ...

    # --- entries --------------------------------------------------------------------------

    async def add_backup(
        self, account_id: str, entry: BackupEntry, *, now: datetime
    ) -> WriteResult:
        """Store a backup, or recognise an idempotent repeat; ConflictError on a clash."""
        ...

    async def add_notification(
        self, account_id: str, notification: Notification, *, now: datetime
    ) -> WriteResult:
        """Store a notification, or recognise an identical one as an idempotent repeat."""
        ...

    # --- read side ------------------------------------------------------------------------

    async def get_backup(self, account_id: str, entry_id: str) -> StoredBackup | None:
        """One backup of the account by id (what a 201's Location names), or None."""
        ...

    async def get_notification(self, account_id: str, entry_id: str) -> StoredNotification | None:
        """One notification of the account by id, or None."""
        ...

    async def list_devices(
        self, account_id: str, *, limit: int, cursor: str | None
    ) -> Page[DeviceRecord]:
        """Devices of one account, newest first."""
        ...

    async def list_jobs(
        self, account_id: str, *, device_name: str | None, limit: int, cursor: str | None
    ) -> Page[JobRecord]:
        """Jobs of one account with their latest entry, newest first.

        ``device_name`` keeps the jobs of devices with that name in canonical form.
        """
        ...

    async def get_job(self, account_id: str, job_id: str) -> JobRecord | None:
        """One job of the account by id, with its summary, schedule and pause; or None."""
        ...

    # --- job settings ---------------------------------------------------------------------

    async def set_schedule(
        self, account_id: str, job_id: str, schedule: Schedule | None, *, now: datetime
    ) -> JobRecord | None:
        """Set a job's schedule (``None`` clears it), set ``scheduled_at`` to ``now``.

        Returns the job as now stored, or None when the account has no such job.
        """
        ...

    async def set_pause(
        self, account_id: str, job_id: str, pause: Pause | None
    ) -> JobRecord | None:
        """Store a job's pause (``None`` clears it); the job as now stored, or None."""
        ...

    async def list_backups(
        self, account_id: str, query: BackupQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredBackup]:
        """Backups of one account, newest timestamp first."""
        ...

    async def list_notifications(
        self, account_id: str, query: NotificationQuery, *, limit: int, cursor: str | None
    ) -> Page[StoredNotification]:
        """Notifications of one account, newest timestamp first."""
        ...
