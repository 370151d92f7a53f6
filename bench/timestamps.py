"""2. Timestamps: bmcore.parse_timestamp beside ciso8601, datetime.fromisoformat and isoparse.

Each parser reads the same timestamps, in the forms backup scripts send. ciso8601 is a C
parser and the speed bound; fromisoformat is C too but accepts a different language (see
bmcore/_timestamps.py), and dateutil's isoparse is the pure-Python reference semantics.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

import ciso8601
from dateutil.parser import isoparse

from bench._report import Figure, Goal, per_call
from bmcore import parse_timestamp

NAME: Final = "2. Timestamps"

#: The forms scripts send: Z and an offset, whole seconds and fractions.
FORMS: Final = {
    "Z": "2024-06-04T12:00:00Z",
    "+02:00": "2024-06-04T14:00:00+02:00",
    "fraction, Z": "2024-06-04T12:00:00.123456Z",
    "fraction, -05:00": "2024-06-04T07:00:00.123-05:00",
}

_PARSERS: Final[dict[str, Callable[[str], datetime]]] = {
    "bmcore": parse_timestamp,
    "ciso8601": ciso8601.parse_datetime,
    "fromisoformat": datetime.fromisoformat,
    "isoparse": isoparse,
}
#: At most four times ciso8601's time ...
AGAINST_CISO8601: Final = Goal(on="ratio", bound="at most", limit=4.0)
#: ... and at least ten times faster than isoparse.
AGAINST_ISOPARSE: Final = Goal(on="ratio", bound="at most", limit=0.1)


def _check_agreement() -> None:
    """Time only parsers that agree on what these timestamps mean."""
    for text in FORMS.values():
        moments = {name: parse(text) for name, parse in _PARSERS.items()}
        if len(set(moments.values())) != 1 or any(m.utcoffset() is None for m in moments.values()):
            msg = f"the parsers disagree on {text!r}: {moments}"
            raise AssertionError(msg)


def _nanoseconds(parse: Callable[[str], datetime], text: str, *, smoke: bool) -> float:
    return per_call(parse, text, smoke=smoke) * 1e9


def run(*, smoke: bool) -> list[Figure]:
    """Nanoseconds per timestamp for each form, and the mean over the forms."""
    _check_agreement()
    times = {
        form: {name: _nanoseconds(parse, text, smoke=smoke) for name, parse in _PARSERS.items()}
        for form, text in FORMS.items()
    }
    figures: list[Figure] = []
    for form, by_parser in times.items():
        figures.append(
            Figure(
                NAME,
                f"parse_timestamp, {form}",
                by_parser["bmcore"],
                "ns",
                "ciso8601",
                by_parser["ciso8601"],
                AGAINST_CISO8601,
            )
        )
    mean = {name: sum(t[name] for t in times.values()) / len(times) for name in _PARSERS}
    label = f"parse_timestamp, mean of {len(times)} forms"
    figures.extend(
        [
            Figure(
                NAME, label, mean["bmcore"], "ns", "ciso8601", mean["ciso8601"], AGAINST_CISO8601
            ),
            Figure(NAME, label, mean["bmcore"], "ns", "fromisoformat", mean["fromisoformat"]),
            Figure(
                NAME, label, mean["bmcore"], "ns", "isoparse", mean["isoparse"], AGAINST_ISOPARSE
            ),
        ]
    )
    return figures
