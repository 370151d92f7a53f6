"""Schedules: what users type, read and written back; cron across daylight saving time."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmcore import PayloadError, Schedule, format_duration, parse_duration, parse_schedule

BERLIN_DAILY = {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "grace": "1h"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("90m", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(minutes=90)),
        (" 45S ", timedelta(seconds=45)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_durations_as_users_type_them(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "-1h", "1w", "1h 30m", "1h1h", "1e3s"])
def test_what_is_not_a_duration_is_refused_with_the_units_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"s, m, h|each of d, h, m and s"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("duration", "text"),
    [(timedelta(hours=24), "1d"), (timedelta(minutes=90), "90m"), (timedelta(days=7), "7d")],
)
def test_durations_are_written_in_the_largest_unit_that_divides_them(
    duration: timedelta, text: str
) -> None:
    assert format_duration(duration) == text


@given(st.integers(min_value=1, max_value=10 * 366 * 86400))
def test_a_duration_reads_back_as_written(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    text = format_duration(duration)
    assert parse_duration(text) == duration
    assert format_duration(parse_duration(text)) == text  # canonical: a fixed point


schedules = st.one_of(
    st.builds(
        Schedule,
        every=st.integers(min_value=60, max_value=366 * 86400).map(lambda s: timedelta(seconds=s)),
        grace=st.integers(min_value=1, max_value=366 * 86400).map(lambda s: timedelta(seconds=s)),
    ),
    st.builds(
        Schedule,
        cron=st.sampled_from(
            ["30 2 * * *", "0 */6 * * *", "15 3 * * 1-5", "0 0 1 * *", "*/5 * * * *"]
        ),
        timezone=st.sampled_from(
            ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]
        ),
        grace=st.integers(min_value=1, max_value=86400).map(lambda s: timedelta(seconds=s)),
    ),
)


@given(schedules)
def test_a_schedule_reads_back_from_its_wire_form(schedule: Schedule) -> None:
    assert parse_schedule(schedule.to_wire()) == schedule


def test_the_wire_forms_in_the_readme() -> None:
    assert parse_schedule({"every": "24h", "grace": "1h"}).to_wire() == {
        "every": "1d",
        "grace": "1h",
    }
    assert parse_schedule(BERLIN_DAILY).to_wire() == BERLIN_DAILY
    # A cron schedule without a zone is read in UTC; spaces are normalised.
    assert parse_schedule({"cron": " 0  2 * * * ", "grace": "2h"}).to_wire() == {
        "cron": "0 2 * * *",
        "timezone": "UTC",
        "grace": "2h",
    }


def _errors(fields: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(PayloadError) as caught:
        parse_schedule(fields)
    return [(error.field, error.code) for error in caught.value.errors]


@pytest.mark.parametrize(
    ("cron", "field_name"),
    [
        ("61 2 * * *", "minute"),
        ("0 25 * * *", "hour"),
        ("0 2 32 * *", "day-of-month"),
        ("0 2 * 13 *", "month"),
        ("0 2 * * funday", "day-of-week"),
    ],
)
def test_a_bad_cron_field_is_named(cron: str, field_name: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_schedule({"cron": cron, "grace": "1h"})
    (error,) = caught.value.errors
    assert (error.field, error.code) == ("/cron", "bad_cron_field")
    assert f"the {field_name} field" in error.message


def test_a_cron_expression_has_a_length_limit() -> None:
    flood = "1," * 150 + "1 * * * *"
    assert _errors({"cron": flood, "grace": "1h"}) == [("/cron", "too_long")]


def test_a_cron_expression_needs_five_fields() -> None:
    assert _errors({"cron": "0 2 * *", "grace": "1h"}) == [("/cron", "cron_field_count")]
    # Six fields (cronsim's seconds) are not crontab's, so not accepted either.
    assert _errors({"cron": "0 0 2 * * *", "grace": "1h"}) == [("/cron", "cron_field_count")]


def test_a_cron_expression_that_can_never_fire_is_refused() -> None:
    assert _errors({"cron": "0 0 31 2 *", "grace": "1h"}) == [("/cron", "bad_cron")]


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "", "Europe\\Berlin"]
)
def test_an_unknown_zone_is_refused(zone: str) -> None:
    assert _errors({"cron": "0 2 * * *", "timezone": zone, "grace": "1h"}) == [
        ("/timezone", "unknown_timezone")
    ]


@pytest.mark.parametrize(
    ("grace", "code"), [("0s", "not_positive"), ("0h", "not_positive"), ("367d", "too_long")]
)
def test_a_grace_that_is_not_a_positive_duration_is_refused(grace: str, code: str) -> None:
    assert _errors({"every": "1d", "grace": grace}) == [("/grace", code)]


def test_every_error_is_listed_and_named() -> None:
    assert _errors({"every": "soon", "grace": 5, "colour": "red"}) == [
        ("/colour", "unknown_field"),
        ("/every", "invalid_duration"),
        ("/grace", "wrong_type"),
    ]
    assert _errors({"every": "1d"}) == [("/grace", "missing")]
    assert _errors({"every": "1d", "grace": None}) == [("/grace", "missing")]
    assert _errors({"grace": "1h"}) == [("", "schedule_kind")]
    assert _errors({"every": "1d", "cron": "0 2 * * *", "grace": "1h"}) == [("", "schedule_kind")]
    assert _errors({"every": "30s", "grace": "1h"}) == [("/every", "too_short")]
    assert _errors({"every": "1d", "timezone": "Europe/Berlin", "grace": "1h"}) == [
        ("/timezone", "timezone_without_cron")
    ]


def test_an_interval_is_due_one_period_after_the_report() -> None:
    ran = datetime(2026, 12, 1, 2, 7, tzinfo=UTC)
    assert parse_schedule({"every": "24h", "grace": "1h"}).next_due(ran) == ran + timedelta(days=1)


def test_cron_is_due_at_the_next_firing_in_its_zone() -> None:
    schedule = parse_schedule(BERLIN_DAILY)
    # 02:30 in Berlin is 01:30Z in winter.
    ran = datetime(2026, 12, 1, 1, 31, tzinfo=UTC)
    assert schedule.next_due(ran) == datetime(2026, 12, 2, 1, 30, tzinfo=UTC)


def test_a_report_shortly_before_a_firing_counts_for_it() -> None:
    schedule = parse_schedule(BERLIN_DAILY)
    firing = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    # Started a minute early (a skewed clock): not due again a minute later.
    assert schedule.next_due(firing - timedelta(minutes=1)) == firing + timedelta(days=1)
    # Hours before, it is an extra run: the firing still stands.
    assert schedule.next_due(firing - timedelta(hours=3)) == firing


def test_the_early_window_is_capped_by_grace_and_by_half_the_gap() -> None:
    every_five = parse_schedule({"cron": "*/5 * * * *", "grace": "1h"})
    firing = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    # Half the 5-minute gap (less a second) counts as early; more does not.
    assert every_five.next_due(firing - timedelta(minutes=2)) == firing + timedelta(minutes=5)
    assert every_five.next_due(firing - timedelta(minutes=3)) == firing
    tight = parse_schedule({"cron": "30 2 * * *", "grace": "30s", "timezone": "UTC"})
    at_0230 = datetime(2026, 12, 2, 2, 30, tzinfo=UTC)
    assert tight.next_due(at_0230 - timedelta(seconds=30)) == at_0230 + timedelta(days=1)
    assert tight.next_due(at_0230 - timedelta(seconds=31)) == at_0230


def test_cron_across_the_spring_forward_change_fires_right_after_it() -> None:
    # 2026-03-29: Berlin skips 02:00-03:00 local. Debian cron runs 02:30 jobs at 03:00 CEST.
    schedule = parse_schedule(BERLIN_DAILY)
    saturday_run = datetime(2026, 3, 28, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert schedule.next_due(saturday_run) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert schedule.next_due(datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == datetime(
        2026, 3, 30, 0, 30, tzinfo=UTC
    )


def test_cron_across_the_fall_back_change_fires_once() -> None:
    # 2026-10-25: Berlin has 02:00-03:00 twice. The job runs once, at the first 02:30 (CEST).
    schedule = parse_schedule(BERLIN_DAILY)
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert schedule.next_due(datetime(2026, 10, 24, 0, 30, tzinfo=UTC)) == first
    assert schedule.next_due(first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_a_leap_day_schedule_waits_for_the_next_leap_day() -> None:
    schedule = parse_schedule({"cron": "0 0 29 2 *", "grace": "1h"})
    assert schedule.next_due(datetime(2028, 3, 1, tzinfo=UTC)) == datetime(2032, 2, 29, tzinfo=UTC)


def test_next_due_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_schedule({"every": "1d", "grace": "1h"}).next_due(datetime(2026, 1, 1))  # noqa: DTZ001


@given(
    schedules,
    st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
        max_value=datetime(2090, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
)
def test_the_next_due_time_is_after_the_report(schedule: Schedule, ran: datetime) -> None:
    due = schedule.next_due(ran)
    assert due is None or due > ran


def test_a_duration_too_long_for_any_schedule_is_refused_before_it_overflows() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_duration("9999999999d")


_ANY_VALUE = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\s*(\d{1,10}[dhmsDHMS])+\s*", fullmatch=True),
    st.integers(),
    st.none(),
    st.sampled_from(["Europe/", "Europe", "/", "", "0 2 * * *", "L * * * *", "0 0 * * 1#6"]),
)


@given(st.dictionaries(st.sampled_from(["every", "cron", "timezone", "grace", "x"]), _ANY_VALUE))
def test_any_wire_form_is_a_schedule_or_a_payload_error(fields: dict[str, object]) -> None:
    """What a client sends never raises anything else (a server would answer 500)."""
    outcome = _parsed(fields)
    if isinstance(outcome, PayloadError):
        named = [e for e in outcome.errors if e.code != "schedule_kind"]
        assert all(e.field and e.code and e.message for e in named)
        return
    schedule = outcome
    assert parse_schedule(schedule.to_wire()) == schedule
    due = schedule.next_due(datetime(2026, 1, 1, tzinfo=UTC))
    assert due is None or due > datetime(2026, 1, 1, tzinfo=UTC)


def _parsed(fields: dict[str, object]) -> Schedule | PayloadError:
    try:
        return parse_schedule(fields)
    except PayloadError as error:
        return error
