"""A database that fails: 503 with Retry-After, nothing acknowledged, and the next try works.

The failure is real: another process (here, another connection) holds SQLite's write lock
longer than the store's busy time-out, as `bmserver keys` or a backup tool might.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from _harness import Client, assert_problem, backup

from bmserver import SqliteStore, Store


@pytest.fixture
def backend() -> str:
    """The real server on SQLite."""
    return "sqlite"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A store that gives up on a held lock after a tenth of a second."""
    return SqliteStore(tmp_path / "locked.sqlite3", busy_timeout_s=0.1)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """The store's file."""
    return tmp_path / "locked.sqlite3"


@pytest.fixture
def locked(database: Path, client: Client) -> Iterator[sqlite3.Connection]:
    """Another connection that holds the write lock until the test lets go (after the key)."""
    del client  # the server (and its key) must exist before the lock is taken
    other = sqlite3.connect(database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        other.close()


def test_a_write_that_cannot_commit_is_503_and_a_retry_succeeds(
    client: Client, locked: sqlite3.Connection
) -> None:
    """The lock outlasts the busy time-out: 503 storage_unavailable; once released, 201."""
    entry = backup()
    refused = client.post("/api/ingest/backup", entry)
    problem = assert_problem(refused, 503, "storage_unavailable")
    assert "send the request again" in problem["detail"]
    assert refused.headers["retry-after"] == "5"
    locked.execute("ROLLBACK")
    assert client.post("/api/ingest/backup", entry).status == 201
    assert len(client.get("/api/backups").json["items"]) == 1
