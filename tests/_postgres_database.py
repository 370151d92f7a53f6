"""A PostgreSQL schema as the SQL stores' shared tests reach it (see ``_databases.py``).

Imported only by tests that use PostgreSQL: it imports psycopg, an optional extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any, LiteralString

import psycopg
from _postgres_tables import connect
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from bmserver.storage._migrations import Migration
from bmserver.storage._postgres import MAX_BATCH, PostgresStore
from bmserver.storage._postgres_migrations import MIGRATIONS, VERSION_TABLE, apply_migrations
from bmserver.storage._sql import POSTGRES

__all__ = ["PostgresDatabase"]


class PostgresDatabase:
    """A PostgreSQL schema of the test's own."""

    kind = "postgres"
    dialect = POSTGRES
    migrations: Sequence[Migration] = MIGRATIONS
    max_batch = MAX_BATCH
    bookkeeping = frozenset({VERSION_TABLE})
    syntax_error: type[Exception] = psycopg.errors.SyntaxError

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema

    def store(self, *, few_connections: bool = False) -> PostgresStore:
        """A store on the schema; ``few_connections``: a pool of two (the writer, one reader)."""
        if few_connections:
            return PostgresStore(self.url, schema=self.schema, max_size=2)
        return PostgresStore(self.url, schema=self.schema)

    def catalog(self) -> list[tuple[str, str]]:
        """The schema's tables and indexes with their definitions."""
        with psycopg.connect(self.url) as connection:
            rows = connection.execute(
                "SELECT tablename, '' FROM pg_tables WHERE schemaname = %s"
                " UNION ALL SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s"
                " ORDER BY 1",
                (self.schema, self.schema),
            )
            return [(str(name), str(definition)) for name, definition in rows]

    def versions(self) -> list[int]:
        """The versions recorded in the schema's bm_schema_migrations, in order."""
        with connect(self.url, self.schema) as connection:
            rows = connection.execute("SELECT version FROM bm_schema_migrations ORDER BY version")
            return [int(version) for (version,) in rows]

    @contextlib.asynccontextmanager
    async def migrator(self) -> AsyncGenerator[_PostgresMigrator]:
        """A plain connection, in autocommit mode, whose search path is the schema."""
        connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        async with connection:
            path = sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
            await connection.execute(path)
            yield _PostgresMigrator(connection)

    def write(self, template: LiteralString, rows: Sequence[Sequence[object]]) -> None:
        """Run the statement once per row, in one transaction."""
        with connect(self.url, self.schema, autocommit=False) as connection:
            with connection.cursor() as cursor:
                cursor.executemany(self.dialect.render(template), rows)
            connection.commit()

    def rows(self, template: LiteralString) -> list[tuple[Any, ...]]:
        """The rows of the query."""
        with connect(self.url, self.schema) as connection:
            return connection.execute(self.dialect.render(template)).fetchall()


class _PostgresMigrator:
    def __init__(self, connection: psycopg.AsyncConnection[TupleRow]) -> None:
        self._connection = connection

    async def apply(self, migrations: Sequence[Migration]) -> int:
        return await apply_migrations(self._connection, migrations)

    def idle(self) -> bool:
        return self._connection.info.transaction_status is TransactionStatus.IDLE
