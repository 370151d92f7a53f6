"""The pytest plugin (entry point ``pytest11``): the ``bm_fake_ingest`` fixture and its settings.

Loading it imports nothing heavy: the fake server (bmserver, Starlette, uvicorn) is imported
the first time a test asks for the fixture.

Settings, most specific first: the marker ``@pytest.mark.bm_ingest(...)`` on a test, then the
command-line flag, then the ini option, then the default. They are parsed once, into typed
values, by :class:`~pytest_bm._options.Options`; this module only holds the hooks and fixtures.

======================  ======================  ===============================================
flag                    ini option              meaning
======================  ======================  ===============================================
``--bm-ingest-strict``  ``bm_ingest_strict``    fail a test whose requests were rejected (4xx)
                                                unexpectedly: ``true`` (default) or ``false``
``--bm-ingest-rate``    ``bm_ingest_rate``      sustained rate per key, e.g. ``1/s`` (default)
``--bm-ingest-burst``   ``bm_ingest_burst``     requests a key may send at once (default 60)
``--bm-ingest-api-key`` ``bm_ingest_api_key``   the fake's default key (default: a random one)
======================  ======================  ===============================================
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import pytest

from pytest_bm._options import MARKER, MARKER_HELP, Options, add_options

if TYPE_CHECKING:
    from datetime import datetime

    from bmcore import RatePolicy
    from pytest_bm._fake import FakeIngest

__all__ = [
    "Options",
    "bm_fake_ingest",
    "bm_fake_ingest_server",
    "bm_ingest_api_key",
    "bm_ingest_options",
    "bm_ingest_rate_policy",
    "bm_ingest_start_time",
]

_OPTIONS_KEY: Final = pytest.StashKey[Options]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the flags and ini options (the flag wins over the ini value)."""
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and parse every setting now, so a bad value stops the run at once."""
    config.addinivalue_line("markers", MARKER_HELP)
    config.stash[_OPTIONS_KEY] = Options.from_config(config)


def pytest_report_header(config: pytest.Config) -> str:
    """Show the fake's settings at the top of the run."""
    return config.stash[_OPTIONS_KEY].report()


@pytest.fixture(scope="session")
def bm_ingest_options(pytestconfig: pytest.Config) -> Options:
    """The run's settings of the fake; override this fixture to set them in code."""
    return pytestconfig.stash[_OPTIONS_KEY]


@pytest.fixture(scope="session")
def bm_ingest_api_key(bm_ingest_options: Options) -> str | None:
    """The fake's default API key, None for a random one; override to choose your own."""
    return bm_ingest_options.api_key


@pytest.fixture(scope="session")
def bm_ingest_rate_policy(bm_ingest_options: Options) -> RatePolicy:
    """The rate policy of every key (from the options); override to set one in code."""
    return bm_ingest_options.rate_policy


@pytest.fixture
def bm_ingest_start_time() -> datetime | None:
    """Where the fake's clock starts for a test: None for the real current time.

    Override it to pin the time that received entries carry and the time policy applies to.
    """
    return None


@pytest.fixture(scope="session")
def bm_fake_ingest_server(
    bm_ingest_api_key: str | None, bm_ingest_rate_policy: RatePolicy
) -> Iterator[FakeIngest]:
    """One fake server per pytest run (per xdist worker), on 127.0.0.1 and a free port."""
    from pytest_bm._fake import FakeIngest  # noqa: PLC0415 - imported only when used

    fake = FakeIngest(api_key=bm_ingest_api_key, rate_policy=bm_ingest_rate_policy)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def bm_fake_ingest(
    request: pytest.FixtureRequest,
    bm_fake_ingest_server: FakeIngest,
    bm_ingest_options: Options,
    bm_ingest_rate_policy: RatePolicy,
    bm_ingest_start_time: datetime | None,
) -> Iterator[FakeIngest]:
    """The fake ingest endpoint, reset for this test; fails it at teardown on unexpected 4xx."""
    settings = bm_ingest_options.for_test(request.node.get_closest_marker(MARKER))
    fake = bm_fake_ingest_server
    fake.reset(now=bm_ingest_start_time)
    fake.set_rate_policy(settings.rate_policy or bm_ingest_rate_policy)
    yield fake
    if settings.strict:
        report = fake.rejection_report()
        if report:
            pytest.fail(
                "bm_fake_ingest rejected requests this test did not expect (strict mode; "
                "opt out with @pytest.mark.bm_ingest(strict=False) or the ini option "
                f"bm_ingest_strict = false):\n{report}",
                pytrace=False,
            )
