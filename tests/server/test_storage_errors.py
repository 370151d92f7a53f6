"""A database that fails: 503 with Retry-After, nothing acknowledged, and the next try works.

The failures are real: another process (here, another connection) holds SQLite's write lock
longer than the store's busy time-out, as `bmserver keys` or a backup tool might; or every
connection of PostgreSQL's pool stays busy beyond the pool's time-out.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
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


def _until_a_lock_is_awaited(url: str, schema: str, table: str) -> None:
    """Wait until some connection waits for a lock on the table: a query is blocked on it."""
    import psycopg  # noqa: PLC0415 - psycopg is an optional extra

    deadline = time.monotonic() + 10
    with psycopg.connect(url, autocommit=True) as admin:
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT count(*) FROM pg_locks JOIN pg_class ON pg_class.oid = pg_locks.relation"
                " JOIN pg_namespace ON pg_namespace.oid = pg_class.relnamespace"
                " WHERE NOT granted AND relname = %s AND nspname = %s",
                (table, schema),
            ).fetchone()
            if row is not None and row[0]:
                return
            time.sleep(0.01)  # polling for a state, not a timing assumption
    pytest.fail(f"no query came to wait for the lock on {table}")


class TestPostgresPoolTimeOut:
    """The real server on PostgreSQL, whose pool has one connection and waits 0.2 s for it."""

    @pytest.fixture
    def backend(self) -> str:
        """The real server (not the fake)."""
        return "postgres"

    @pytest.fixture
    def store(self, postgres_url: str, postgres_schema: str) -> Store:
        """A store whose only connection a blocked write can hold."""
        from bmserver.storage._postgres import PostgresStore  # noqa: PLC0415 - an optional extra

        return PostgresStore(postgres_url, schema=postgres_schema, max_size=1, pool_timeout_s=0.2)

    def test_a_pool_time_out_is_503_and_a_retry_succeeds(
        self, client: Client, postgres_url: str, postgres_schema: str
    ) -> None:
        """No connection frees up in time: reads and writes are 503; once one does, all works."""
        from _postgres_tables import connect  # noqa: PLC0415 - psycopg is an optional extra

        with (
            connect(postgres_url, postgres_schema, autocommit=False) as locker,
            concurrent.futures.ThreadPoolExecutor(1) as background,
        ):
            locker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            # The writer takes the only connection for this entry and waits for the lock.
            blocked = background.submit(client.post, "/api/ingest/backup", backup())
            _until_a_lock_is_awaited(postgres_url, postgres_schema, "jobs")
            for refused in (
                client.get("/api/backups"),
                client.post("/api/ingest/backup", backup(jobName="Weekly")),
            ):
                problem = assert_problem(refused, 503, "storage_unavailable")
                assert "send the request again" in problem["detail"]
                assert refused.headers["retry-after"] == "5"
            locker.rollback()
            assert blocked.result(timeout=10).status == 201
        assert client.post("/api/ingest/backup", backup(jobName="Weekly")).status == 201
        assert len(client.get("/api/backups").json["items"]) == 2
