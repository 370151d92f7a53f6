"""Concurrent ingest traffic with exact accounting, for the reliability load and crash tests.

:class:`Ledger` makes unique entries, keeps what was sent for each, and records every answer.
An entry is *acknowledged* only when a complete 201, or 200 for a repeat, carrying an id was
read. An entry whose request got no complete answer (the connection failed, the server died)
is *in doubt*: it may be stored or not, but never partly. :class:`Clients` runs client threads,
each on one keep-alive connection as a real agent would hold it, and :func:`audit` holds the
ledger against the rows of the database.

Every entry's timestamp is unique (one second per sequence number after a fixed base), so a
row leads back to what was sent for it by its timestamp alone, whatever its other fields hold:
a row with a wrong field is then reported as such instead of as an unknown row.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final, Literal, Self

from _reliability import HOST, Tally

Kind = Literal["backup", "notification"]
#: Runs one SQL statement on some connection to the database and returns every row.
Query = Callable[[str], list[tuple[Any, ...]]]

PATHS: Final[Mapping[Kind, str]] = {
    "backup": "/api/ingest/backup",
    "notification": "/api/ingest/notification",
}
#: The columns an audit compares with what was sent; ``id`` comes first in every read.
COLUMNS: Final[Mapping[Kind, str]] = {
    "backup": "sender, device_name, job_name, ts_us, ts_offset, status, outcome, message",
    "notification": "sender, device_name, job_name, ts_us, ts_offset, severity, type, message",
}
_TABLES: Final[Mapping[Kind, str]] = {"backup": "backups", "notification": "notifications"}

#: A request that takes longer than this is a hang, and reported as one.
REQUEST_TIMEOUT_S: Final = 15.0
_DEFAULT_SENDER: Final = "unknown@ingest"
_US_PER_S: Final = 1_000_000
# Several offsets, written in the three accepted shapes, so that the stored UTC instant and
# offset are checked against every way of writing them.
_OFFSETS_MIN: Final = (0, 120, -330, 345, 60)
_JOBS: Final = ("Nightly Full Backup", "Hourly Incremental", "DB dump")
# (sent, outcome): the recommended values in several cases, and one the server does not know.
_STATUSES: Final = (
    ("Success", "Success"),
    ("warning", "Warning"),
    ("ERROR", "Error"),
    ("Partial success", "Unknown"),
)
_SEVERITIES: Final = ("info", "WARNING", "Error", "critical")
_TYPES: Final = ("disk_space_low", "ssl_expiry", "service_restart")


@dataclass(frozen=True)
class Entry:
    """One unique entry: the payload sent, and the row it must become."""

    seq: int
    kind: Kind
    payload: Mapping[str, str]
    moment: datetime
    row: tuple[object, ...]  # the values of COLUMNS[kind]

    def body(self, *, reordered: bool = False) -> bytes:
        """The JSON body; ``reordered`` writes the keys in reverse (the same content)."""
        items = list(self.payload.items())
        return json.dumps(dict(items[::-1] if reordered else items)).encode()


@dataclass(frozen=True)
class Row:
    """An entry as the database holds it."""

    kind: Kind
    id: str
    values: tuple[Any, ...]  # COLUMNS[kind], as sqlite3 returns them


def read_rows(query: Query) -> list[Row]:
    """Every backup and notification row, through ``query``."""
    return [
        Row(kind, str(found[0]), tuple(found[1:]))
        for kind in ("backup", "notification")
        for found in query(f"SELECT id, {COLUMNS[kind]} FROM {_TABLES[kind]}")  # noqa: S608 - fixed names
    ]


def integrity_problems(query: Query) -> list[str]:
    """What ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check`` report, if anything."""
    problems = [f"integrity_check: {row[0]}" for row in query("PRAGMA integrity_check")]
    if problems == ["integrity_check: ok"]:
        problems = []
    # A row whose device or job is missing would be a write that was only partly stored.
    problems += [f"foreign_key_check: {row}" for row in query("PRAGMA foreign_key_check")]
    return problems


def snapshot(database: Path, folder: Path) -> Path:
    """Copy the database with its WAL and shared-memory files into ``folder``; the copy's path.

    Only call it while no process has the database open, so that the files are consistent.
    """
    folder.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = database.with_name(database.name + suffix)
        if source.exists():
            shutil.copyfile(source, folder / source.name)
    return folder / database.name


class Ledger:
    """Every entry made, what was answered for it, and what is wrong with the answers.

    Thread-safe: client threads record into one ledger.
    """

    def __init__(self) -> None:
        # A month back: far from both time-policy limits (24 h ahead, year 2000), whatever
        # the number of entries (one second each).
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
        self._base_us = (self.base - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        self.entries: dict[int, Entry] = {}
        #: The id answered for each acknowledged entry.
        self.ids: dict[int, str] = {}
        #: How many 201 answers each entry got: exactly one, unless a 201 was lost.
        self.created: Counter[int] = Counter()
        #: Entries sent at least once without a complete answer.
        self.in_doubt: set[int] = set()
        #: Every answer's status, and every answer or failure that breaks the contract.
        self.statuses: Counter[int] = Counter()
        self.problems: list[str] = []
        self._acknowledged: list[int] = []  # the keys of ids, to pick repeats from
        # Entries that another client should send at the same time as their maker (see next).
        self._twins: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self._lock = threading.Lock()

    # --- making entries -------------------------------------------------------------------------

    def new_entry(self) -> Entry:
        """A new entry, unlike every other: its timestamp is its own second."""
        with self._lock:
            seq = len(self.entries)
            entry = _make_entry(seq, self.base)
            self.entries[seq] = entry
        return entry

    def next_to_send(
        self, rng: random.Random, *, repeat_rate: float, twin_rate: float
    ) -> tuple[Entry, bool]:
        """What a client sends next, and whether it is a repeat of an acknowledged entry.

        A twin waiting for a client comes first. Otherwise, with probability ``repeat_rate``, a
        repeat of an entry acknowledged before (any client's); else a new entry, which with
        probability ``twin_rate`` is also offered as a twin: another client then sends it too,
        racing its maker, and of the two answers exactly one must be 201, both with one id.
        """
        with contextlib.suppress(queue.Empty):
            return self._twins.get_nowait(), False
        if rng.random() < repeat_rate:
            with self._lock:
                seq = rng.choice(self._acknowledged) if self._acknowledged else None
            if seq is not None:
                return self.entries[seq], True
        entry = self.new_entry()
        if rng.random() < twin_rate:
            self._twins.put(entry)
        return entry, False

    def drop_twins(self) -> None:
        """Forget twins not yet taken: a later run should not send them as if they raced."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._twins.get_nowait()

    # --- recording answers ----------------------------------------------------------------------

    def answered(self, entry: Entry, status: int, body: bytes, *, repeat: bool) -> None:
        """Record a complete answer to ``entry``; ``repeat``: it had been acknowledged before."""
        what = f"{entry.kind} {entry.seq} ({'repeat' if repeat else 'first or twin'})"
        with self._lock:
            self.statuses[status] += 1
            if status not in {200, 201}:
                self.problems.append(f"{what}: answered {status} {body[:300]!r}")
                return
            try:
                answer = json.loads(body)
                entry_id, duplicate = str(answer["id"]), answer["duplicate"]
            except (ValueError, KeyError, TypeError):
                self.problems.append(f"{what}: {status} without an id: {body[:300]!r}")
                return
            if duplicate is not (status == 200):
                self.problems.append(f"{what}: {status} with duplicate={duplicate!r}")
            if repeat and status != 200:
                self.problems.append(f"{what}: a repeat was answered {status}, not 200")
            known = self.ids.get(entry.seq)
            if known is None:
                self.ids[entry.seq] = entry_id
                self._acknowledged.append(entry.seq)
            elif known != entry_id:
                self.problems.append(f"{what}: answered id {entry_id}, before {known}")
            if status == 201:
                self.created[entry.seq] += 1
                if self.created[entry.seq] > 1:
                    self.problems.append(f"{what}: created again, 201 #{self.created[entry.seq]}")

    def unanswered(self, entry: Entry, error: BaseException, *, expected: bool) -> None:
        """Record a request without a complete answer; ``expected``: the server was being killed."""
        with self._lock:
            if entry.seq not in self.ids:
                self.in_doubt.add(entry.seq)
            if not expected:
                self.problems.append(f"{entry.kind} {entry.seq}: no answer: {error!r}")

    def unresolved(self) -> list[int]:
        """Entries in doubt that no later answer acknowledged, in order."""
        with self._lock:
            return sorted(self.in_doubt - self.ids.keys())

    def seq_of(self, ts_us: int) -> int:
        """The entry whose timestamp is ``ts_us`` (see :func:`_make_entry`)."""
        return (ts_us - self._base_us) // _US_PER_S


def _make_entry(seq: int, base: datetime) -> Entry:
    """Entry ``seq``: every field follows from the number, so that a failure can be replayed."""
    offset = _OFFSETS_MIN[seq % len(_OFFSETS_MIN)]
    micro = (seq * 7919) % _US_PER_S if seq % 3 == 0 else 0
    moment = (base + timedelta(seconds=seq, microseconds=micro)).astimezone(
        timezone(timedelta(minutes=offset))
    )
    text = moment.isoformat()
    if offset == 0 and seq % 2:
        text = text.removesuffix("+00:00") + "Z"
    elif seq % 5 == 0:
        text = text[:-3] + text[-2:]  # +02:00 -> +0200
    ts = ((moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1), offset)
    device = f"srv{seq % 5:02d}"
    sender = f"script-{device}" if seq % 4 else None
    payload = {"deviceName": device, "timestamp": text}
    if sender is not None:
        payload["sender"] = sender
    stored_sender = sender or _DEFAULT_SENDER
    if seq % 10 < 7:
        job = _JOBS[seq % len(_JOBS)]
        status, outcome = _STATUSES[seq % len(_STATUSES)]
        message = f"Backup {seq} done: {seq % 997} GB transferred \u2713"
        payload |= {"jobName": job, "status": status, "message": message}
        row = (stored_sender, device, job, *ts, status, outcome, message)
        return Entry(seq, "backup", payload, moment, row)
    severity = _SEVERITIES[seq % len(_SEVERITIES)]
    event_type = _TYPES[seq % len(_TYPES)]
    payload |= {"severity": severity, "type": event_type}
    job_name = _JOBS[seq % len(_JOBS)] if seq % 2 else None
    message_text = f"Event {seq}: drive D: has {seq % 97}% free" if seq % 4 != 1 else None
    if job_name is not None:
        payload["jobName"] = job_name
    if message_text is not None:
        payload["message"] = message_text
    notification_row = (stored_sender, device, job_name, *ts, severity.lower(), event_type)
    return Entry(seq, "notification", payload, moment, (*notification_row, message_text))


# --- the clients ----------------------------------------------------------------------------------


class _Connection:
    """One keep-alive connection, reopened after a failure."""

    def __init__(self, port: int, key: str) -> None:
        self._port = port
        self._headers = {"Content-Type": "application/json", "X-Api-Key": key}
        self._http: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body``; the status and the whole body of the answer."""
        if self._http is None:
            self._http = http.client.HTTPConnection(HOST, self._port, timeout=REQUEST_TIMEOUT_S)
        try:
            self._http.request("POST", path, body=body, headers=self._headers)
            response = self._http.getresponse()
            return response.status, response.read()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the socket, if one is open."""
        if self._http is not None:
            self._http.close()
            self._http = None


@dataclass
class Clients:
    """``count`` client threads posting entries, each on its own keep-alive connection.

    They stop when :attr:`stop` is set, after ``seconds``, or when they have sent ``budget``
    requests together, whichever comes first. Use as a context manager: entering starts them,
    leaving stops them and waits for them (a thread that does not end is a hang, reported).
    Every request is counted in the report; set :attr:`stop` *before* killing the server, so
    that the failures it causes are told apart from unexpected ones.
    """

    ledger: Ledger
    tally: Tally
    port: int
    key: str
    count: int
    seconds: float
    budget: int
    repeat_rate: float = 0.05
    twin_rate: float = 0.02
    stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list[threading.Thread])

    def __enter__(self) -> Self:
        self.ledger.drop_twins()
        deadline = time.monotonic() + self.seconds
        share = max(1, self.budget // self.count)
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(random.Random(), deadline, share),  # noqa: S311 - picks repeats, not secrets
                name=f"ingest-client-{index}",
                daemon=True,  # a hung client must not keep pytest from exiting
            )
            for index in range(self.count)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.join()

    def join(self) -> None:
        """Wait for every thread to end; fail if one is still busy after its last time-out."""
        end = time.monotonic() + REQUEST_TIMEOUT_S + 5.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        hung = [thread.name for thread in self._threads if thread.is_alive()]
        assert not hung, f"client threads still waiting for an answer: {hung}"

    def wait(self) -> None:
        """Wait until the clients end by themselves: time up or budget spent."""
        end = time.monotonic() + self.seconds + REQUEST_TIMEOUT_S + 5.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        self.join()

    def _run(self, rng: random.Random, deadline: float, share: int) -> None:
        connection = _Connection(self.port, self.key)
        try:
            for _ in range(share):
                if self.stop.is_set() or time.monotonic() >= deadline:
                    return
                entry, repeat = self.ledger.next_to_send(
                    rng, repeat_rate=self.repeat_rate, twin_rate=self.twin_rate
                )
                try:
                    status, body = connection.post(PATHS[entry.kind], entry.body(reordered=repeat))
                except (OSError, http.client.HTTPException) as error:
                    self.tally.sent(0)
                    expected = self.stop.is_set()
                    self.ledger.unanswered(entry, error, expected=expected)
                    # Unexpected: the test fails anyway; one report per client is enough, and
                    # a dead server must not turn into a busy loop of refused connections.
                    return
                self.tally.sent(status)
                self.ledger.answered(entry, status, body, repeat=repeat)
        finally:
            connection.close()


# --- the audit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """The ledger held against the database's rows."""

    acknowledged: int  # entries acknowledged
    found: int  # of those, how many the database holds (with the acknowledged id)
    in_doubt_stored: list[int]  # entries in doubt that the database holds, whole
    in_doubt_absent: list[int]  # entries in doubt that it does not hold
    rows: int
    problems: list[str]


def audit(ledger: Ledger, rows: list[Row], *, one_201_each: bool) -> Audit:
    """Check the rows against the ledger.

    Every acknowledged entry is stored exactly once, under the id it was acknowledged with,
    with every field as sent; an entry in doubt is stored whole or not at all; no row stands
    for anything else. ``one_201_each``: also require that every acknowledged entry got
    exactly one 201 (not so after a kill, which may lose the 201 of an entry then resent).
    """
    problems: list[str] = []
    stored: dict[int, Row] = {}
    for row in rows:
        seq = ledger.seq_of(int(row.values[3]))  # ts_us
        entry = ledger.entries.get(seq)
        if entry is None or entry.kind != row.kind:
            problems.append(f"a {row.kind} row that was never sent: {row}")
            continue
        if seq in stored:
            problems.append(f"{entry.kind} {seq} stored twice: {stored[seq]} and {row}")
            continue
        stored[seq] = row
        if row.values != entry.row:
            problems.append(f"{entry.kind} {seq} stored as {row.values}, sent as {entry.row}")
        acknowledged_id = ledger.ids.get(seq)
        if acknowledged_id is None and seq not in ledger.in_doubt:
            problems.append(f"{entry.kind} {seq} stored, but it was never sent: {row}")
        if acknowledged_id is not None and row.id != acknowledged_id:
            problems.append(
                f"{entry.kind} {seq} stored as {row.id}, acknowledged as {acknowledged_id}"
            )
    ids = Counter(row.id for row in rows)
    problems += [f"id {entry_id} on {count} rows" for entry_id, count in ids.items() if count > 1]
    missing = [seq for seq in ledger.ids if seq not in stored]
    problems += [
        f"acknowledged {ledger.entries[seq].kind} {seq} (id {ledger.ids[seq]}) is missing:"
        f" {dict(ledger.entries[seq].payload)}"
        for seq in missing
    ]
    if one_201_each:
        problems += [
            f"{ledger.entries[seq].kind} {seq} got {ledger.created[seq]} answers 201"
            for seq in ledger.ids
            if ledger.created[seq] != 1
        ]
    doubted = sorted(ledger.in_doubt - ledger.ids.keys())
    return Audit(
        acknowledged=len(ledger.ids),
        found=len(ledger.ids) - len(missing),
        in_doubt_stored=[seq for seq in doubted if seq in stored],
        in_doubt_absent=[seq for seq in doubted if seq not in stored],
        rows=len(rows),
        problems=problems,
    )


def summary(problems: list[str], limit: int = 20) -> str:
    """The first problems, one a line, and how many more there are."""
    shown = "\n".join(problems[:limit])
    more = len(problems) - limit
    return shown + (f"\n... and {more} more" if more > 0 else "")
