"""A SQL store's database as its tests reach it: a SQLite file, or a PostgreSQL schema.

``tests/server/test_sql_stores.py`` runs the tests that the two SQL stores share against both.
Each gets a :class:`Database`: the store to open on it, and plain access to its tables, below
the store (its catalog, the versions it has had, migrations applied by hand, rows written as an
earlier release wrote them). Statements are written once, as the stores' own templates, and
rendered in the database's dialect (:meth:`bmserver.storage._sql.Dialect.render`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncGenerator, Generator, Sequence
from pathlib import Path
from typing import Any, LiteralString, Protocol

import pytest

from bmserver.storage._migrations import Migration
from bmserver.storage._sql import SQLITE, Dialect
from bmserver.storage._sql_store import SqlStore
from bmserver.storage._sqlite import MAX_BATCH, SqliteStore
from bmserver.storage._sqlite_migrations import MIGRATIONS, apply_migrations, schema_version

__all__ = ["Database", "Migrator", "SqliteDatabase", "database"]


class Migrator(Protocol):
    """A plain connection that applies migrations by hand, as a store's open() would."""

    async def apply(self, migrations: Sequence[Migration]) -> int:
        """Apply the pending ones of ``migrations``; how many were applied."""
        ...

    def idle(self) -> bool:
        """Whether no transaction is open on the connection."""
        ...


class Database(Protocol):
    """Where one test's SQL store keeps its tables, and what its tests see below the store."""

    kind: str
    dialect: Dialect
    #: The store's migrations, and the most writes it commits together.
    migrations: Sequence[Migration]
    max_batch: int
    #: What the database holds besides the store's tables: the record of versions, if any.
    bookkeeping: frozenset[str]
    #: The error of a statement that is not SQL.
    syntax_error: type[Exception]

    def store(self, *, few_connections: bool = False) -> SqlStore:
        """A new, unopened store on it; ``few_connections``: as few as the store can have."""
        ...

    def catalog(self) -> list[tuple[str, str]]:
        """Its tables and indexes with their definitions, by name: what a migration changes."""
        ...

    def versions(self) -> list[int]:
        """The versions of the migrations it has had, in order."""
        ...

    def migrator(self) -> contextlib.AbstractAsyncContextManager[Migrator]:
        """A plain connection to apply migrations by hand."""
        ...

    def write(self, template: LiteralString, rows: Sequence[Sequence[object]]) -> None:
        """Run a statement template once per row of parameters, in one transaction."""
        ...

    def rows(self, template: LiteralString) -> list[tuple[Any, ...]]:
        """The rows of a query template."""
        ...


class SqliteDatabase:
    """A SQLite file of the test's own."""

    kind = "sqlite"
    dialect = SQLITE
    migrations: Sequence[Migration] = MIGRATIONS
    max_batch = MAX_BATCH
    bookkeeping = frozenset[str]()
    syntax_error: type[Exception] = sqlite3.OperationalError

    def __init__(self, path: Path) -> None:
        self.path = path

    def store(self, *, few_connections: bool = False) -> SqliteStore:
        """A store on the file; it has one writer and opens readers as reads need them."""
        del few_connections  # one writer, and readers only while reads run: few already
        return SqliteStore(self.path)

    @contextlib.contextmanager
    def connect(self) -> Generator[sqlite3.Connection]:
        """A plain connection to the file, in autocommit mode, always closed."""
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as connection:
            yield connection

    def catalog(self) -> list[tuple[str, str]]:
        """Every table and index in sqlite_master, with its SQL."""
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT name, coalesce(sql, '') FROM sqlite_master ORDER BY name"
            ).fetchall()
        return [(str(name), str(definition)) for name, definition in rows]

    def versions(self) -> list[int]:
        """1 up to the file's ``user_version``: SQLite keeps only the number of the last one."""
        with self.connect() as connection:
            return list(range(1, schema_version(connection) + 1))

    @contextlib.asynccontextmanager
    async def migrator(self) -> AsyncGenerator[Migrator]:
        """A plain connection that applies migrations with the store's own code."""
        with self.connect() as connection:
            yield _SqliteMigrator(connection)

    def write(self, template: LiteralString, rows: Sequence[Sequence[object]]) -> None:
        """Run the statement once per row, in one transaction."""
        with self.connect() as connection:
            connection.execute("BEGIN")
            connection.executemany(self.dialect.render(template), rows)
            connection.execute("COMMIT")

    def rows(self, template: LiteralString) -> list[tuple[Any, ...]]:
        """The rows of the query."""
        with self.connect() as connection:
            return connection.execute(self.dialect.render(template)).fetchall()


class _SqliteMigrator:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def apply(self, migrations: Sequence[Migration]) -> int:
        return apply_migrations(self._connection, migrations)

    def idle(self) -> bool:
        return not self._connection.in_transaction


def database(request: pytest.FixtureRequest, kind: str, directory: Path) -> Database:
    """The test's database of a kind: a file in ``directory``, or a schema of its own."""
    if kind == "sqlite":
        return SqliteDatabase(directory / "bm.sqlite3")
    from _postgres_database import PostgresDatabase  # noqa: PLC0415 - psycopg is an optional extra

    url: str = request.getfixturevalue("postgres_url")
    return PostgresDatabase(url, request.getfixturevalue("postgres_schema"))
