"""What the SQLite and PostgreSQL stores share: their dialects, their statements, their pages.

The two stores keep the same tables (each dialect's migrations create them) and run the same
statements, written once here as templates and rendered per :class:`Dialect`. A dialect says
what differs, and only that:

=====================  ================================  =======================================
                       SQLite (:data:`SQLITE`)           PostgreSQL (:data:`POSTGRES`)
=====================  ================================  =======================================
parameters             ``?``                             ``%s``
an instant             integer UTC microseconds,         ``timestamptz``, in columns ``*_at``
                       in columns ``*_us``               (a backup's or notification's: ``ts``)
a key's scopes         the values, space-separated       a ``text[]``
rows to be revoked     (one writer: nothing to lock)     ``FOR UPDATE``
a backup's job row     (one writer: nothing to lock)     ``FOR NO KEY UPDATE``
=====================  ================================  =======================================

Every instant is stored beside the UTC offset, in minutes, that it was sent with. A job's row
keeps what health needs of its backups (its :class:`bmcore.ReportSummary`, with the latest
backup's id and status), updated by every new backup in the same transaction, so that reading
a job, or listing jobs, reads no backups.

Statements reach a database through a :class:`Session`: the SQLite store answers its coroutines
at once from a ``sqlite3`` connection on its own threads, the PostgreSQL store awaits psycopg's
answers on its event loop. :class:`Select` plans one page of a list by the cursor rule
(:mod:`bmserver.storage._cursors`) with keyset pagination.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Final, Generic, LiteralString, Protocol, TypeVar

import attrs

import bmcore
from bmserver.storage._contract import Page, Scope, StoreError
from bmserver.storage._cursors import Place, encode_cursor, page_start
from bmserver.storage._filters import TimeWindow
from bmserver.storage._rows import RowReader

__all__ = [
    "CHANGED",
    "POSTGRES",
    "SQLITE",
    "Dialect",
    "Row",
    "Select",
    "Session",
    "Statements",
    "required",
]

R = TypeVar("R")
#: A row as a driver returns it: the selected columns in order.
Row = tuple[Any, ...]


class Session(Protocol):
    """One connection, as the shared statements use it: run a statement, get its rows."""

    async def one(self, query: LiteralString, params: Sequence[object] = ()) -> Row | None:
        """The first row of the answer, or None."""
        ...

    async def all(self, query: LiteralString, params: Sequence[object] = ()) -> list[Row]:
        """Every row of the answer."""
        ...

    async def run(self, query: LiteralString, params: Sequence[object] = ()) -> int:
        """Run an INSERT or UPDATE; how many rows it changed (0: ON CONFLICT DO NOTHING)."""
        ...


@attrs.frozen(kw_only=True)
class Dialect:
    """How one database differs in the shared statements: see the module's table."""

    name: str
    #: The parameter marker.
    placeholder: LiteralString
    #: The words of the statements' templates: ``{created}``, ``{ts}``, ``{scopes}``, ...
    words: Mapping[str, LiteralString]
    #: An aware datetime, and its UTC microseconds, as the tables hold an instant.
    instant: Callable[[datetime, int], object]
    #: UTC microseconds as the tables hold an instant; OverflowError past what they can hold.
    instant_of_us: Callable[[int], object]
    #: A key's scopes as the tables hold them.
    scopes: Callable[[frozenset[Scope]], object]
    #: How rows are read back into records.
    rows: RowReader[Any]

    def render(self, template: LiteralString) -> LiteralString:
        """A template in this dialect: its words filled in, ``?`` as this dialect's marker."""
        return template.format(**self.words).replace("?", self.placeholder)

    def moment(self, value: datetime) -> tuple[object, int]:
        """An aware datetime as the tables hold it: (the instant, its UTC offset in minutes)."""
        utc_us, offset = bmcore.split_instant(value)
        return self.instant(value, utc_us), offset

    def moment_or_none(self, value: datetime | None) -> tuple[object, int | None]:
        """:meth:`moment`, or (None, None) for no datetime."""
        return (None, None) if value is None else self.moment(value)

    @functools.cached_property
    def sql(self) -> Statements:
        """Every statement of the stores, in this dialect."""
        return Statements(self)


def _pg_shown(instant: datetime, offset: int) -> datetime:
    """A timestamptz read back (in UTC), at the offset it was sent with."""
    return instant.astimezone(timezone(timedelta(minutes=offset)))


def _pg_micros(instant: datetime) -> int:
    return bmcore.split_instant(instant)[0]


def _sorted_scopes(scopes: frozenset[Scope]) -> list[str]:
    return sorted(scope.value for scope in scopes)


def _utc_micros(_moment: datetime, utc_us: int) -> int:
    return utc_us


def _as_sent(moment: datetime, _utc_us: int) -> datetime:
    return moment


# The instants of a job's row: its summary's (the latest backup, the last success, since when it
# fails), when its schedule was set, and its pause (paused: since when; resumes: until when).
_JOB_TIMES_SQLITE: Final[Mapping[str, LiteralString]] = {
    "latest": "latest_us",
    "last_success": "last_success_us",
    "failing_since": "failing_since_us",
    "scheduled": "scheduled_us",
    "paused": "paused_us",
    "resumes": "resumes_us",
}
_JOB_TIMES_POSTGRES: Final[Mapping[str, LiteralString]] = {
    "latest": "latest_at",
    "last_success": "last_success_at",
    "failing_since": "failing_since_at",
    "scheduled": "scheduled_at",
    "paused": "paused_at",
    "resumes": "resumes_at",
}

SQLITE: Final = Dialect(
    name="sqlite",
    placeholder="?",
    words={
        "created": "created_us",
        "last_seen": "last_seen_us",
        "revoked": "revoked_us",
        "received": "received_us",
        "ts": "ts_us",
        "scopes": "?",
        "for_update": "",
        "for_job_update": "",
        **_JOB_TIMES_SQLITE,
    },
    instant=_utc_micros,
    instant_of_us=int,
    scopes=lambda scopes: " ".join(_sorted_scopes(scopes)),
    rows=RowReader[int](shown=bmcore.join_instant, micros=int, scope_values=str.split),
)

POSTGRES: Final = Dialect(
    name="postgresql",
    placeholder="%s",
    words={
        "created": "created_at",
        "last_seen": "last_seen_at",
        "revoked": "revoked_at",
        "received": "received_at",
        "ts": "ts",
        "scopes": "%s::text[]",
        # Two instances revoking at once: the second waits for the first's row locks, then
        # finds the keys revoked and revokes nothing, as if it had come second.
        "for_update": " FOR UPDATE",
        # A backup's write locks its job's row before it updates the summary there: another
        # instance's write of the same job waits, then reads the summary this one left. NO KEY:
        # the foreign keys of backups being inserted meanwhile (KEY SHARE) do not wait for it.
        "for_job_update": " FOR NO KEY UPDATE",
        **_JOB_TIMES_POSTGRES,
    },
    instant=_as_sent,
    # UTC, as the connections' time zone is: what comes back is compared with what went in.
    instant_of_us=lambda utc_us: bmcore.join_instant(utc_us, 0),
    scopes=_sorted_scopes,
    rows=RowReader[datetime](shown=_pg_shown, micros=_pg_micros, scope_values=list),
)

#: Each list's table and the word of its time column (the first part of its sort key).
_LISTS: Final[Mapping[str, tuple[LiteralString, LiteralString]]] = {
    "devices": ("devices", "created"),
    "jobs": ("jobs", "created"),
    "backups": ("backups", "ts"),
    "notifications": ("notifications", "ts"),
}

_ENTRY_COLUMNS: Final = (
    "id, account_id, device_id, job_id, {ts}, ts_offset, sender, device_name, job_name"
)
_ORIGINAL_COLUMNS: Final = "id, content_hash, {received}, received_offset, device_id, job_id"
#: What a job's row keeps of its backups, as RowReader.reports reads it.
_REPORTS_COLUMNS: Final = (
    "jobs.latest_backup_id, jobs.{latest}, jobs.latest_offset, jobs.latest_status,"
    " jobs.latest_outcome, jobs.{last_success}, jobs.last_success_offset,"
    " jobs.consecutive_failures, jobs.{failing_since}, jobs.failing_since_offset, jobs.recent"
)
#: A job as RowReader.job reads it: names, creation, seq, reports, schedule, pause.
_JOB_COLUMNS: Final = (
    "jobs.id, jobs.account_id, jobs.device_id, jobs.sender, jobs.device_name, jobs.job_name,"
    " jobs.{created}, jobs.created_offset, jobs.seq, " + _REPORTS_COLUMNS + ", jobs.schedule,"
    " jobs.{scheduled}, jobs.scheduled_offset, jobs.{paused}, jobs.paused_offset,"
    " jobs.{resumes}, jobs.resumes_offset"
)


class Statements:
    """The statements of the SQL stores in one dialect (``Dialect.sql``), rendered once."""

    def __init__(self, dialect: Dialect) -> None:
        sql = dialect.render
        self.insert_account: Final = sql(
            "INSERT INTO accounts (id, name, {created}, created_offset) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING"
        )
        self.account_named: Final = sql(
            "SELECT id, name, {created}, created_offset FROM accounts WHERE name = ?"
        )
        self.account_exists: Final = sql("SELECT 1 FROM accounts WHERE id = ?")
        self.count_accounts: Final = sql("SELECT count(*) FROM accounts")
        keys = (
            "SELECT id, account_id, key_hash, prefix, scopes, {created}, created_offset,"
            " {revoked}, revoked_offset FROM api_keys"
        )
        self.insert_key: Final = sql(
            "INSERT INTO api_keys (id, account_id, key_hash, prefix, scopes, {created},"
            " created_offset) VALUES (?, ?, ?, ?, {scopes}, ?, ?) ON CONFLICT (key_hash) DO NOTHING"
        )
        self.key_with_hash: Final = sql(keys + " WHERE key_hash = ? AND {revoked} IS NULL")
        self.all_keys: Final = sql(keys + " ORDER BY {created}, seq")
        self.keys_to_revoke: Final = sql(
            keys + " WHERE prefix = ? AND {revoked} IS NULL ORDER BY {created}, seq{for_update}"
        )
        self.revoke_keys: Final = sql(
            "UPDATE api_keys SET {revoked} = ?, revoked_offset = ?"
            " WHERE prefix = ? AND {revoked} IS NULL"
        )
        self.device_with_digest: Final = sql(
            "SELECT id FROM devices WHERE account_id = ? AND digest = ?"
        )
        self.insert_device: Final = sql(
            "INSERT INTO devices (id, account_id, digest, sender, device_name, sender_key,"
            " device_name_key, {created}, created_offset, {last_seen}, last_seen_offset)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, digest) DO NOTHING"
        )
        # Never back in time, when the clocks of two instances disagree.
        self.touch_device: Final = sql(
            "UPDATE devices SET {last_seen} = ?, last_seen_offset = ?"
            " WHERE id = ? AND {last_seen} < ?"
        )
        self.job_with_digest: Final = sql("SELECT id FROM jobs WHERE account_id = ? AND digest = ?")
        self.insert_job: Final = sql(
            "INSERT INTO jobs (id, account_id, device_id, digest, sender, device_name, job_name,"
            " sender_key, device_name_key, job_name_key, {created}, created_offset)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (account_id, digest) DO NOTHING"
        )
        # A backup's job, with what is stored under the backup's identity if anything: both in
        # one probe of UNIQUE (account_id, digest) and UNIQUE (job_id, ts). Then the job's
        # reports, which a new backup updates.
        self.job_and_backup: Final = sql(
            "SELECT jobs.id, jobs.device_id, backups.id, backups.content_hash,"
            " backups.{received}, backups.received_offset, backups.device_id, backups.job_id, "
            + _REPORTS_COLUMNS
            + " FROM jobs LEFT JOIN backups ON backups.job_id = jobs.id AND backups.{ts} = ?"
            " WHERE jobs.account_id = ? AND jobs.digest = ?"
        )
        self.job_reports_to_update: Final = sql(
            "SELECT " + _REPORTS_COLUMNS + " FROM jobs WHERE id = ?{for_job_update}"
        )
        #: Every backup of a job as a report, (timestamp, offset, outcome): for a recount.
        self.reports_of_job: Final = sql(
            "SELECT {ts}, ts_offset, outcome FROM backups WHERE job_id = ?"
        )
        self.update_job_reports: Final = sql(
            "UPDATE jobs SET latest_backup_id = ?, {latest} = ?, latest_offset = ?,"
            " latest_status = ?, latest_outcome = ?, {last_success} = ?, last_success_offset = ?,"
            " consecutive_failures = ?, {failing_since} = ?, failing_since_offset = ?, recent = ?"
            " WHERE id = ?"
        )
        self.job_by_id: Final = sql(
            "SELECT " + _JOB_COLUMNS + " FROM jobs WHERE jobs.account_id = ? AND jobs.id = ?"
        )
        #: The digests a job's writes are ordered by (see SqlJobs._entry_order).
        self.job_digests: Final = sql(
            "SELECT devices.digest, jobs.digest FROM jobs"
            " JOIN devices ON devices.id = jobs.device_id WHERE jobs.account_id = ? AND jobs.id = ?"
        )
        self.set_schedule: Final = sql(
            "UPDATE jobs SET schedule = ?, {scheduled} = ?, scheduled_offset = ?"
            " WHERE account_id = ? AND id = ?"
        )
        self.set_pause: Final = sql(
            "UPDATE jobs SET {paused} = ?, paused_offset = ?, {resumes} = ?, resumes_offset = ?"
            " WHERE account_id = ? AND id = ?"
        )
        self.original_backup: Final = sql(
            "SELECT " + _ORIGINAL_COLUMNS + " FROM backups WHERE job_id = ? AND {ts} = ?"
        )
        self.insert_backup: Final = sql(
            "INSERT INTO backups (" + _ENTRY_COLUMNS + ", status, outcome, message,"
            " content_hash, {received}, received_offset, sender_key, device_name_key, job_name_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (job_id, {ts}) DO NOTHING"
        )
        self.original_notification: Final = sql(
            "SELECT " + _ORIGINAL_COLUMNS + " FROM notifications"
            " WHERE account_id = ? AND content_hash = ?"
        )
        self.insert_notification: Final = sql(
            "INSERT INTO notifications (" + _ENTRY_COLUMNS + ", severity, type, message,"
            " content_hash, {received}, received_offset, sender_key, device_name_key, job_name_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (account_id, content_hash) DO NOTHING"
        )
        # The lists: each selects what a RowReader reads, and its sort key's seq last.
        self.devices: Final = sql(
            "SELECT id, account_id, sender, device_name, {created}, created_offset,"
            " {last_seen}, last_seen_offset, seq FROM devices"
        )
        self.jobs: Final = sql("SELECT " + _JOB_COLUMNS + " FROM jobs")
        self.backups: Final = sql(
            "SELECT " + _ENTRY_COLUMNS + ", status, message, {received}, received_offset, seq"
            " FROM backups"
        )
        self.notifications: Final = sql(
            "SELECT " + _ENTRY_COLUMNS + ", severity, type, message, {received},"
            " received_offset, seq FROM notifications"
        )
        self.lists: Final = {kind: _List(dialect, *where) for kind, where in _LISTS.items()}


def required(row: Row | None) -> Row:
    """A row that the constraints guarantee (say, the winner of a lost ON CONFLICT)."""
    if row is None:
        raise StoreError(CHANGED)
    return row


#: What a store says when a row that must exist is missing.
CHANGED: Final = "a row that must exist was not found; the database changed underneath"


class _List:
    """A list's table and time column, and the two queries of its places (see _cursors)."""

    def __init__(self, dialect: Dialect, table: LiteralString, time_word: LiteralString) -> None:
        self.table: Final = table
        self.time: Final = f"{table}.{dialect.words[time_word]}"
        self.seq: Final = f"{table}.seq"
        # Both read one account's rows at one time: a short range of the read index
        # (account_id, time, seq), in seq order.
        where = f"FROM {table} WHERE account_id = ? AND {self.time} = ?"
        #: The seq of the account's row at a place: (account id, time, rank - 1).
        self.find: Final = dialect.render(f"SELECT seq {where} ORDER BY seq LIMIT 1 OFFSET ?")
        #: The rank of a row among the account's rows with its time: (account id, time, seq).
        self.rank: Final = dialect.render(f"SELECT count(*) {where} AND seq <= ?")


class Select(Generic[R]):
    """One page of a list, planned by the cursor rule; every value is a bound parameter.

    The sort key is (the list's time, ``seq``) descending, which the read indexes yield in
    order, and the page holds the rows strictly after the cursor's place (keyset pagination: no
    OFFSET over the list, so a page costs the same however deep it is).

    ``seq`` is shared by every account, so it never leaves the store: a cursor holds a place
    (:mod:`bmserver.storage._cursors`), and a read turns it back into a sort key within the
    caller's account. Both steps read only the rows of one account at one exact time.

    Rows are never deleted, so a rank only grows if a row of the same account, time and list
    with a smaller ``seq`` commits later: two PostgreSQL instances inserting at once may commit
    out of ``seq`` order. A walk through the list then skips that late row if its cursor was at
    that very time, as keyset pagination skips any row committed behind its cursor; it never
    shows a row twice.
    """

    def __init__(
        self,
        dialect: Dialect,
        kind: str,
        select: LiteralString,
        convert: Callable[[Row], tuple[R, Place]],
        account_id: str,
        *,
        limit: int,
        cursor: str | None = None,
    ) -> None:
        # Checked here, so that a bad limit or cursor is refused before any read.
        self._place = page_start(kind, limit, cursor)
        self._dialect = dialect
        self._kind = kind
        self._select: LiteralString = select
        self._convert = convert
        self._list = dialect.sql.lists[kind]
        self._limit = limit
        self._account_id = account_id
        self._clauses: list[LiteralString] = []
        self._params: list[object] = []
        self.where("account_id", account_id)

    def where(self, column: LiteralString, value: str | None) -> None:
        """Keep the rows whose ``column`` (of the list's table) equals ``value``, unless None."""
        if value is not None:
            self._clauses.append(f"{self._list.table}.{column} = {self._dialect.placeholder}")
            self._params.append(value)

    def window(self, window: TimeWindow) -> None:
        """Keep the rows whose time lies in the window."""
        marker = self._dialect.placeholder
        if window.since_us is not None:
            self._clauses.append(f"{self._list.time} >= {marker}")
            self._params.append(self._dialect.instant_of_us(window.since_us))
        if window.until_us is not None:
            self._clauses.append(f"{self._list.time} < {marker}")
            self._params.append(self._dialect.instant_of_us(window.until_us))

    async def page(self, session: Session) -> Page[R]:
        """Run the query: one page of converted rows, and the cursor of the next page."""
        clauses, params = list(self._clauses), list(self._params)
        if self._place is not None:
            clause, values = await self._after(session, *self._place)
            clauses.append(clause)
            params.extend(values)
        listed, where = self._list, " AND ".join(clauses)
        query = (
            f"{self._select} WHERE {where}"
            f" ORDER BY {listed.time} DESC, {listed.seq} DESC LIMIT {self._dialect.placeholder}"
        )
        # One more row than asked tells whether there is a next page.
        rows = await session.all(query, (*params, self._limit + 1))
        converted = [self._convert(row) for row in rows[: self._limit]]
        next_cursor = None
        if len(rows) > self._limit:
            last_us, last_seq = converted[-1][1]
            place = last_us, await self._rank(session, last_us, last_seq)
            next_cursor = encode_cursor(self._kind, place)
        return Page(items=[item for item, _ in converted], next_cursor=next_cursor)

    async def _after(
        self, session: Session, utc_us: int, rank: int
    ) -> tuple[LiteralString, tuple[object, ...]]:
        """The clause that keeps the rows strictly after a place, in the list's order."""
        time, marker = self._list.time, self._dialect.placeholder
        try:
            instant = self._dialect.instant_of_us(utc_us)
        except OverflowError:
            # A place beyond the years a timestamptz column holds (a cursor made by hand, since
            # no row's time could be read back into one): every row lies before a place after
            # year 9999, none before a place before year 1, as integer microseconds say.
            return ("1 = 1" if utc_us >= 0 else "1 = 0"), ()
        if rank == 0:  # before the first row at that time: only earlier times follow
            return f"{time} < {marker}", (instant,)
        found = await session.one(self._list.find, (self._account_id, instant, rank - 1))
        if found is None:  # fewer rows at that time: all of them follow the place
            return f"{time} <= {marker}", (instant,)
        # A row value comparison, which both databases turn into a range on the index.
        return f"({time}, {self._list.seq}) < ({marker}, {marker})", (instant, found[0])

    async def _rank(self, session: Session, utc_us: int, seq: int) -> int:
        """The rank of the row ``seq`` among the account's rows with its time, from 1."""
        instant = self._dialect.instant_of_us(utc_us)
        counted = await session.one(self._list.rank, (self._account_id, instant, seq))
        return 0 if counted is None else int(counted[0])
