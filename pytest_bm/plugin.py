"""The pytest plugin (entry point ``pytest11``): the ``bm_fake_ingest`` fixture and its settings.

Loading it imports nothing heavy: the fake server (bmserver, Starlette, uvicorn) is imported
the first time a test asks for the fixture.

Settings, most specific first: the marker ``@pytest.mark.bm_ingest(...)`` on a test, then the
command-line flag, then the ini option, then the default.

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

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import attrs
import pytest

if TYPE_CHECKING:
    from datetime import datetime

    from bmcore import RatePolicy
    from pytest_bm._fake import FakeIngest

__all__ = [
    "bm_fake_ingest",
    "bm_fake_ingest_server",
    "bm_ingest_api_key",
    "bm_ingest_options",
    "bm_ingest_rate_policy",
    "bm_ingest_start_time",
]

_KEY: Final = re.compile(r"^bm_[A-Za-z0-9_-]{32,256}$")
_MARKER_ARGS: Final = frozenset({"strict", "rate", "burst"})


@attrs.frozen(kw_only=True)
class Options:
    """The resolved settings of the fake for this run (the marker may override per test)."""

    strict: bool = True
    rate: str = "1/s"
    burst: int = 60
    api_key: str | None = None

    @property
    def rate_per_second(self) -> float:
        """The sustained rate in tokens per second."""
        return _parse_rate(self.rate)


def _parse_rate(text: str) -> float:
    import bmcore  # noqa: PLC0415 - keep loading the plugin cheap

    try:
        return bmcore.parse_rate(text)
    except ValueError as error:
        raise pytest.UsageError(f"bm_ingest: {error}") from None


def _parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    msg = f"bm_ingest: {name} must be true or false, got {value!r}"
    raise pytest.UsageError(msg)


def _parse_burst(value: object) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        msg = f"bm_ingest: burst must be a whole number of at least 1, got {value!r}"
        raise pytest.UsageError(msg)
    return int(text)


def _parse_key(value: str) -> str:
    if not _KEY.match(value):
        msg = (
            "bm_ingest: api_key must be 'bm_' followed by 32 to 256 letters, digits, '-' or "
            "'_' (the key itself is not repeated here)"
        )
        raise pytest.UsageError(msg)
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the flags and ini options (the flag wins over the ini value)."""
    group = parser.getgroup("bm_ingest", "bm_fake_ingest: a fake BackupMonitor ingest endpoint")
    group.addoption(
        "--bm-ingest-strict",
        dest="bm_ingest_strict",
        default=None,
        metavar="true|false",
        help="fail a test at teardown when the fake rejected a request unexpectedly",
    )
    group.addoption("--bm-ingest-rate", dest="bm_ingest_rate", default=None, metavar="N/UNIT")
    group.addoption("--bm-ingest-burst", dest="bm_ingest_burst", default=None, metavar="N")
    group.addoption("--bm-ingest-api-key", dest="bm_ingest_api_key", default=None, metavar="KEY")
    parser.addini(
        "bm_ingest_strict",
        "fail tests whose requests the fake rejected unexpectedly (true/false)",
        default="true",
    )
    parser.addini("bm_ingest_rate", "sustained rate per key of the fake, e.g. 1/s", default="1/s")
    parser.addini("bm_ingest_burst", "requests a key may send at once", default="60")
    parser.addini("bm_ingest_api_key", "the fake's default API key (default: random)", default="")


def _resolve(config: pytest.Config) -> Options:
    def value(name: str) -> str:
        flag: object = config.getoption(name)
        return str(flag) if flag is not None else str(config.getini(name))

    rate = value("bm_ingest_rate")
    _parse_rate(rate)
    key = value("bm_ingest_api_key")
    return Options(
        strict=_parse_bool("strict", value("bm_ingest_strict")),
        rate=rate,
        burst=_parse_burst(value("bm_ingest_burst")),
        api_key=_parse_key(key) if key else None,
    )


_OPTIONS_KEY: Final = pytest.StashKey[Options]()


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and check every setting now, so a bad value stops the run at once."""
    config.addinivalue_line(
        "markers",
        "bm_ingest(strict=True, rate='1/s', burst=60): settings of bm_fake_ingest for this test",
    )
    config.stash[_OPTIONS_KEY] = _resolve(config)


def pytest_report_header(config: pytest.Config) -> str:
    """Show the fake's settings at the top of the run."""
    options = config.stash[_OPTIONS_KEY]
    key = "fixed" if options.api_key else "random"
    return (
        f"bm_ingest: strict={options.strict}, rate={options.rate} burst={options.burst}, "
        f"api key {key}"
    )


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
    import bmcore  # noqa: PLC0415 - imported only when a test uses the fake

    return bmcore.RatePolicy.per_second(
        bm_ingest_options.rate_per_second, burst=bm_ingest_options.burst
    )


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


def _marker_options(request: pytest.FixtureRequest, options: Options) -> Options | None:
    """The options with the marker's changes, or None when the test has no marker."""
    marker = request.node.get_closest_marker("bm_ingest")
    if marker is None:
        return None
    if marker.args:
        msg = "bm_ingest: the marker takes keyword arguments only: bm_ingest(strict=False)"
        raise pytest.UsageError(msg)
    unknown = set(marker.kwargs) - _MARKER_ARGS
    if unknown:
        msg = f"bm_ingest: unknown marker argument(s) {sorted(unknown)}; use {sorted(_MARKER_ARGS)}"
        raise pytest.UsageError(msg)
    changed = attrs.evolve(
        options,
        strict=_parse_bool("strict", marker.kwargs.get("strict", options.strict)),
        rate=str(marker.kwargs.get("rate", options.rate)),
        burst=_parse_burst(marker.kwargs.get("burst", options.burst)),
    )
    _parse_rate(changed.rate)
    return changed


@pytest.fixture
def bm_fake_ingest(
    request: pytest.FixtureRequest,
    bm_fake_ingest_server: FakeIngest,
    bm_ingest_options: Options,
    bm_ingest_rate_policy: RatePolicy,
    bm_ingest_start_time: datetime | None,
) -> Iterator[FakeIngest]:
    """The fake ingest endpoint, reset for this test; fails it at teardown on unexpected 4xx."""
    import bmcore  # noqa: PLC0415 - imported only when a test uses the fake

    marked = _marker_options(request, bm_ingest_options)
    options = marked or bm_ingest_options
    fake = bm_fake_ingest_server
    fake.reset(now=bm_ingest_start_time)
    marker = request.node.get_closest_marker("bm_ingest")
    if marked is None or marker is None or not {"rate", "burst"} & set(marker.kwargs):
        fake.set_rate_policy(bm_ingest_rate_policy)
    else:
        fake.set_rate_policy(
            bmcore.RatePolicy.per_second(marked.rate_per_second, burst=marked.burst)
        )
    yield fake
    if options.strict:
        report = fake.rejection_report()
        if report:
            pytest.fail(
                "bm_fake_ingest rejected requests this test did not expect (strict mode; "
                "opt out with @pytest.mark.bm_ingest(strict=False) or the ini option "
                f"bm_ingest_strict = false):\n{report}",
                pytrace=False,
            )
