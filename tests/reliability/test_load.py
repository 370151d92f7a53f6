"""Load with accounting: many concurrent clients, and every acknowledged entry stored exactly once.

Issue 6, point 2. The clients and the audit are in tests/_ingest_traffic.py, shared with the
crash test.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Final

from _ingest_traffic import Clients, Entry, Ledger, audit, integrity_problems, read_rows, summary
from _reliability import ServerProcess, Tally, request, scaled

CLIENTS: Final = 32
#: How many acknowledged entries of each kind are read back over HTTP as well.
SAMPLE: Final = 40


def test_every_acknowledged_entry_is_stored_exactly_once_under_load(
    server: ServerProcess, tally: Tally
) -> None:
    """Under load, every acknowledged entry is stored exactly once, and nothing else is.

    32 keep-alive clients for a bounded time: no 5xx, 429 or lost answer; afterwards the
    database holds exactly the acknowledged entries, each once, under its id, with every field
    as sent; a repeat was answered 200 with the original id; the read API agrees.
    """
    ledger = Ledger()
    with Clients(
        ledger,
        tally,
        port=server.port,
        key=server.key,
        count=CLIENTS,
        seconds=scaled(20, minimum=3),
        budget=scaled(100_000, minimum=10_000),
    ) as clients:
        clients.wait()

    # Read while the server runs: in WAL mode a reader sees every committed write, and an
    # entry must be committed before its 201 is sent, so nothing may be missing even now.
    # Counted in the report first, so that the report shows it also when an assertion fails.
    result = audit(ledger, read_rows(server.query), one_201_each=True)
    tally.accounted(acknowledged=result.acknowledged, found=result.found)

    failed = f"\n{summary(ledger.problems)}\nserver log:\n{server.log_tail()}"
    # The fixture's rate limit is far above what these clients can send: a 429 is a bug too.
    assert set(ledger.statuses) <= {200, 201}, f"statuses {dict(ledger.statuses)}{failed}"
    assert not ledger.problems, failed
    assert not ledger.in_doubt, failed
    assert ledger.statuses[200] > 0, "no repeat was sent: the test did not check idempotency"

    assert not result.problems, f"{summary(result.problems)}\nserver log:\n{server.log_tail()}"
    # Every entry made was sent, and answered: so all of them are acknowledged, and stored.
    assert result.rows == result.acknowledged == len(ledger.entries)

    problems = _read_back(server, ledger)
    assert not problems, summary(problems)
    assert integrity_problems(server.query) == []


def _read_back(server: ServerProcess, ledger: Ledger) -> list[str]:
    """GET a sample of acknowledged entries by id and compare them with what was sent."""
    rng = random.Random()  # noqa: S311 - picks a sample, not a secret
    by_kind: dict[str, list[int]] = {"backup": [], "notification": []}
    for seq in ledger.ids:
        by_kind[ledger.entries[seq].kind].append(seq)
    problems: list[str] = []
    for kind, seqs in by_kind.items():
        for seq in rng.sample(seqs, min(SAMPLE, len(seqs))):
            entry, entry_id = ledger.entries[seq], ledger.ids[seq]
            answer = request(
                server.url, "GET", f"/api/{kind}s/{entry_id}", headers={"X-Api-Key": server.key}
            )
            if answer.status != 200:
                problems.append(f"GET {kind} {entry_id}: {answer.status} {answer.body[:300]!r}")
                continue
            got, expected = answer.json(), _as_read(entry)
            got_moment = datetime.fromisoformat(got.pop("timestamp"))
            shown = {name: got.get(name) for name in expected}
            if shown != expected or got["id"] != entry_id:
                problems.append(f"GET {kind} {entry_id}: {got}, sent {dict(entry.payload)}")
            # The same instant, written with the offset that was sent.
            if got_moment != entry.moment or got_moment.utcoffset() != entry.moment.utcoffset():
                problems.append(
                    f"GET {kind} {entry_id}: timestamp {got_moment}, sent {entry.moment}"
                )
    return problems


def _as_read(entry: Entry) -> dict[str, object]:
    """The fields the read API must show for ``entry`` (its timestamp is compared apart)."""
    if entry.kind == "backup":
        sender, device, job, _, _, status, outcome, message = entry.row
        return {
            "sender": sender,
            "deviceName": device,
            "jobName": job,
            "status": status,
            "outcome": outcome,
            "message": message,
        }
    sender, device, job, _, _, severity, event_type, message = entry.row
    return {
        "sender": sender,
        "deviceName": device,
        "jobName": job,
        "severity": severity,
        "type": event_type,
        "message": message,
    }
