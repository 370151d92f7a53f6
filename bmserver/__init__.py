"""bmserver: the BackupMonitor ingest service over HTTP (a thin Starlette adapter on bmcore).

Not built yet: see the issue "bmserver: the ingest service over HTTP, on embedded SQLite".
"""

__all__: list[str] = []
