"""The storage layer: the Store contract, the memory, SQLite and PostgreSQL stores, migrations.

Stores ask bmcore's ingest rules and keep what they decide. Public names are exported by
:mod:`bmserver`. The modules, by what they hold:

- the contract: ``_contract`` (records, queries, errors, the Store protocol);
- what every store shares: ``_entries`` (ids, bmcore's verdict as an answer), ``_cursors``
  (page sizes and the one cursor rule), ``_filters`` (name and time filters);
- the memory store: ``_memory``, and its rows and pages, ``_memory_rows``;
- what the SQL stores share: ``_sql`` (dialects, statements, the page planner), ``_sql_store``
  (the contract on SQL, written once), ``_sql_jobs`` (its base: the writes' lock order, job
  health kept as backups arrive, job reads and settings), ``_writer`` (the batching writer),
  ``_rows`` (rows to records), ``_migrations`` (the form of a migration, and the re-keying
  plan);
- each SQL store, how it runs, and its migrations: ``_sqlite``, ``_sqlite_migrations``;
  ``_postgres``, ``_postgres_migrations``.
"""
