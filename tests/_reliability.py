"""The reliability suite's plumbing: a real ``bmserver serve`` process, and the final report.

Loaded by tests/conftest.py as a plugin. The tests in tests/reliability/ carry the
``reliability`` marker, which the default test run deselects (pyproject.toml's addopts): they
run with ``nox -s reliability``, against a real server process over a real loopback socket.

``BM_RELIABILITY_PROFILE`` chooses the size: ``full`` (the default) or ``quick`` for the
edit-test loop; :func:`scaled` turns a full-profile count into the chosen one.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

HOST: Final = "127.0.0.1"
PROFILE: Final = os.environ.get("BM_RELIABILITY_PROFILE", "full")
_QUICK_FACTOR: Final = 0.1
_READY_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 45.0


def scaled(full: int, minimum: int = 1) -> int:
    """``full`` in the full profile; a tenth of it (at least ``minimum``) in the quick one."""
    if PROFILE == "full":
        return full
    return max(minimum, int(full * _QUICK_FACTOR))


# --- the report --------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the suite did, printed at the end of the run."""

    statuses: collections.Counter[int] = field(default_factory=collections.Counter[int])
    faults: collections.Counter[str] = field(default_factory=collections.Counter[str])
    acknowledged: int = 0
    found: int = 0
    #: Named measurements a test reports (a descriptor count, a peak of memory), in order.
    figures: dict[str, str] = field(default_factory=dict[str, str])
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, status: int) -> None:
        """Count one answered request by its status (0: no answer, the connection failed)."""
        with self.lock:
            self.statuses[status] += 1

    def fault(self, kind: str, count: int = 1) -> None:
        """Count an injected fault: a kill -9, a dropped connection, a hostile body..."""
        with self.lock:
            self.faults[kind] += count

    def accounted(self, *, acknowledged: int, found: int) -> None:
        """Add entries the server acknowledged, and how many of them the database holds."""
        with self.lock:
            self.acknowledged += acknowledged
            self.found += found

    def figure(self, name: str, value: str) -> None:
        """Report a named measurement; a later one of the same name replaces it."""
        with self.lock:
            self.figures[name] = value

    def lines(self) -> list[str]:
        """The report, one line per figure."""
        total = sum(self.statuses.values())
        by_status = ", ".join(
            f"{status or 'no answer'}: {count}" for status, count in sorted(self.statuses.items())
        )
        faults = ", ".join(f"{kind}: {count}" for kind, count in sorted(self.faults.items()))
        return [
            f"profile: {PROFILE}",
            f"requests sent: {total} ({by_status or 'none'})",
            f"server errors (5xx): {sum(c for s, c in self.statuses.items() if s >= 500)}",
            f"faults injected: {sum(self.faults.values())} ({faults or 'none'})",
            f"entries acknowledged: {self.acknowledged}, found in the database: {self.found}",
            *(f"{name}: {value}" for name, value in self.figures.items()),
        ]


TALLY: Final = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    """The suite's report, to count requests, faults and acknowledged entries into."""
    return TALLY


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of tests/reliability/ as part of the reliability suite."""
    for item in items:
        if "reliability" in item.path.parts:
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the report when the suite sent anything."""
    if not TALLY.statuses and not TALLY.faults and not TALLY.figures:
        return
    terminalreporter.section("reliability report")
    for line in TALLY.lines():
        terminalreporter.write_line(line)


# --- HTTP over a real socket ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A response: status, lower-cased headers and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def request(
    base: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    source: str | None = None,
) -> Answer:
    """One request on a new connection; counts it in the report (0 if the connection failed).

    ``source`` is the client's address, any of 127.0.0.0/8 (all loopback on Linux), for tests
    of what the server does per client address.
    """
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(
        host, int(port), timeout=timeout, source_address=None if source is None else (source, 0)
    )
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        answer = Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    except (OSError, http.client.HTTPException):
        TALLY.sent(0)
        raise
    finally:
        connection.close()
    TALLY.sent(answer.status)
    return answer


def post_json(base: str, path: str, key: str, payload: object) -> Answer:
    """POST ``payload`` as JSON with an API key."""
    return request(
        base,
        "POST",
        path,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "X-Api-Key": key},
    )


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# --- the server process -------------------------------------------------------------------------


class ServerProcess:
    """``bmserver serve`` on one SQLite file, started, killed and restarted by the tests.

    Every line the server logs goes to a file under ``folder``; :attr:`log_files` lists all of
    them, so that a test can search every log line of the run. ``extra`` holds more serve flags.
    ``database`` is a postgresql:// URL to serve from PostgreSQL instead (then :meth:`query` and
    :meth:`count_rows`, which read the SQLite file, are not available).
    """

    def __init__(self, folder: Path, *extra: str, database: str | None = None) -> None:
        self.folder = folder
        self.database = folder / "ingest.sqlite3"
        #: What --database says: the SQLite file, or the PostgreSQL URL.
        self.database_arg = database or str(self.database)
        self.extra = extra
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_files: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None
        self.key = self.new_key("acme", "ingest", "read")

    def bmserver(self, *args: str) -> str:
        """Run a bmserver command on this database; returns what it printed."""
        result = subprocess.run(
            [sys.executable, "-m", "bmserver", *args, "--database", self.database_arg],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"bmserver {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout

    def new_key(self, account: str, *scopes: str) -> str:
        """Create a key with ``bmserver keys create``; returns the key."""
        flags = [argument for scope in scopes for argument in ("--scope", scope)]
        return self.bmserver("keys", "create", "--account", account, *flags).strip()

    @property
    def pid(self) -> int:
        """The running server's process id."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def start(self) -> None:
        """Start serving; return once /healthz answers."""
        assert self._process is None, "already running"
        log = self.folder / f"server-{len(self.log_files)}.log"
        self.log_files.append(log)
        with log.open("wb") as output:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bmserver",
                    "serve",
                    "--database",
                    self.database_arg,
                    "--port",
                    str(self.port),
                    *self.extra,
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            process = self._process
            assert process is not None
            if process.poll() is not None:
                pytest.fail(f"bmserver serve exited with {process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                connection = http.client.HTTPConnection(HOST, self.port, timeout=1)
                try:
                    connection.request("GET", "/healthz")
                    if connection.getresponse().status == 200:
                        return
                finally:
                    connection.close()
            time.sleep(0.05)  # readiness polling, not a timing assumption
        pytest.fail(
            f"bmserver serve did not answer within {_READY_TIMEOUT_S} s:\n{self.log_tail()}"
        )

    def kill(self) -> None:
        """Send SIGKILL: no shutdown, no last commit; what was acknowledged must be on disk."""
        process = self._process
        assert process is not None, "not running"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=_STOP_TIMEOUT_S)
        self._process = None

    def stop(self) -> None:
        """SIGTERM and wait: uvicorn finishes the requests in flight, the store commits."""
        process = self._process
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"bmserver did not stop within {_STOP_TIMEOUT_S} s:\n{self.log_tail()}")
        finally:
            self._process = None

    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the current log, for failure messages."""
        if not self.log_files:
            return ""
        text = self.log_files[-1].read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        """Every line every run of this server logged."""
        return "\n".join(
            path.read_text(encoding="utf-8", errors="replace")
            for path in self.log_files
            if path.exists()
        )

    def query(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the database directly, as an operator would (read-only)."""
        with contextlib.closing(
            sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)
        ) as connection:
            return connection.execute(sql, parameters).fetchall()

    def count_rows(self) -> dict[str, int]:
        """Rows per entry table: backups and notifications."""
        return {
            table: int(self.query(f"SELECT count(*) FROM {table}")[0][0])  # noqa: S608 - fixed names
            for table in ("backups", "notifications")
        }


#: Serve flags that lift the quotas, for tests that send many requests with one key.
UNLIMITED: Final = (
    *("--rate", "100000/s", "--burst", "100000"),
    *("--read-rate", "100000/s", "--read-burst", "100000"),
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running ``bmserver serve`` on a new SQLite file, with an ingest+read key for acme."""
    process = ServerProcess(tmp_path, *UNLIMITED)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Build servers with other flags: ``server_factory("--rate", "1/min")`` (not started)."""
    made: list[ServerProcess] = []

    def make(*extra: str, database: str | None = None) -> ServerProcess:
        folder = tmp_path / f"server-{len(made)}"
        folder.mkdir()
        made.append(ServerProcess(folder, *extra, database=database))
        return made[-1]

    try:
        yield make
    finally:
        for process in made:
            process.stop()
