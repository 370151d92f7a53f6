"""Shared by the whole suite: hypothesis profiles, and a real server over a real socket.

The server fixtures take ``settings``, ``store`` and ``clock`` fixtures that a test module may
override, in the pytest-httpserver manner.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from _harness import START, Client, RunningServer, loop_of, serve, stop

from bmserver import (
    ManualClock,
    MemoryLimiter,
    MemoryStore,
    Settings,
    SqliteStore,
    Store,
    create_app,
)

pytest_plugins = ["pytester"]

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


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The store the server uses: every server test runs on both (the app opens and closes it)."""
    if request.param == "sqlite":
        return SqliteStore(tmp_path / "ingest.sqlite3")
    return MemoryStore()


@pytest.fixture
def clock() -> ManualClock:
    """The server's clock: it moves only when a test advances it."""
    return ManualClock(START)


@pytest.fixture
def running(settings: Settings, store: Store, clock: ManualClock) -> Iterator[RunningServer]:
    """A real server over a real socket, with a key that may ingest and read."""
    app = create_app(
        settings, store=store, limiter=MemoryLimiter(settings.rate_policy), clock=clock
    )
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
