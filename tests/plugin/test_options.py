"""The plugin's settings, parsed once into typed values: Options and what a marker changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bmcore
from pytest_bm.plugin import Options

_UNITS = ("s", "min", "h")


@given(count=st.integers(1, 10_000), unit=st.sampled_from(_UNITS), burst=st.integers(1, 1000))
def test_the_rate_is_parsed_once_into_bmcores_policy(count: int, unit: str, burst: int) -> None:
    """Rate and burst become the RatePolicy of bmcore.parse_rate; the rate stays as written."""
    options = Options(rate=f"{count}/{unit}", burst=burst)
    per_second = bmcore.parse_rate(f"{count}/{unit}")
    assert options.rate == f"{count}/{unit}"
    assert options.rate_per_second == per_second
    assert options.rate_policy == bmcore.RatePolicy.per_second(per_second, burst=burst)


def test_a_bad_rate_cannot_make_options() -> None:
    """Options with a rate bmcore cannot parse do not exist: the error says what to write."""
    with pytest.raises(ValueError, match="invalid rate 'fast'"):
        Options(rate="fast")


def test_without_a_marker_a_test_takes_the_runs_settings() -> None:
    """No marker: the run's strictness, and the rate policy fixture decides (None here)."""
    settings = Options(strict=False).for_test(None)
    assert (settings.strict, settings.rate_policy) == (False, None)


def test_a_marker_with_only_strict_leaves_the_policy_to_the_fixture() -> None:
    """strict= alone changes strictness only."""
    settings = Options().for_test(pytest.mark.bm_ingest(strict="false").mark)
    assert (settings.strict, settings.rate_policy) == (False, None)


def test_a_marker_rate_or_burst_makes_a_policy_with_the_runs_other_half() -> None:
    """burst= alone keeps the run's rate; rate= alone keeps the run's burst."""
    options = Options(rate="2/s", burst=7)
    by_burst = options.for_test(pytest.mark.bm_ingest(burst=3).mark)
    by_rate = options.for_test(pytest.mark.bm_ingest(rate="1/min").mark)
    assert by_burst.rate_policy == bmcore.RatePolicy.per_second(2, burst=3)
    assert by_rate.rate_policy == bmcore.RatePolicy.per_second(1 / 60, burst=7)
    assert by_burst.strict
    assert by_rate.strict


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (pytest.mark.bm_ingest(False), "keyword arguments only"),
        (pytest.mark.bm_ingest(stric=False), r"unknown marker argument\(s\) \['stric'\]"),
        (pytest.mark.bm_ingest(rate="fast"), "bm_ingest: invalid rate 'fast'"),
        (pytest.mark.bm_ingest(burst=0), "bm_ingest: burst must be a whole number"),
        (pytest.mark.bm_ingest(strict="maybe"), "bm_ingest: strict must be true or false"),
    ],
)
def test_a_bad_marker_is_a_usage_error(marker: pytest.MarkDecorator, message: str) -> None:
    """Each bad marker argument is a UsageError saying what is expected."""
    with pytest.raises(pytest.UsageError, match=message):
        Options().for_test(marker.mark)


def test_the_report_header_shows_the_settings_as_written() -> None:
    """The header line shows the rate as the user wrote it, and never the key."""
    options = Options(rate="30/min", burst=5, api_key="bm_" + "k" * 40)
    assert options.report() == "bm_ingest: strict=True, rate=30/min burst=5, api key fixed"
