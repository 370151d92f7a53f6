"""Shared by the whole suite: hypothesis profiles, and a real server over a real socket.

The server fixtures take ``settings``, ``store`` and ``clock`` fixtures that a test module may
override, in the pytest-httpserver manner.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from pathlib import Path

import attrs
import hypothesis
import pytest
from _harness import START, Client, RunningServer, loop_of, serve, stop

from bmserver import (
    DEFAULT_RATE_POLICY,
    Limiter,
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Settings,
    SqliteStore,
    Store,
    create_app,
)
from pytest_bm import FakeIngest

pytest_plugins = ["pytester", "_reliability", "_services"]

# A quick default for the edit-test loop, and a thorough profile that CI selects with
# HYPOTHESIS_PROFILE=ci. No deadline: these machines are shared and noisy, and timing is the
# benchmarks' job, never a unit test's.
hypothesis.settings.register_profile("default", max_examples=100, deadline=None)
hypothesis.settings.register_profile(
    "ci",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def settings() -> Settings:
    """The settings of the server under test; override per module to change limits."""
    return Settings()


@pytest.fixture(params=["memory", "sqlite", "fake"])
def backend(request: pytest.FixtureRequest) -> str:
    """What serves the contract: bmserver on a MemoryStore, on SQLite, or pytest_bm's fake."""
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Store:
    """The store bmserver uses (the app opens and closes it); the fake brings its own."""
    if backend == "sqlite":
        return SqliteStore(tmp_path / "ingest.sqlite3")
    return MemoryStore()


@pytest.fixture(scope="session")
def session_fake() -> Iterator[FakeIngest]:
    """One FakeIngest for every contract test that runs against the fake."""
    with FakeIngest.running() as fake:
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    """The server's clock: it moves only when a test advances it."""
    return ManualClock(START)


@pytest.fixture
def limiter(settings: Settings) -> Limiter:
    """The per-key limiter of the server under test; override per module (e.g. Redis)."""
    return MemoryLimiter(settings.rate_policy)


@pytest.fixture
def running(
    request: pytest.FixtureRequest,
    backend: str,
    settings: Settings,
    store: Store,
    clock: ManualClock,
    limiter: Limiter,
) -> Iterator[RunningServer]:
    """A real server over a real socket, with a key that may ingest and read.

    The same tests run against bmserver and against the fake: fidelity, proven.
    """
    if backend == "fake":
        with _fake_for(request, settings) as fake:
            fake.reset(now=clock.now())
            fake.set_rate_policy(settings.rate_policy)
            # The fake's store is private to users; the contract tests look inside on purpose.
            inside = fake._store  # pyright: ignore[reportPrivateUsage] - the harness checks storage
            client = Client("127.0.0.1", _port(fake.url), "")
            running = RunningServer(client, inside, fake.clock, None)
            running.client.api_key = running.new_key("acme")
            yield running
        return
    app = create_app(settings, store=store, limiter=limiter, clock=clock)
    server, thread, port = serve(app)
    try:
        running = RunningServer(Client("127.0.0.1", port, ""), store, clock, loop_of(server))
        running.client.api_key = running.new_key("acme")
        yield running
    finally:
        stop(server, thread)


@pytest.fixture
def client(running: RunningServer) -> Client:
    """The HTTP client of the running server."""
    return running.client


@contextlib.contextmanager
def _fake_for(request: pytest.FixtureRequest, settings: Settings) -> Generator[FakeIngest]:
    """The session's fake, or a fake of its own for settings beyond the rate policy."""
    if attrs.evolve(settings, rate_policy=DEFAULT_RATE_POLICY) == Settings():
        yield request.getfixturevalue("session_fake")
        return
    with FakeIngest.running(settings=settings) as fake:
        yield fake


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
