"""4. HTTP ingest: ``bmserver serve`` on SQLite as shipped, under wrk, beside a bare endpoint.

wrk (a load generator in C) sends valid ``POST /api/ingest/backup`` requests, each with a new
body (bench/wrk_ingest.lua), over 32 connections from one thread, so that the other core of a
two-core machine is left to the server. The server is the real one in a subprocess: one uvicorn
worker, SQLite with its writer thread, and every 201 committed before it is sent. The baseline
is bench/_bare_app.py on the same uvicorn settings: it reads the body, parses it as JSON and
answers 201. Both are measured in the same run, alternately (bare, bmserver, bare, bmserver),
so that drift on a shared machine affects both; the best round of each is kept, since noise
only ever slows a round down.

Also measured: the 400 path (the same server, bodies that fail validation) and the 429 path (a
second server whose quota is spent by one request), each against the bare endpoint fed the
same bodies. Before each series one request checks that the server answers the status the
series is about, and afterwards every response wrk counted must have had a status of its kind:
a benchmark of the wrong path is worthless. Finally the SQLite file must hold at least as many
backups as bmserver acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from bench._report import Figure, Goal

__all__ = ["run"]

NAME: Final = "4. HTTP ingest"
ENDPOINT: Final = "/api/ingest/backup"
CONNECTIONS: Final = 32
HOST: Final = "127.0.0.1"

_ROOT: Final = Path(__file__).resolve().parent.parent
_LUA: Final = Path(__file__).with_name("wrk_ingest.lua")
#: A quota no run can spend: the 201 and 400 paths measure the work, not the rate limit.
_UNLIMITED: Final = ("--rate", "1000000/s", "--burst", "1000000")
#: One request per hour: after the first, every request is refused with 429.
_SPENT: Final = ("--rate", "1/h", "--burst", "1")
_READY_TIMEOUT_S: Final = 30.0
#: uvicorn's graceful shutdown may take 30 s, then the store commits what is queued.
_STOP_TIMEOUT_S: Final = 45.0

_Mode = Literal["valid", "invalid"]
#: The command line of a server, given the port it is to listen on.
_Command = Callable[[int], list[str]]


@dataclass(frozen=True)
class _Plan:
    """How long one series runs: warm-up seconds per server, then rounds of ``seconds`` each."""

    warmup_s: int
    seconds: int
    rounds: int


# Full runs take about 90 s in all; smoke runs prove in a few seconds that everything works.
_CREATED_PLAN: Final = _Plan(warmup_s=2, seconds=10, rounds=2)
_REFUSED_PLAN: Final = _Plan(warmup_s=1, seconds=5, rounds=2)
_SMOKE_PLAN: Final = _Plan(warmup_s=0, seconds=1, rounds=1)


@dataclass(frozen=True)
class _WrkRun:
    """What wrk's done() reported for one run (wrk_ingest.lua prints it as JSON)."""

    requests: int
    duration_us: int
    #: Responses with a status of 400 or more.
    status_errors: int
    #: Connect, read and write errors and time-outs.
    socket_errors: int
    p50_us: float
    p99_us: float
    #: CPU time the server process used during the run, all threads, user and system.
    server_cpu_s: float = 0.0

    @property
    def per_second(self) -> float:
        """Completed requests per second."""
        return self.requests / (self.duration_us / 1e6)

    @property
    def cpu_us_per_request(self) -> float:
        """The server's CPU time per completed request: what the figure costs, apart from waits."""
        return self.server_cpu_s * 1e6 / self.requests

    @property
    def acknowledged(self) -> int:
        """Responses below 400: for the 201 path, entries the server said it committed."""
        return self.requests - self.status_errors


@dataclass(frozen=True)
class _Server:
    """A server running in a subprocess, and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass(frozen=True)
class _Series:
    """The runs of one path on both servers; bmserver's ``acknowledged`` counts every run."""

    bare: list[_WrkRun]
    server: list[_WrkRun]
    acknowledged: int

    @property
    def best_bare(self) -> _WrkRun:
        return max(self.bare, key=lambda run: run.per_second)

    @property
    def best_server(self) -> _WrkRun:
        return max(self.server, key=lambda run: run.per_second)


@dataclass(frozen=True)
class _Path:
    """One path under test: the bodies sent, and the status and problem code expected back."""

    label: str
    mode: _Mode
    status: int
    code: str | None


_CREATED: Final = _Path("201 created", "valid", 201, None)
_INVALID: Final = _Path("400 invalid fields", "invalid", 400, "validation_failed")
_LIMITED: Final = _Path("429 rate limited", "valid", 429, "rate_limited")


def run(*, smoke: bool) -> list[Figure]:
    """Measure the 201, 400 and 429 paths of bmserver against the bare endpoint."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError(
            "wrk not found: install it with `apt-get install -y wrk` (Debian) or your system's "
            "package manager; `nox -s bench` installs it"
        )
    created_plan, refused_plan = (
        (_SMOKE_PLAN, _SMOKE_PLAN) if smoke else (_CREATED_PLAN, _REFUSED_PLAN)
    )
    with tempfile.TemporaryDirectory(prefix="bm-bench-http-") as name:
        folder = Path(name)
        with _serving("bare", _bare_command, folder) as bare:
            created, invalid, rows = _measure_main_server(
                wrk, bare, folder, created_plan, refused_plan
            )
            limited = _measure_spent_quota(wrk, bare, folder, refused_plan)
        scale_out = _measure_scale_out(wrk, folder, created_plan)
    return [
        *_created_figures(created, rows),
        _refused_figure(_INVALID, invalid),
        _refused_figure(_LIMITED, limited),
        *scale_out,
    ]


# --- scale-out: two workers on PostgreSQL + Redis beside one worker on SQLite -------------------

#: Where the scale-out figure finds its services (this machine's, unless told otherwise).
_POSTGRES_URL: Final = os.environ.get(
    "BM_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_REDIS_URL: Final = os.environ.get("BM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
_SCALE_OUT_WORKERS: Final = 2


def _measure_scale_out(wrk: str, folder: Path, plan: _Plan) -> list[Figure]:
    """Valid backups to two workers on PostgreSQL + Redis and to one worker on SQLite, in turn.

    No figure (a printed note instead) when PostgreSQL or Redis cannot be reached.
    """
    missing = [url for url in (_POSTGRES_URL, _REDIS_URL) if not _reachable(url)]
    if missing:
        print(f"# scale-out figure skipped: cannot reach {', '.join(missing)}", flush=True)
        return []
    sqlite_database = folder / "single.sqlite3"
    sqlite_key = _create_key(sqlite_database)
    with _postgres_database(_POSTGRES_URL) as postgres_url:
        postgres_key = _create_key(postgres_url)
        pair_command = _bmserver_command(
            postgres_url,
            _UNLIMITED,
            *("--workers", str(_SCALE_OUT_WORKERS), "--redis", _REDIS_URL),
            *("--redis-prefix", f"bm-bench-{uuid.uuid4().hex}"),
        )
        single_runs: list[_WrkRun] = []
        pair_runs: list[_WrkRun] = []
        with (
            _serving(
                "sqlite-1-worker", _bmserver_command(sqlite_database, _UNLIMITED), folder
            ) as single,
            _serving("postgres-2-workers", pair_command, folder) as pair,
        ):
            _check_answer(single, sqlite_key, _CREATED)
            _check_answer(pair, postgres_key, _CREATED)
            if plan.warmup_s:
                _checked(_wrk(wrk, pair, postgres_key, "valid", plan.warmup_s), pair, 201)
            for _ in range(plan.rounds):
                single_runs.append(
                    _checked(_wrk(wrk, single, sqlite_key, "valid", plan.seconds), single, 201)
                )
                pair_runs.append(
                    _checked(_wrk(wrk, pair, postgres_key, "valid", plan.seconds), pair, 201)
                )
        acknowledged = sum(run.acknowledged for run in pair_runs)
        rows = _count_postgres_backups(postgres_url)
    if rows < acknowledged:
        raise RuntimeError(f"PostgreSQL holds {rows} backups, {acknowledged} were acknowledged")
    best_pair = max(pair_runs, key=lambda run: run.per_second)
    best_single = max(single_runs, key=lambda run: run.per_second)
    return [
        Figure(
            NAME,
            f"201 created: {_SCALE_OUT_WORKERS} workers on PostgreSQL + Redis, requests/s",
            best_pair.per_second,
            "req/s",
            "1 worker on SQLite",
            best_single.per_second,
            details={
                "postgres_rows": rows,
                "p50_ms": _ms(best_pair.p50_us),
                "p99_ms": _ms(best_pair.p99_us),
                "sqlite_p50_ms": _ms(best_single.p50_us),
                "sqlite_p99_ms": _ms(best_single.p99_us),
                "rounds": _rounds(pair_runs),
                "sqlite_rounds": _rounds(single_runs),
            },
        )
    ]


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or HOST, parts.port or 0), 2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _postgres_database(server_url: str) -> Generator[str]:
    """A new database on the server at ``server_url``, dropped afterwards; yields its URL."""
    import psycopg  # noqa: PLC0415 - only this figure needs the driver
    from psycopg import sql  # noqa: PLC0415

    name = f"bm_bench_{uuid.uuid4().hex}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(server_url, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _count_postgres_backups(url: str) -> int:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT count(*) FROM backups").fetchone()
    return int(row[0]) if row else 0


def _measure_main_server(
    wrk: str, bare: _Server, folder: Path, created_plan: _Plan, refused_plan: _Plan
) -> tuple[_Series, _Series, int]:
    """The 201 and 400 series on one server; then, stopped, the backups its database holds."""
    database = folder / "bench.sqlite3"
    key = _create_key(database)
    command = _bmserver_command(database, _UNLIMITED)
    with _serving("bmserver", command, folder) as server:
        created = _series(wrk, (bare, server), key, _CREATED, created_plan)
        invalid = _series(wrk, (bare, server), key, _INVALID, refused_plan)
    rows = _count_backups(database)
    if rows < created.acknowledged:
        raise RuntimeError(
            f"bmserver acknowledged {created.acknowledged} backups but its database holds {rows}:"
            " an acknowledged entry was not committed, or a body was a repeat (answered 200)"
        )
    return created, invalid, rows


def _measure_spent_quota(wrk: str, bare: _Server, folder: Path, plan: _Plan) -> _Series:
    """The 429 series on a server whose only key spends its quota on one request."""
    database = folder / "limited.sqlite3"
    key = _create_key(database)
    with _serving("bmserver-limited", _bmserver_command(database, _SPENT), folder) as server:
        _check_answer(server, key, _CREATED)  # spends the burst of 1
        return _series(wrk, (bare, server), key, _LIMITED, plan)


# --- one series: checks, warm-up, alternating rounds ----------------------------------------------


def _series(
    wrk: str, servers: tuple[_Server, _Server], key: str, path: _Path, plan: _Plan
) -> _Series:
    """Check both answers, warm both up, then measure bare and bmserver in turn, round by round."""
    bare, server = servers
    _check_answer(bare, key, _Path(path.label, path.mode, 201, None))
    _check_answer(server, key, path)
    acknowledged = 1 if path.status < 400 else 0
    if plan.warmup_s:
        _checked(_wrk(wrk, bare, key, path.mode, plan.warmup_s), bare, 201)
        warm = _checked(_wrk(wrk, server, key, path.mode, plan.warmup_s), server, path.status)
        acknowledged += warm.acknowledged
    bare_runs: list[_WrkRun] = []
    server_runs: list[_WrkRun] = []
    for _ in range(plan.rounds):
        bare_runs.append(_checked(_wrk(wrk, bare, key, path.mode, plan.seconds), bare, 201))
        measured = _checked(_wrk(wrk, server, key, path.mode, plan.seconds), server, path.status)
        server_runs.append(measured)
        acknowledged += measured.acknowledged
    return _Series(bare_runs, server_runs, acknowledged)


def _wrk(wrk: str, server: _Server, key: str, mode: _Mode, seconds: int) -> _WrkRun:
    """Run wrk against ``server`` for ``seconds``; a new tag keeps its bodies new to the server."""
    tag = uuid.uuid4().hex[:8]
    command = [
        *(wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"),
        *("-s", str(_LUA), server.url + ENDPOINT, "--", key, mode, tag),
    ]
    cpu_before = _cpu_seconds(server.process.pid)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    cpu_s = _cpu_seconds(server.process.pid) - cpu_before
    if completed.returncode != 0:
        raise RuntimeError(
            f"wrk failed with status {completed.returncode}:\n{completed.stdout}{completed.stderr}"
        )
    return replace(_parse_wrk(completed.stdout), server_cpu_s=cpu_s)


def _cpu_seconds(pid: int) -> float:
    """The user and system CPU time a process has used (Linux's /proc); 0 without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    # The fields after the parenthesised command name start at the third, the state; utime
    # and stime are the 14th and 15th, in clock ticks.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parse_wrk(output: str) -> _WrkRun:
    for line in reversed(output.splitlines()):
        if line.startswith('{"wrk":'):
            report = json.loads(line)
            sockets = sum(int(report[name]) for name in ("connect", "read", "write", "timeout"))
            return _WrkRun(
                requests=int(report["requests"]),
                duration_us=int(report["duration_us"]),
                status_errors=int(report["status"]),
                socket_errors=sockets,
                p50_us=float(report["p50_us"]),
                p99_us=float(report["p99_us"]),
            )
    raise RuntimeError(f"wrk printed no report line (is done() in {_LUA.name}?):\n{output}")


def _checked(measured: _WrkRun, server: _Server, status: int) -> _WrkRun:
    """``measured`` if every response had a status of the kind expected, else an error."""
    if measured.requests == 0:
        raise RuntimeError(f"{server.name} answered no request\n{_tail(server.log)}")
    expected_errors = 0 if status < 400 else measured.requests
    if measured.status_errors != expected_errors:
        raise RuntimeError(
            f"{server.name}: {measured.status_errors} of {measured.requests} responses had a"
            f" status of 400 or more, expected {expected_errors} (all {status})\n"
            f"{_tail(server.log)}"
        )
    return measured


# --- one request, to check the path before measuring it -------------------------------------------


def _check_answer(server: _Server, key: str, path: _Path) -> None:
    """Send one request of ``path.mode``; its status and problem code must be the expected ones."""
    status, answer = _post(server.url + ENDPOINT, key, _body(path.mode))
    code = answer.get("code")
    if status != path.status or (path.code is not None and code != path.code):
        raise RuntimeError(
            f"{server.name} answered {status} {code or ''} to a {path.mode} body, expected"
            f" {path.status} {path.code or ''}: {answer}\n{_tail(server.log)}"
        )


def _body(mode: _Mode) -> bytes:
    """A body as wrk_ingest.lua makes them, in a job of its own (so never a repeat)."""
    east = timezone(timedelta(hours=2))
    fields: dict[str, object] = {
        "deviceName": "srv00",
        "jobName": f"Nightly Full Backup check-{uuid.uuid4().hex[:8]}",
        "timestamp": (datetime.now(UTC) - timedelta(hours=1)).astimezone(east).isoformat(),
        "sender": "bench-wrk",
    }
    if mode == "valid":
        fields |= {"status": "Success", "message": "Backup completed. 142 GB transferred."}
    else:
        fields |= {"status": 0}
    return json.dumps(fields).encode()


def _post(url: str, key: str, body: bytes) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json", "X-Api-Key": key}
    # S310: the URL is http on loopback, built here, never a file: or custom scheme.
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    # No proxy: a proxy from the environment must not stand between us and 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


# --- the servers --------------------------------------------------------------------------------


def _bare_command(port: int) -> list[str]:
    return [sys.executable, "-m", "bench._bare_app", "--port", str(port)]


def _bmserver_command(database: Path | str, quota: Sequence[str], *extra: str) -> _Command:
    def command(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "bmserver", "serve", "--database", str(database)),
            *("--host", HOST, "--port", str(port), *quota, *extra),
        ]

    return command


def _environment() -> dict[str, str]:
    # The servers run as shipped: no BM_* variable of this shell changes their settings.
    return {name: value for name, value in os.environ.items() if not name.startswith("BM_")}


def _create_key(database: Path | str) -> str:
    """Create an account and an ingest key in a new database; `keys create` prints the key."""
    completed = subprocess.run(
        [
            *(sys.executable, "-m", "bmserver", "keys", "create"),
            *("--database", str(database), "--account", "bench"),
        ],
        capture_output=True,
        text=True,
        cwd=_ROOT,
        env=_environment(),
        timeout=60,
        check=False,
    )
    key = completed.stdout.strip()
    if completed.returncode != 0 or not key.startswith("bm_"):
        raise RuntimeError(f"bmserver keys create failed:\n{completed.stdout}{completed.stderr}")
    return key


@contextlib.contextmanager
def _serving(name: str, command: _Command, folder: Path) -> Generator[_Server]:
    """Start a server on a free port, wait until it accepts connections, stop it afterwards."""
    port = _free_port()
    log = folder / f"{name}.log"
    with log.open("wb") as output:  # a file, not a pipe: a full pipe would block the server
        process = subprocess.Popen(
            command(port), stdout=output, stderr=subprocess.STDOUT, cwd=_ROOT, env=_environment()
        )
    server = _Server(name, process, port, log)
    try:
        _wait_until_ready(server)
        yield server
    except BaseException:
        _stop(server)  # the error in flight is the one to report
        raise
    if not _stop(server):
        raise RuntimeError(f"{name} did not stop cleanly\n{_tail(log)}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _wait_until_ready(server: _Server) -> None:
    # uvicorn runs the app's start-up (bmserver: migrations, the writer thread) before it
    # listens, so an accepted connection means the app is ready.
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with status {server.process.returncode} at start-up\n"
                f"{_tail(server.log)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, server.port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{server.name} did not listen on port {server.port} within {_READY_TIMEOUT_S:g} s\n"
        f"{_tail(server.log)}"
    )


def _stop(server: _Server) -> bool:
    """SIGTERM, wait, kill if it takes too long; whether it stopped by itself without error."""
    process = server.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    # uvicorn re-raises the signal it shut down on, so a clean stop may also end by SIGTERM.
    return status in {0, -signal.SIGTERM}


def _tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return f"(no server log: {error})"
    return f"--- last lines of {log.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def _count_backups(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
        (count,) = db.execute("SELECT count(*) FROM backups").fetchone()
    return int(count)


# --- figures --------------------------------------------------------------------------------------


def _ms(microseconds: float) -> float:
    return round(microseconds / 1000, 3)


def _rounds(runs: Sequence[_WrkRun]) -> str:
    return ", ".join(f"{run.per_second:.0f}" for run in runs)


def _created_figures(series: _Series, rows: int) -> list[Figure]:
    server, bare = series.best_server, series.best_bare
    throughput = Figure(
        NAME,
        f"{_CREATED.label}: requests/s, {CONNECTIONS} connections",
        server.per_second,
        "req/s",
        baseline="bare",
        baseline_value=bare.per_second,
        goal=Goal(on="ratio", bound="at least", limit=0.80),
        details={
            **_details(series),
            "acknowledged": series.acknowledged,
            "rows_committed": rows,
        },
    )
    latencies = [
        Figure(
            NAME,
            f"{_CREATED.label}: {name} latency",
            _ms(getattr(server, field)),
            "ms",
            baseline="bare",
            baseline_value=_ms(getattr(bare, field)),
        )
        for name, field in (("p50", "p50_us"), ("p99", "p99_us"))
    ]
    return [throughput, *latencies]


def _refused_figure(path: _Path, series: _Series) -> Figure:
    return Figure(
        NAME,
        f"{path.label}: requests/s",
        series.best_server.per_second,
        "req/s",
        baseline="bare",
        baseline_value=series.best_bare.per_second,
        details=_details(series),
    )


def _details(series: _Series) -> dict[str, float | str]:
    server, bare = series.best_server, series.best_bare
    return {
        "p50_ms": _ms(server.p50_us),
        "p99_ms": _ms(server.p99_us),
        "bare_p50_ms": _ms(bare.p50_us),
        "bare_p99_ms": _ms(bare.p99_us),
        "requests": server.requests,
        "bare_requests": bare.requests,
        "cpu_us_per_request": round(server.cpu_us_per_request, 1),
        "bare_cpu_us_per_request": round(bare.cpu_us_per_request, 1),
        # wrk counts statuses of 400 and more; bmserver answers no 1xx or 3xx.
        "non_2xx": server.status_errors,
        "socket_errors": server.socket_errors + bare.socket_errors,
        "seconds_per_round": round(server.duration_us / 1e6, 2),
        "rounds_req_per_s": _rounds(series.server),
        "bare_rounds_req_per_s": _rounds(series.bare),
    }
