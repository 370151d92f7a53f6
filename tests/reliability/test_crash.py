"""Crash durability: kill -9 under load loses nothing acknowledged and leaves a sound database.

Issue 6, point 3. The clients and the audit are in tests/_ingest_traffic.py, shared with the
load test.
"""

from __future__ import annotations

import contextlib
import operator
import random
import sqlite3
import time
from pathlib import Path
from typing import Final

from _ingest_traffic import (
    PATHS,
    Audit,
    Clients,
    Ledger,
    Query,
    audit,
    integrity_problems,
    read_rows,
    snapshot,
    summary,
)
from _reliability import ServerProcess, Tally, post_json, scaled

CLIENTS: Final = 16
#: Bounds on the load before each kill: the moment is drawn between them.
LOAD_S: Final = (0.3, 1.5)
#: How long the load may take to produce its first acknowledgement after a (re)start.
FIRST_ACK_TIMEOUT_S: Final = 10.0


def test_kill_9_under_load_loses_no_acknowledged_entry(
    server: ServerProcess, tally: Tally, tmp_path: Path
) -> None:
    """Kill -9 under load, at least five times: nothing acknowledged is lost, nothing is partial.

    Each round: load from 16 clients, kill -9 at a random moment, restart. The files left by
    the kill hold every entry acknowledged so far, with every field as sent, and pass the
    integrity and foreign-key checks; an entry whose answer the kill cut off is stored whole
    or not at all; the restarted server holds exactly the same rows, and answers a resend of
    each such entry with 200 and its id if it was stored, 201 if not.
    """
    rng = random.Random()  # noqa: S311 - picks kill moments, not secrets
    ledger = Ledger()
    kills = scaled(20, minimum=5)
    # The report counts what the last audit found, also when the test fails on the way.
    latest = audit(ledger, [], one_201_each=False)
    try:
        for round_number in range(kills):
            where = f"kill {round_number + 1} of {kills}"
            _kill_under_load(server, ledger, tally, rng, where)
            # The files exactly as the kill left them, before the restart recovers them.
            crash_files = snapshot(server.database, tmp_path / f"kill-{round_number}")
            crash_rows = read_rows(_copy_query(crash_files))
            latest = audit(ledger, crash_rows, one_201_each=False)
            problems = [*latest.problems, *integrity_problems(_copy_query(crash_files))]
            assert not problems, (
                f"{where}, files left by the kill:\n{_explain(latest, problems)}\n"
                f"server log:\n{server.log_tail()}"
            )

            server.start()
            # Recovery by the restarted server (it replays the WAL) must find the same rows
            # as an independent recovery of the same files: none lost, none invented.
            by_id = operator.attrgetter("id")
            live = read_rows(server.query)
            assert sorted(live, key=by_id) == sorted(crash_rows, key=by_id), where
            assert integrity_problems(server.query) == [], where
            _resend_unanswered(server, ledger, latest, where)

        latest = audit(ledger, read_rows(server.query), one_201_each=False)
        assert not latest.problems, f"after {kills} kills:\n{_explain(latest, latest.problems)}"
        assert not ledger.unresolved(), "every entry in doubt was resent and answered"
    finally:
        tally.accounted(acknowledged=latest.acknowledged, found=latest.found)


def _kill_under_load(
    server: ServerProcess, ledger: Ledger, tally: Tally, rng: random.Random, where: str
) -> None:
    """Load the server from several clients, kill -9 it at a random moment, wait for them."""
    acknowledged_before = len(ledger.ids)
    with Clients(
        ledger,
        tally,
        port=server.port,
        key=server.key,
        count=CLIENTS,
        # Bounds only: the kill below ends the load long before either is reached.
        seconds=FIRST_ACK_TIMEOUT_S + LOAD_S[1] + 5.0,
        budget=scaled(100_000, minimum=10_000),
    ) as clients:
        _wait_for_an_acknowledgement(ledger, acknowledged_before)
        # The moment of the kill, drawn at random; nothing assumes what happens meanwhile.
        time.sleep(rng.uniform(*LOAD_S))
        # Stop first, so that the clients know the failures that follow were caused on
        # purpose; the requests in flight stay in flight until the kill cuts them off.
        clients.stop.set()
        server.kill()
        tally.fault("kill -9")
    assert not ledger.problems, f"{where}, before the kill:\n{summary(ledger.problems)}"
    assert len(ledger.ids) > acknowledged_before, f"{where}: nothing was acknowledged"


def _wait_for_an_acknowledgement(ledger: Ledger, acknowledged_before: int) -> None:
    """Poll until this round's load has an entry acknowledged, so the kill hits a busy server."""
    deadline = time.monotonic() + FIRST_ACK_TIMEOUT_S
    while len(ledger.ids) == acknowledged_before and not ledger.problems:
        assert time.monotonic() < deadline, f"no entry acknowledged in {FIRST_ACK_TIMEOUT_S} s"
        time.sleep(0.01)  # bounded polling


def _copy_query(path: Path) -> Query:
    """A query function on a copy of the database's files, read-write.

    Why a copy: the server's own files must stay exactly as the kill left them, so that the
    restart recovers them by itself; a read-write connection on them would checkpoint the WAL
    into the database when it closes, doing part of that recovery in its place. A read-only
    one (mode=ro) works here, but only because it may still write the -shm file to rebuild the
    WAL index, which is again touching the server's files (without write access to -shm,
    SQLite refuses: SQLITE_READONLY_RECOVERY). The copy also gives an independent recovery for
    the restarted server's to be compared with.
    """

    def query(sql: str) -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            return connection.execute(sql).fetchall()

    return query


def _resend_unanswered(server: ServerProcess, ledger: Ledger, at_crash: Audit, where: str) -> None:
    """Resend each entry the kill left in doubt, as a client retrying would.

    Idempotency makes that safe: an entry that was stored is answered 200 with the id it was
    stored under, one that was not is stored now (201).
    """
    stored = set(at_crash.in_doubt_stored)
    for seq in ledger.unresolved():
        entry = ledger.entries[seq]
        answer = post_json(server.url, PATHS[entry.kind], server.key, dict(entry.payload))
        ledger.answered(entry, answer.status, answer.body, repeat=False)
        expected = 200 if seq in stored else 201
        assert answer.status == expected, f"{where}: resent {entry.kind} {seq}: {answer.body!r}"
    assert not ledger.problems, f"{where}, resending:\n{summary(ledger.problems)}"


def _explain(result: Audit, problems: list[str]) -> str:
    return (
        f"{result.acknowledged} acknowledged, {result.found} found, {result.rows} rows,"
        f" in doubt: {len(result.in_doubt_stored)} stored, {len(result.in_doubt_absent)} absent\n"
        f"{summary(problems)}"
    )
