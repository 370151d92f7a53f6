"""ISO 8601 timestamps with a mandatory UTC offset, and the time policy for entries.

The reference semantics is python-dateutil's ``isoparse`` (default settings) with one extra
rule: the result must carry a UTC offset. ``datetime.fromisoformat`` is about fifty times
faster but accepts a different language (no lowercase ``z``, no ordinal dates, no ``24:00``
before 3.14, non-ASCII separators, offsets with seconds, ...). So the fast path only takes the
shapes people actually send, ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)``, and everything else
goes to the reference parser. ``tests/core/test_timestamps.py`` checks with hypothesis that the
two agree on valid and invalid strings alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from dateutil.parser import isoparse

from bmcore._errors import TimestampError

__all__ = [
    "CLOCK_SKEW_TOLERANCE",
    "EARLIEST_TIMESTAMP",
    "MAX_FUTURE",
    "format_timestamp",
    "parse_timestamp",
]

#: Entries dated before this instant are refused (``timestamp_too_old``).
EARLIEST_TIMESTAMP: Final = datetime(2000, 1, 1, tzinfo=UTC)
#: Entries dated further than this ahead of ``now`` are refused (``timestamp_in_future``).
MAX_FUTURE: Final = timedelta(hours=24)
#: Entries dated further than this ahead of ``now`` are accepted with warning ``clock_skew``.
CLOCK_SKEW_TOLERANCE: Final = timedelta(minutes=5)

_fromisoformat = datetime.fromisoformat

# What ``text[4::3]`` reads from the shapes the fast path takes: the separators of
# YYYY-MM-DDTHH:MM:SS sit at positions 4, 7, 10, 13 and 16, and the offset's sign and colon at
# 19 and 22, so one slice checks them all at once.
_WHOLE_SECONDS: Final = frozenset({"--T::Z", "--T::+:", "--T::-:"})
_FRACTION: Final = frozenset({"--T::.", "--T::,"})
_NAIVE: Final = "--T::"
_NAIVE_LENGTH: Final = len("YYYY-MM-DDTHH:MM:SS")
_Z_LENGTH: Final = len("YYYY-MM-DDTHH:MM:SSZ")
_OFFSET_LENGTH: Final = len("YYYY-MM-DDTHH:MM:SS+HH:MM")
_FRACTION_START: Final = len("YYYY-MM-DDTHH:MM:SS.")
_SIGNS: Final = frozenset("+-")


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp that must carry a UTC offset.

    Returns an aware datetime whose ``tzinfo`` is a fixed :class:`datetime.timezone` equal to
    the offset that was sent. Raises :class:`TimestampError` with code ``missing_utc_offset``
    for a local time without an offset, ``invalid_timestamp`` for anything else.

    >>> parse_timestamp("2024-06-04T14:00:00+02:00").isoformat()
    '2024-06-04T14:00:00+02:00'
    >>> parse_timestamp("2024-06-04T12:00:00Z").isoformat()
    '2024-06-04T12:00:00+00:00'
    """
    # The fast path takes exactly YYYY-MM-DDTHH:MM:SS[.digits](Z|±HH:MM), checked by the
    # separators at fixed positions; fromisoformat then checks the digits (ASCII only). The
    # offset's minutes are checked here because fromisoformat reads +02:75 as +03:15. Anything
    # else, including what fromisoformat would read differently, takes the reference parser.
    shape = text[4::3]
    if shape in _WHOLE_SECONDS:
        length = len(text)
        fast = length == _Z_LENGTH or (length == _OFFSET_LENGTH and text[23] < "6")
    elif shape[:6] in _FRACTION:
        # The fraction's digits run from position 20 to the Z or the ±HH:MM at the end; they
        # are checked here because fromisoformat skips what follows the sixth digit.
        if text[-1] == "Z":
            digits = text[_FRACTION_START:-1]
        elif text[-3] == ":" and text[-6] in _SIGNS and text[-2] < "6":
            digits = text[_FRACTION_START:-6]
        else:
            digits = ""
        fast = digits.isdigit() and digits.isascii()
    elif shape == _NAIVE and len(text) == _NAIVE_LENGTH:
        # A local time without an offset, the commonest mistake: refused without the reference
        # parser, once fromisoformat has found it a valid time.
        try:
            _fromisoformat(text)
        except ValueError:
            pass
        else:
            raise TimestampError("missing_utc_offset", _naive_message(text))
        fast = False
    else:
        fast = False
    if fast:
        try:
            return _fromisoformat(text)
        except ValueError:
            pass
    return reference_parse_timestamp(text)


def reference_parse_timestamp(text: str) -> datetime:
    """Parse with python-dateutil's ISO 8601 parser, the reference semantics; slow but exact."""
    try:
        parsed = isoparse(text)
    except (ValueError, OverflowError) as error:
        raise TimestampError("invalid_timestamp", _invalid_message(text, error)) from None
    offset = parsed.utcoffset()
    if offset is None:
        raise TimestampError("missing_utc_offset", _naive_message(text))
    return parsed.replace(tzinfo=_fixed_zone(offset))


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as ISO 8601 with its own offset (the inverse of parse_timestamp).

    >>> format_timestamp(parse_timestamp("2024-06-04T14:00:00.5+02:00"))
    '2024-06-04T14:00:00.500000+02:00'
    """
    if moment.utcoffset() is None:
        msg = (
            f"cannot format {moment!r}: it has no UTC offset; attach one with .replace(tzinfo=...)"
        )
        raise ValueError(msg)
    return moment.isoformat()


def _fixed_zone(offset: timedelta) -> timezone:
    return UTC if not offset else timezone(offset)


_EXAMPLE: Final = "2024-06-04T14:00:00+02:00 or 2024-06-04T12:00:00Z"


def _naive_message(text: str) -> str:
    if len(text) <= 10 or "W" in text[4:9]:
        return (
            f"'{text}' is a date without a time and UTC offset; send a full timestamp such as "
            f"{_EXAMPLE}"
        )
    return (
        f"'{text}' has no UTC offset; append Z for UTC or an offset such as +02:00, "
        f"e.g. '{text}Z' or '{text}+02:00'"
    )


def _invalid_message(text: str, error: Exception) -> str:
    shown = text if len(text) <= 64 else text[:61] + "..."
    return (
        f"'{shown}' is not an ISO 8601 timestamp ({error}); send one with a UTC offset such as "
        f"{_EXAMPLE}"
    )
