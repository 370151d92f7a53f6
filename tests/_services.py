"""PostgreSQL and Redis for the tests that need them: found, or skipped with the reason.

Under ``BM_REQUIRE_SERVICES=1`` (CI sets it) a missing service fails the test instead: in CI
nothing may be skipped silently. The addresses default to this machine's services and can be
changed with ``BM_TEST_POSTGRES_URL`` and ``BM_TEST_REDIS_URL``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Generator, Iterator
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import pytest

POSTGRES_URL: Final = os.environ.get(
    "BM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL: Final = os.environ.get("BM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def _require(name: str, url: str, default_port: int) -> str:
    if _reachable(url, default_port):
        return url
    reason = f"{name} is not reachable at {url}; start it or set BM_TEST_{name.upper()}_URL"
    if os.environ.get("BM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (BM_REQUIRE_SERVICES=1: services are required, not skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The URL of a reachable Redis, or a skip (a failure under BM_REQUIRE_SERVICES=1)."""
    return _require("Redis", REDIS_URL, 6379)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a reachable PostgreSQL, or a skip (a failure under BM_REQUIRE_SERVICES=1)."""
    return _require("Postgres", POSTGRES_URL, 5432)


@pytest.fixture
def redis_namespace() -> str:
    """A key prefix of this test's own, so that tests (and xdist workers) never share buckets."""
    return f"bm-test:{uuid.uuid4().hex}"


@contextlib.contextmanager
def schema_named(postgres_url: str, name: str) -> Generator[str]:
    """Create the PostgreSQL schema ``name`` (any name: it is quoted), drop it afterwards."""
    import psycopg  # noqa: PLC0415 - only the tests that use PostgreSQL need the driver
    from psycopg import sql  # noqa: PLC0415

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema of this test's own, dropped afterwards."""
    with schema_named(postgres_url, f"bm_test_{uuid.uuid4().hex}") as name:
        yield name


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """A new PostgreSQL database of this test's own, dropped afterwards (for whole servers)."""
    import psycopg  # noqa: PLC0415 - only the tests that use PostgreSQL need the driver
    from psycopg import sql  # noqa: PLC0415

    name = f"bm_test_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(postgres_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )
