"""5. The fake: bm_fake_ingest beside pytest-httpserver's ``httpserver``, on the same machine.

What a test suite pays for each fake HTTP endpoint, measured against pytest-httpserver in the
same run (ratio = bm_fake_ingest / pytest-httpserver, lower is better; no goals):

- server start, from nothing to the first answered request, and server stop: what each
  session-scoped fixture does once per run (per xdist worker), by the fixture's own code path;
- per-test reset: what each function-scoped fixture does around every test, alone, and with
  the one request a test sends (bm_fake_ingest builds bmserver's app for the first request
  after a reset, so that build counts in the second figure, not in the first);
- end to end: pytest in a subprocess on a generated file of N tests that each send one request.

Both sides get the same request from the same client (bench/_client.py), and every timed
request is checked: answered 201 and recorded by the fake (``requests`` for bm_fake_ingest,
``log`` for pytest-httpserver).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pytest_httpserver import HTTPServer

import bmcore
from bench._client import BACKUP_PATH, post_backup
from bench._report import Figure, per_call
from pytest_bm import FakeIngest
from pytest_bm.plugin import Options

NAME: Final = "5. The fake"
BASELINE: Final = "pytest-httpserver"

#: The key sent to pytest-httpserver, which ignores it: both requests carry the same headers.
THEIR_KEY: Final = "bm_" + "x" * 43
#: What pytest-httpserver is told to answer; bm_fake_ingest answers bmserver's own body.
THEIR_ANSWER: Final = {"id": "1", "duplicate": False}

#: Start/stop cycles per side; the figure is the median.
CYCLES: Final = 9
#: How long a server idles between its answer and its stop, untimed: at the end of a session
#: the last test's teardown comes in between. Stopping right after an answer would race
#: werkzeug's serving loop, which stops at once only if it has not gone back to waiting yet
#: (and otherwise at the end of its 0.5 s poll), so the figure would be a coin toss.
IDLE_BEFORE_STOP_S: Final = 0.01
#: Tests in the generated file, and pytest runs per side and size; the figure is the median.
TESTS: Final = 200
TESTS_SMOKE: Final = 5
RUNS: Final = 5

_ROOT: Final = Path(__file__).resolve().parent.parent
_NO_TESTS_COLLECTED: Final = 5  # pytest.ExitCode.NO_TESTS_COLLECTED, without importing pytest


def _fixture_policy() -> bmcore.RatePolicy:
    """The rate policy the fixture ``bm_ingest_rate_policy`` gives a run without settings."""
    return Options().rate_policy


def _check(side: str, status: int, recorded: int) -> None:
    """Refuse to count a request that was not answered 201 or not recorded exactly once."""
    if status != 201 or recorded != 1:
        msg = f"{side}: expected one request answered 201, got status {status}, {recorded} recorded"
        raise AssertionError(msg)


def _expect(server: HTTPServer) -> None:
    """What a pytest-httpserver test does before its request: say what to answer."""
    server.expect_request(BACKUP_PATH, method="POST").respond_with_json(THEIR_ANSWER, status=201)


@contextlib.contextmanager
def _quiet_werkzeug() -> Generator[None]:
    """Keep werkzeug from printing a line per request into the benchmark's output.

    Its server logs every request, and adds a handler on stderr unless one exists; under
    pytest the log capture is that handler. A NullHandler keeps the records being made
    (their cost stays in the figures) and drops them.
    """
    logger = logging.getLogger("werkzeug")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# --- 1. server start and stop -----------------------------------------------------------------


@dataclass(frozen=True)
class _Cycle:
    """Seconds from nothing to the first answer, and to stop the server afterwards."""

    start: float
    stop: float


def _cycle_ours(policy: bmcore.RatePolicy) -> _Cycle:
    began = time.perf_counter()
    # What the session fixture bm_fake_ingest_server does, then a test's first request.
    fake = FakeIngest(api_key=None, rate_policy=policy)
    fake.start()
    try:
        status = post_backup(fake.backup_url, fake.api_key)
        answered = time.perf_counter()
        _check("bm_fake_ingest", status, len(fake.requests))
        time.sleep(IDLE_BEFORE_STOP_S)
    except BaseException:
        fake.stop()  # no server left running behind a failed benchmark
        raise
    stopping = time.perf_counter()
    fake.stop()
    return _Cycle(start=answered - began, stop=time.perf_counter() - stopping)


def _cycle_theirs() -> _Cycle:
    began = time.perf_counter()
    # What the session fixture make_httpserver does without settings, then a test's first
    # request (with the expectation the test sets up first).
    server = HTTPServer(host=HTTPServer.DEFAULT_LISTEN_HOST, port=HTTPServer.DEFAULT_LISTEN_PORT)
    server.start()
    try:
        _expect(server)
        status = post_backup(server.url_for(BACKUP_PATH), THEIR_KEY)
        answered = time.perf_counter()
        _check(BASELINE, status, len(server.log))
        time.sleep(IDLE_BEFORE_STOP_S)
    except BaseException:
        server.stop()
        raise
    stopping = time.perf_counter()
    # make_httpserver's teardown.
    server.clear()
    if server.is_running():
        server.stop()
    return _Cycle(start=answered - began, stop=time.perf_counter() - stopping)


def _start_stop(policy: bmcore.RatePolicy, *, smoke: bool) -> list[Figure]:
    # One cycle each first, untimed: the first start in a process also pays for lazy imports
    # and first-call caches, which the end-to-end figures count.
    _cycle_ours(policy)
    _cycle_theirs()
    ours: list[_Cycle] = []
    theirs: list[_Cycle] = []
    for _ in range(1 if smoke else CYCLES):
        # Alternating, so that a slow phase of the machine hits both sides alike.
        ours.append(_cycle_ours(policy))
        theirs.append(_cycle_theirs())
    figures: list[Figure] = []
    for name, mine, other in [
        (
            "server start to the first answer",
            [cycle.start * 1e3 for cycle in ours],
            [cycle.start * 1e3 for cycle in theirs],
        ),
        (
            f"server stop, idle {IDLE_BEFORE_STOP_S * 1e3:g} ms since its answer",
            [cycle.stop * 1e3 for cycle in ours],
            [cycle.stop * 1e3 for cycle in theirs],
        ),
    ]:
        details: dict[str, float | str] = {
            "statistic": "median",
            "cycles": len(ours),
            "min_ms": min(mine),
            "max_ms": max(mine),
            "baseline_min_ms": min(other),
            "baseline_max_ms": max(other),
        }
        figures.append(
            Figure(
                NAME,
                name,
                statistics.median(mine),
                "ms",
                BASELINE,
                statistics.median(other),
                details=details,
            )
        )
    return figures


# --- 2. per-test reset ------------------------------------------------------------------------


def _reset_ours(fake: FakeIngest, policy: bmcore.RatePolicy) -> None:
    # The fixture bm_fake_ingest for a test without a marker: its setup ...
    fake.reset(now=None)
    fake.set_rate_policy(policy)


def _teardown_ours(fake: FakeIngest) -> None:
    # ... and its teardown in strict mode, the default.
    report = fake.rejection_report()
    if report:
        raise AssertionError(report)


def _reset_theirs(server: HTTPServer) -> None:
    # The fixture httpserver: its setup; it has no teardown.
    server.clear()


def _resets(policy: bmcore.RatePolicy, *, smoke: bool) -> list[Figure]:
    with FakeIngest.running(rate_policy=policy) as fake, HTTPServer() as server:

        def reset_ours() -> None:
            _reset_ours(fake, policy)
            _teardown_ours(fake)

        def reset_theirs() -> None:
            _reset_theirs(server)

        def test_ours() -> None:
            _reset_ours(fake, policy)
            status = post_backup(fake.backup_url, fake.api_key)
            _check("bm_fake_ingest", status, len(fake.requests))
            _teardown_ours(fake)

        def test_theirs() -> None:
            _reset_theirs(server)
            _expect(server)
            status = post_backup(server.url_for(BACKUP_PATH), THEIR_KEY)
            _check(BASELINE, status, len(server.log))
            # What a careful test calls last; bm_fake_ingest's strict mode does the like.
            server.check_assertions()

        timed: dict[str, Callable[[], None]] = {
            "reset_ours": reset_ours,
            "reset_theirs": reset_theirs,
            "test_ours": test_ours,
            "test_theirs": test_theirs,
        }
        # Each once, untimed, so that a broken side fails here with its own error.
        for function in timed.values():
            function()
        seconds = {name: per_call(function, smoke=smoke) for name, function in timed.items()}
    statistic = "10 calls (smoke)" if smoke else "best of 5 (per_call)"
    return [
        Figure(
            NAME,
            "per-test reset (fixture setup and teardown)",
            seconds["reset_ours"] * 1e6,
            "us/test",
            BASELINE,
            seconds["reset_theirs"] * 1e6,
            details={"statistic": statistic},
        ),
        Figure(
            NAME,
            "per-test reset and one POST, in process",
            seconds["test_ours"] * 1e6,
            "us/test",
            BASELINE,
            seconds["test_theirs"] * 1e6,
            details={"statistic": statistic},
        ),
    ]


# --- 3. end to end under pytest -------------------------------------------------------------


@dataclass(frozen=True)
class _Suite:
    """How to write a test file for one fixture, and which plugin serves it."""

    fixture: str
    plugin: str  # the pytest11 entry point's name
    header: str
    test: str

    def source(self, count: int) -> str:
        return self.header + "".join(self.test.format(index=index) for index in range(count))


_OURS: Final = _Suite(
    fixture="bm_fake_ingest",
    plugin="bm_ingest",
    header="from bench._client import post_backup\n",
    test="""

def test_{index}(bm_fake_ingest):
    assert post_backup(bm_fake_ingest.backup_url, bm_fake_ingest.api_key) == 201
    assert len(bm_fake_ingest.requests) == 1
""",
)

_THEIRS: Final = _Suite(
    fixture="httpserver",
    plugin="pytest_httpserver",
    header=(
        "from bench._client import BACKUP_PATH, post_backup\n"
        f"KEY = {THEIR_KEY!r}\n"
        f"ANSWER = {THEIR_ANSWER!r}\n"
    ),
    test="""

def test_{index}(httpserver):
    httpserver.expect_request(BACKUP_PATH, method="POST").respond_with_json(ANSWER, status=201)
    assert post_backup(httpserver.url_for(BACKUP_PATH), KEY) == 201
    assert len(httpserver.log) == 1
    httpserver.check_assertions()
""",
)


def _pytest_seconds(folder: Path, suite: _Suite, count: int) -> float:
    """Wall-clock seconds of ``python -m pytest`` on ``count`` tests of ``suite``."""
    path = folder / f"test_{suite.fixture}_{count}.py"
    if not path.exists():
        path.write_text(suite.source(count), encoding="utf-8")
    env = dict(os.environ)
    # Only the plugin under test, loaded through its entry point: the other plugins installed
    # here (hypothesis, xdist, schemathesis, ...) would add the same start-up cost to both
    # sides and blur the ratio. bench/ is importable for the shared client.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", suite.plugin, path.name]
    began = time.perf_counter()
    done = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, check=False, timeout=300
    )
    seconds = time.perf_counter() - began
    expected = 0 if count else _NO_TESTS_COLLECTED
    if done.returncode != expected or (count and f"{count} passed" not in done.stdout):
        msg = (
            f"pytest on {count} {suite.fixture} tests exited {done.returncode}, "
            f"expected {expected}:\n{done.stdout}\n{done.stderr}"
        )
        raise RuntimeError(msg)
    return seconds


def _end_to_end(*, smoke: bool) -> list[Figure]:
    count = TESTS_SMOKE if smoke else TESTS
    runs: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bm-bench-fake-") as folder:
        for _ in range(1 if smoke else RUNS):
            # Alternating sides and sizes, so that a slow phase hits all of them alike.
            for size in (count, 0):
                for suite in (_OURS, _THEIRS):
                    seconds = _pytest_seconds(Path(folder), suite, size)
                    runs.setdefault((suite.fixture, size), []).append(seconds)
    # The median, not the best: pytest-httpserver's stop at the end of the session waits for
    # werkzeug's next poll, up to 0.5 s, unless it happens to race ahead of it; the best run
    # would be a lucky one.
    median = {key: statistics.median(seconds) for key, seconds in runs.items()}
    total = {suite.fixture: median[suite.fixture, count] for suite in (_OURS, _THEIRS)}
    empty = {suite.fixture: median[suite.fixture, 0] for suite in (_OURS, _THEIRS)}
    # Beyond pytest's own start (the same command on a file without tests): server start and
    # stop spread over the tests, plus each test's reset and request. Not quite even: the
    # pytest-httpserver plugin imports werkzeug as it loads, so its run without tests has
    # paid for that already, while bm_fake_ingest imports bmserver, Starlette and uvicorn
    # only when a test first asks for it. The wall time above is the even comparison.
    each = {name: (total[name] - empty[name]) / count * 1e3 for name in total}
    details: dict[str, float | str] = {
        "statistic": f"median of {1 if smoke else RUNS} runs",
        "min_s": min(runs["bm_fake_ingest", count]),
        "max_s": max(runs["bm_fake_ingest", count]),
        "baseline_min_s": min(runs["httpserver", count]),
        "baseline_max_s": max(runs["httpserver", count]),
        "tests": count,
        "total_per_test_ms": total["bm_fake_ingest"] / count * 1e3,
        "baseline_total_per_test_ms": total["httpserver"] / count * 1e3,
        "pytest_without_tests_s": empty["bm_fake_ingest"],
        "baseline_pytest_without_tests_s": empty["httpserver"],
    }
    return [
        Figure(
            NAME,
            f"pytest, {count} tests of one POST each, wall time",
            total["bm_fake_ingest"],
            "s",
            BASELINE,
            total["httpserver"],
            details=details,
        ),
        Figure(
            NAME,
            "pytest, per test beyond pytest's own start",
            each["bm_fake_ingest"],
            "ms/test",
            BASELINE,
            each["httpserver"],
            details=details,
        ),
    ]


def run(*, smoke: bool) -> list[Figure]:
    """Start, stop, per-test reset and end-to-end figures of bm_fake_ingest."""
    policy = _fixture_policy()
    with _quiet_werkzeug():
        figures = _start_stop(policy, smoke=smoke)
        figures += _resets(policy, smoke=smoke)
    figures += _end_to_end(smoke=smoke)
    return figures
