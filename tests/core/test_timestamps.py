from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bmcore
from bmcore import TimestampError, format_timestamp, parse_timestamp
from bmcore._timestamps import reference_parse_timestamp


def _zone(hours: int, minutes: int = 0) -> timezone:
    sign = -1 if hours < 0 else 1
    return timezone(sign * timedelta(hours=abs(hours), minutes=minutes))


# --- examples ------------------------------------------------------------------------------

_VALID_EXAMPLES: list[tuple[str, datetime]] = [
    ("2024-06-04T14:00:00Z", datetime(2024, 6, 4, 14, tzinfo=UTC)),
    ("2024-06-04T14:00:00z", datetime(2024, 6, 4, 14, tzinfo=UTC)),
    ("2024-06-04t14:00:00z", datetime(2024, 6, 4, 14, tzinfo=UTC)),
    ("2024-06-04T14:00:00+02:00", datetime(2024, 6, 4, 14, tzinfo=_zone(2))),
    ("2024-06-04T14:00:00-05:30", datetime(2024, 6, 4, 14, tzinfo=_zone(-5, 30))),
    ("2024-06-04T14:00:00+0200", datetime(2024, 6, 4, 14, tzinfo=_zone(2))),
    ("2024-06-04T14:00:00-0530", datetime(2024, 6, 4, 14, tzinfo=_zone(-5, 30))),
    ("2024-06-04T14:00:00+02", datetime(2024, 6, 4, 14, tzinfo=_zone(2))),
    ("2024-06-04T14:00:00+23:59", datetime(2024, 6, 4, 14, tzinfo=_zone(23, 59))),
    ("2024-06-04T14:00:00.5Z", datetime(2024, 6, 4, 14, 0, 0, 500000, tzinfo=UTC)),
    ("2024-06-04T14:00:00,5Z", datetime(2024, 6, 4, 14, 0, 0, 500000, tzinfo=UTC)),
    ("2024-06-04T14:00:00,25+02:00", datetime(2024, 6, 4, 14, 0, 0, 250000, tzinfo=_zone(2))),
    ("2024-06-04T14:00:00.123456Z", datetime(2024, 6, 4, 14, 0, 0, 123456, tzinfo=UTC)),
    ("2024-06-04T14:00:00.1234567Z", datetime(2024, 6, 4, 14, 0, 0, 123456, tzinfo=UTC)),
    ("2024-06-04T14:00:00.123456789Z", datetime(2024, 6, 4, 14, 0, 0, 123456, tzinfo=UTC)),
    # Truncated, not rounded: .9999999 stays within the same second.
    ("2024-06-04T14:00:00.999999999Z", datetime(2024, 6, 4, 14, 0, 0, 999999, tzinfo=UTC)),
    ("2024-06-04T24:00:00Z", datetime(2024, 6, 5, 0, tzinfo=UTC)),
    ("2024-12-31T24:00:00+02:00", datetime(2025, 1, 1, 0, tzinfo=_zone(2))),
    ("2024-156T14:00:00Z", datetime(2024, 6, 4, 14, tzinfo=UTC)),
    ("2024-W23-2T14:00:00Z", datetime(2024, 6, 4, 14, tzinfo=UTC)),
    ("20240604T140000Z", datetime(2024, 6, 4, 14, tzinfo=UTC)),
    ("2024-06-04 14:00:00+02:00", datetime(2024, 6, 4, 14, tzinfo=_zone(2))),
    ("2024-06-04T14:00Z", datetime(2024, 6, 4, 14, tzinfo=UTC)),
]


@pytest.mark.parametrize(("text", "expected"), _VALID_EXAMPLES)
def test_parses_valid_examples(text: str, expected: datetime) -> None:
    """Each supported ISO 8601 shape gives the right instant with the offset that was sent."""
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()
    assert parsed.replace(tzinfo=None) == expected.replace(tzinfo=None)
    assert type(parsed.tzinfo) is timezone


@pytest.mark.parametrize(
    "text", ["2024-06-04T14:00:00+00:00", "2024-06-04T14:00:00-00:00", "2024-06-04T14:00:00-0000"]
)
def test_zero_offsets_give_utc(text: str) -> None:
    """+00:00 and -00:00 both give a UTC timezone."""
    parsed = parse_timestamp(text)
    assert parsed.tzinfo == UTC
    assert type(parsed.tzinfo) is timezone
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("2024-13-04T12:00:00", "invalid_timestamp"),  # the naive shape, but no such month
        ("2024-06-04T24:00:00", "missing_utc_offset"),  # fromisoformat refuses 24:00, dateutil not
    ],
)
def test_the_naive_shape_that_fromisoformat_refuses_goes_to_the_reference(
    text: str, code: str
) -> None:
    """The naive fast path answers only for valid times; the reference decides the rest."""
    with pytest.raises(TimestampError) as caught:
        parse_timestamp(text)
    assert caught.value.code == code


@pytest.mark.parametrize(
    "text", ["2024-06-04T14:00:00", "2024-06-04 14:00:00.5", "2024-06-04T14:00", "20240604T1400"]
)
def test_naive_time_is_missing_utc_offset_with_a_fix(text: str) -> None:
    """A time without an offset is missing_utc_offset, and the message suggests Z and +02:00."""
    with pytest.raises(TimestampError) as caught:
        parse_timestamp(text)
    assert caught.value.code == "missing_utc_offset"
    assert "Z" in caught.value.message
    assert "+02:00" in caught.value.message
    assert str(caught.value) == caught.value.message


@pytest.mark.parametrize("text", ["2024-06-04", "20240604", "2024-W23-2", "2024-156"])
def test_date_only_is_missing_utc_offset(text: str) -> None:
    """A bare date is missing_utc_offset too, with an example of a full timestamp."""
    with pytest.raises(TimestampError) as caught:
        parse_timestamp(text)
    assert caught.value.code == "missing_utc_offset"
    assert "+02:00" in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "",
        "2024-13-04T14:00:00Z",
        "2024-02-30T14:00:00Z",
        "2024-06-04T14:00:60Z",
        "2024-06-04T25:00:00Z",
        "2024-06-04T24:00:01Z",
        "2024-06-04T14:00:00+24:00",
        "2024-06-04T14:00:00+02:60",
        "2024-06-04T14:00:00+02:00:30",
        "2024-06-04T14:00:00\u00e9",
        "2024-06-0\u0663T14:00:00Z",
        "\uff12\uff10\uff12\uff14-06-04T14:00:00Z",
        "2024-06-04T14:00:00\u00a0Z",
        "9999-12-31T24:00:00Z",
        "0000-01-01T00:00:00Z",
    ],
)
def test_invalid_strings_are_invalid_timestamp(text: str) -> None:
    """Garbage, out-of-range fields, bad offsets and non-ASCII text are invalid_timestamp."""
    with pytest.raises(TimestampError) as caught:
        parse_timestamp(text)
    assert caught.value.code == "invalid_timestamp"
    assert "Z" in caught.value.message


def test_timestamp_error_is_a_value_error_and_a_bm_error() -> None:
    """Callers may catch a TimestampError as ValueError or as bmcore.BmError."""
    assert issubclass(TimestampError, ValueError)
    assert issubclass(TimestampError, bmcore.BmError)
    with pytest.raises(bmcore.BmError):
        parse_timestamp("garbage")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_timestamp("garbage")


# Strings that datetime.fromisoformat accepts (or reads as another instant) but the reference
# refuses: each is a case the fast path's guard must send to the reference parser.
_FAST_PATH_TRAPS = [
    "2024-06-04T14:00:00.Z",
    "2024-06-04T14:00:00+00:60",
    "2024-06-04T14:00:00,+02:00",
    "2024-06-04T14:30.5Z",
    "2024-06-04T14,5Z",
    "2024-06-04T1430.5+02:00",
    "2024-06-04T14:00:001Z",
    "2024-06-04T141Z",
    "2024-06-04T14:00:00.123456 1Z",
    "2024-06-04T14:00:00+02:75",
    "2024-06-04T14:00:00.5-02:60",
]


@pytest.mark.parametrize("text", _FAST_PATH_TRAPS)
def test_fast_path_guard_refuses_what_only_fromisoformat_accepts(text: str) -> None:
    """Shapes that fromisoformat accepts but dateutil refuses are invalid_timestamp."""
    with pytest.raises(TimestampError) as caught:
        parse_timestamp(text)
    assert caught.value.code == "invalid_timestamp"


# --- the differential property: fast path == reference -------------------------------------


def _outcome(
    parse: Callable[[str], datetime], text: str
) -> tuple[str, str] | tuple[str, datetime, timedelta | None]:
    try:
        parsed = parse(text)
    except TimestampError as error:
        return ("error", error.code)
    assert type(parsed.tzinfo) is timezone, f"{parse.__name__}({text!r}) -> {parsed.tzinfo!r}"
    return ("ok", parsed, parsed.utcoffset())


def _assert_agree(text: str) -> None:
    fast = _outcome(parse_timestamp, text)
    reference = _outcome(reference_parse_timestamp, text)
    assert fast == reference, f"{text!r}: parse_timestamp -> {fast}, reference -> {reference}"


_DIGITS = "0123456789"


@st.composite
def _field(draw: st.DrawFn, low: int, high: int, odd_high: int, width: int = 2) -> str:
    """A numeric field: in range most of the time, sometimes out of range or any digits."""
    roll = draw(st.integers(0, 11))
    if roll == 7:
        return draw(st.integers(0, odd_high).map(f"{{:0{width}}}".format))
    if roll == 8:
        return draw(st.text(_DIGITS, min_size=width, max_size=width))
    return draw(st.integers(low, high).map(f"{{:0{width}}}".format))


@st.composite
def _iso_like(draw: st.DrawFn) -> str:
    """ISO-like strings, weighted towards the fast path's shape and its edges."""
    year = draw(_field(1, 9999, 9999, width=4))
    month, day = draw(_field(1, 12, 99)), draw(_field(1, 28, 99))
    week, weekday = draw(_field(1, 52, 99)), draw(_field(1, 7, 9, width=1))
    ordinal = draw(_field(1, 365, 999, width=3))
    date = draw(
        st.sampled_from(
            [
                f"{year}-{month}-{day}",
                f"{year}-{month}-{day}",
                f"{year}-{month}-{day}",
                f"{year}-{month}-{day}",
                f"{year}{month}{day}",
                f"{year}-{ordinal}",
                f"{year}-W{week}-{weekday}",
                f"{year}-W{week}-{weekday}",
                f"{year}W{week}{weekday}",
            ]
        )
    )
    separator = draw(st.sampled_from(["T", "T", "T", "T", "T", "T", "t", " "]))
    hour, minute, second = draw(_field(0, 23, 99)), draw(_field(0, 59, 99)), draw(_field(0, 59, 99))
    clock = draw(
        st.sampled_from(
            [
                f"{hour}:{minute}:{second}",
                f"{hour}:{minute}:{second}",
                f"{hour}:{minute}",
                f"{hour}",
                f"{hour}{minute}{second}",
                f"{hour}{minute}",
            ]
        )
    )
    fraction = ""
    if draw(st.booleans()):
        fraction = draw(st.sampled_from(".,")) + draw(st.text(_DIGITS, max_size=8))
    sign = draw(st.sampled_from("+-"))
    tz_hours, tz_minutes = draw(_field(0, 23, 99)), draw(_field(0, 59, 99))
    zone = draw(
        st.sampled_from(
            [
                "Z",
                "Z",
                "Z",
                "z",
                f"{sign}{tz_hours}:{tz_minutes}",
                f"{sign}{tz_hours}:{tz_minutes}",
                f"{sign}{tz_hours}:{tz_minutes}",
                f"{sign}{tz_hours}{tz_minutes}",
                f"{sign}{tz_hours}",
                "",
            ]
        )
    )
    return f"{date}{separator}{clock}{fraction}{zone}"


_MUTATION_ALPHABET = "0123456789-:T tZz+.,W\u00e9\u0663"


@st.composite
def _mutated_iso_like(draw: st.DrawFn) -> str:
    """An ISO-like string with a few characters inserted, replaced or deleted."""
    text = draw(_iso_like())
    edits = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["insert", "replace", "delete"]),
                st.integers(0, 40),
                st.sampled_from(_MUTATION_ALPHABET),
            ),
            min_size=1,
            max_size=4,
        )
    )
    for kind, position, char in edits:
        index = position % (len(text) + 1)
        if kind == "insert":
            text = text[:index] + char + text[index:]
        elif kind == "replace":
            text = text[:index] + char + text[index + 1 :]
        else:
            text = text[:index] + text[index + 1 :]
    return text


# The key property gets at least 500 examples: the fast path's mistakes are rare.
_DIFFERENTIAL = settings(max_examples=max(500, settings().max_examples))


@_DIFFERENTIAL
@given(_iso_like())
@example("2024-06-04T14:00:00.Z")
@example("2024-06-04T14:00:00+00:60")
@example("2024-06-04T24:00:00Z")
@example("2024-06-04T14:30.5Z")
@example("2024-06-04T14:00:001Z")
def test_fast_path_agrees_with_reference_on_iso_like_strings(text: str) -> None:
    """parse_timestamp and the dateutil reference agree on ISO-like strings, valid or not."""
    _assert_agree(text)


@_DIFFERENTIAL
@given(_mutated_iso_like())
@example("2024-06-04T14,5Z")
@example("2024-06-04T14:00:00.123456 1Z")
def test_fast_path_agrees_with_reference_on_mutated_strings(text: str) -> None:
    """parse_timestamp and the reference agree on near-misses of the ISO-like shapes."""
    _assert_agree(text)


@_DIFFERENTIAL
@given(st.text())
def test_fast_path_agrees_with_reference_on_any_text(text: str) -> None:
    """parse_timestamp and the reference agree on arbitrary text (and raise only TimestampError)."""
    _assert_agree(text)


# --- format_timestamp ----------------------------------------------------------------------

_WHOLE_MINUTE_ZONES = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(st.datetimes(timezones=_WHOLE_MINUTE_ZONES))
def test_format_then_parse_round_trips(moment: datetime) -> None:
    """parse_timestamp(format_timestamp(dt)) is dt, with its offset, for years 1 to 9999."""
    parsed = parse_timestamp(format_timestamp(moment))
    assert parsed == moment
    assert parsed.utcoffset() == moment.utcoffset()
    assert parsed.replace(tzinfo=None) == moment.replace(tzinfo=None)


def test_format_keeps_the_original_offset() -> None:
    """format_timestamp writes the datetime's own offset, not UTC."""
    moment = datetime(2024, 6, 4, 14, 0, 0, 500000, tzinfo=_zone(-5, 30))
    assert format_timestamp(moment) == "2024-06-04T14:00:00.500000-05:30"


def test_format_rejects_a_naive_datetime() -> None:
    """format_timestamp refuses a datetime without a UTC offset."""
    with pytest.raises(ValueError, match="UTC offset"):
        format_timestamp(datetime(2024, 6, 4, 14, 0))  # noqa: DTZ001 - naive on purpose
