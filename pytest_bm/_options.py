"""The plugin's settings, parsed once where they come in, into typed values.

Most specific first: the marker ``@pytest.mark.bm_ingest(...)`` on a test, then the
command-line flag, then the ini option, then the default. Text from the flags, the ini file and
the marker is parsed here and nowhere else: strictness into a bool, the rate and burst into
bmcore's :class:`~bmcore.RatePolicy` (with :func:`bmcore.parse_rate`, the syntax of every
command line that takes a rate), the key checked. A bad value is a :class:`pytest.UsageError`
that says what is expected.
"""

from __future__ import annotations

import re
from typing import Final

import attrs
import pytest

import bmcore

__all__ = ["MARKER", "MARKER_HELP", "Options", "PerTest", "add_options"]

MARKER: Final = "bm_ingest"
MARKER_HELP: Final = (
    "bm_ingest(strict=True, rate='1/s', burst=60): settings of bm_fake_ingest for this test"
)

_KEY: Final = re.compile(r"^bm_[A-Za-z0-9_-]{32,256}$")
_MARKER_ARGS: Final = frozenset({"strict", "rate", "burst"})


def _usage(message: str) -> pytest.UsageError:
    return pytest.UsageError(f"bm_ingest: {message}")


def _parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise _usage(f"{name} must be true or false, got {value!r}")


def _parse_burst(value: object) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise _usage(f"burst must be a whole number of at least 1, got {value!r}")
    return int(text)


def _parse_key(value: str) -> str:
    if not _KEY.match(value):
        raise _usage(
            "api_key must be 'bm_' followed by 32 to 256 letters, digits, '-' or '_' (the key "
            "itself is not repeated here)"
        )
    return value


def _rate_per_second(options: Options) -> float:
    return bmcore.parse_rate(options.rate)


def _rate_policy(options: Options) -> bmcore.RatePolicy:
    return bmcore.RatePolicy.per_second(options.rate_per_second, burst=options.burst)


@attrs.frozen(kw_only=True)
class Options:
    """The settings of the fake for this run (a test's marker may change some of them).

    ``rate`` is kept as written, for the report header; it is parsed once, when the options
    are made, into ``rate_per_second`` and, with ``burst``, into ``rate_policy``.

    >>> Options(rate="30/min", burst=5).rate_policy
    RatePolicy(burst=5, interval_ns=2000000000)
    """

    strict: bool = True
    rate: str = "1/s"
    burst: int = 60
    api_key: str | None = None
    #: The sustained rate in tokens per second.
    rate_per_second: float = attrs.field(
        init=False, default=attrs.Factory(_rate_per_second, takes_self=True)
    )
    #: The policy every key of the fake is limited by.
    rate_policy: bmcore.RatePolicy = attrs.field(
        init=False, default=attrs.Factory(_rate_policy, takes_self=True)
    )

    @classmethod
    def from_config(cls, config: pytest.Config) -> Options:
        """The run's options: each flag, else its ini value; UsageError for a bad one."""

        def value(name: str) -> str:
            flag: object = config.getoption(name)
            return str(flag) if flag is not None else str(config.getini(name))

        key = value("bm_ingest_api_key")
        return cls._made(
            strict=_parse_bool("strict", value("bm_ingest_strict")),
            rate=value("bm_ingest_rate"),
            burst=_parse_burst(value("bm_ingest_burst")),
            api_key=_parse_key(key) if key else None,
        )

    @classmethod
    def _made(cls, *, strict: bool, rate: str, burst: int, api_key: str | None) -> Options:
        try:
            return cls(strict=strict, rate=rate, burst=burst, api_key=api_key)
        except ValueError as error:  # the rate: bmcore.parse_rate says what is wrong
            raise _usage(str(error)) from None

    def for_test(self, marker: pytest.Mark | None) -> PerTest:
        """What a test's marker changes; UsageError for an argument it does not take."""
        if marker is None:
            return PerTest(strict=self.strict, rate_policy=None)
        if marker.args:
            raise _usage("the marker takes keyword arguments only: bm_ingest(strict=False)")
        unknown = set(marker.kwargs) - _MARKER_ARGS
        if unknown:
            raise _usage(
                f"unknown marker argument(s) {sorted(unknown)}; use {sorted(_MARKER_ARGS)}"
            )
        strict = _parse_bool("strict", marker.kwargs.get("strict", self.strict))
        if not {"rate", "burst"} & set(marker.kwargs):
            return PerTest(strict=strict, rate_policy=None)
        marked = self._made(
            strict=strict,
            rate=str(marker.kwargs.get("rate", self.rate)),
            burst=_parse_burst(marker.kwargs.get("burst", self.burst)),
            api_key=self.api_key,
        )
        return PerTest(strict=strict, rate_policy=marked.rate_policy)

    def report(self) -> str:
        """The line of the run's report header."""
        key = "fixed" if self.api_key else "random"
        return (
            f"bm_ingest: strict={self.strict}, rate={self.rate} burst={self.burst}, api key {key}"
        )


@attrs.frozen(kw_only=True)
class PerTest:
    """One test's settings, with its marker applied."""

    strict: bool
    #: The marker's rate policy; None where it sets neither rate nor burst (the
    #: ``bm_ingest_rate_policy`` fixture decides then).
    rate_policy: bmcore.RatePolicy | None


def add_options(parser: pytest.Parser) -> None:
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
