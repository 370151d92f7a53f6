"""Benchmarks of bm-ingest beside the alternatives, run by ``nox -s bench`` (see README.md)."""
