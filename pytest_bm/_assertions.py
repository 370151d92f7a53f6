"""Assertion helpers and their failure messages: what did arrive, field by field.

A failing ``assert_backup`` lists the backups that arrived, closest match first (the most
matching fields), each field marked ✓ or ✗ with the expected value, then the requests to the
same endpoint that stored nothing, with their problem. Every text shown here has the fake's
API keys replaced by their display prefix.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar, cast

import attrs

import bmcore
from pytest_bm._records import (
    BACKUP_PATH,
    NOTIFICATION_PATH,
    ReceivedBackup,
    ReceivedNotification,
    RecordedRequest,
    redact_key,
)

__all__ = [
    "BACKUP_FIELDS",
    "NOTIFICATION_FIELDS",
    "describe_requests",
    "find_match",
    "redact",
    "rejection_report",
    "wait_failure",
]

R = TypeVar("R", ReceivedBackup, ReceivedNotification)

#: Candidates shown in a failure message; the rest are counted.
MAX_SHOWN: Final = 10
_SHORT: Final = 40
_BODY_SHOWN: Final = 200


def redact(text: str, keys: Iterable[str]) -> str:
    """``text`` with every one of ``keys`` replaced by its display prefix and "…"."""
    for key in keys:
        text = text.replace(key, redact_key(key))
    return text


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@attrs.frozen
class Shown:
    """How a failure message shows values, with the fake's keys hidden.

    Keys are replaced before a long value is cut short: a cut could otherwise leave more of
    a key than its display prefix, where no later replacement would find it.
    """

    keys: tuple[str, ...]

    def text(self, text: str, limit: int = _SHORT) -> str:
        """Text with keys hidden, cut to ``limit`` characters."""
        return _short(redact(text, self.keys), limit)

    def value(self, value: object) -> str:
        """A field value: quoted, short, timestamps in ISO 8601, enums by their value."""
        if isinstance(value, datetime):
            return repr(bmcore.format_timestamp(value))
        if isinstance(value, enum.Enum):
            return repr(value.value)
        if isinstance(value, str):
            return repr(self.text(value))
        return self.text(repr(value))

    def body(self, data: bytes) -> str:
        """A request body: as text if it is UTF-8, else as bytes."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return self.text(repr(data), _BODY_SHOWN)
        return repr(self.text(text, _BODY_SHOWN))


def _as_is(value: object) -> object:
    return value


def _timestamp(value: object) -> object:
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"timestamp={value!r} is naive; give an aware datetime")
        return value
    if isinstance(value, str):
        try:
            return bmcore.parse_timestamp(value)
        except bmcore.TimestampError as error:
            raise ValueError(f"timestamp={value!r} is not a timestamp: {error}") from None
    raise TypeError(f"timestamp must be a datetime or an ISO 8601 string, got {value!r}")


def _enum(kind: type[enum.Enum], name: str) -> Callable[[object], object]:
    values = {str(member.value).casefold(): member for member in kind}

    def normalize(value: object) -> object:
        if isinstance(value, kind):
            return value
        if isinstance(value, str) and value.strip().casefold() in values:
            return values[value.strip().casefold()]
        allowed = ", ".join(repr(member.value) for member in kind)
        raise ValueError(f"{name}={value!r} is not one of {allowed}")

    return normalize


@attrs.frozen
class _Field:
    """One field an assertion may name: its attribute, wire name and how to compare it."""

    name: str
    wire: str | None = None
    normalize: Callable[[object], object] = _as_is


_COMMON: Final = (
    _Field("device_name", "deviceName"),
    _Field("job_name", "jobName"),
    _Field("timestamp", "timestamp", _timestamp),
)
#: The fields ``assert_backup`` accepts, in the order a failure message shows them.
BACKUP_FIELDS: Final = (
    *_COMMON,
    _Field("status", "status"),
    _Field("message", "message"),
    _Field("sender", "sender"),
    _Field("outcome", None, _enum(bmcore.Outcome, "outcome")),
)
#: The fields ``assert_notification`` accepts, in the order a failure message shows them.
NOTIFICATION_FIELDS: Final = (
    *_COMMON,
    _Field("severity", "severity", _enum(bmcore.Severity, "severity")),
    _Field("type", "type"),
    _Field("message", "message"),
    _Field("sender", "sender"),
)
# Shown for every candidate when not asked for: outcome only repeats the status.
_UNSHOWN: Final = frozenset({"outcome"})


def _expected(fields: Sequence[_Field], given: Mapping[str, object]) -> dict[str, object]:
    """The asked-for values by attribute name, normalized; TypeError for an unknown name."""
    by_name = {field.name: field for field in fields}
    by_name.update({field.wire: field for field in fields if field.wire})
    expected: dict[str, object] = {}
    for name, value in given.items():
        field = by_name.get(name)
        if field is None:
            known = ", ".join(field.name for field in fields)
            raise TypeError(f"unknown field {name!r}; the fields are {known} (or their wire names)")
        if field.name in expected:
            raise TypeError(f"{field.name} is given twice (as {field.name} and {field.wire})")
        expected[field.name] = field.normalize(value)
    return expected


@attrs.frozen
class Matcher(Generic[R]):
    """Matching records of one kind against asked-for field values."""

    kind: str
    path: str
    fields: tuple[_Field, ...]
    model: Callable[[R], object]

    def describe(self, number: int, record: R, expected: Mapping[str, object], shown: Shown) -> str:
        """One line: the record's fields, the asked-for ones first and marked ✓ or ✗."""
        model = self.model(record)
        parts: list[str] = []
        for name, want in expected.items():
            actual = getattr(model, name)
            if actual == want:
                parts.append(f"{name}={shown.value(actual)} ✓")
            else:
                parts.append(f"{name}={shown.value(actual)} ✗ (expected {shown.value(want)})")
        parts.extend(
            f"{field.name}={shown.value(getattr(model, field.name))}"
            for field in self.fields
            if field.name not in expected and field.name not in _UNSHOWN
        )
        return f"  #{number} " + "  ".join(parts)

    def score(self, record: R, expected: Mapping[str, object]) -> int:
        """How many asked-for fields the record matches."""
        model = self.model(record)
        return sum(getattr(model, name) == want for name, want in expected.items())


BACKUPS: Final = Matcher[ReceivedBackup](
    "backup", BACKUP_PATH, BACKUP_FIELDS, lambda record: record.entry
)
NOTIFICATIONS: Final = Matcher[ReceivedNotification](
    "notification", NOTIFICATION_PATH, NOTIFICATION_FIELDS, lambda record: record.notification
)


def find_match(
    matcher: Matcher[R],
    records: Sequence[R],
    requests: Sequence[RecordedRequest],
    given: Mapping[str, object],
    keys: Iterable[str],
) -> R:
    """The first record (in arrival order) with every given field; else AssertionError."""
    expected = _expected(matcher.fields, given)
    for record in records:
        if matcher.score(record, expected) == len(expected):
            return record
    shown = Shown(tuple(keys))
    asked = ", ".join(f"{name}={shown.value(value)}" for name, value in expected.items())
    head = f"no {matcher.kind} matched {asked}" if asked else f"no {matcher.kind} arrived"
    if not records:
        lines = [f"{head}; none arrived" if asked else head]
    else:
        ranked = sorted(
            enumerate(records, start=1),
            key=lambda item: (-matcher.score(item[1], expected), item[0]),
        )
        lines = [f"{head}; {_count(len(records), matcher.kind)} arrived, closest first:"]
        lines += [
            matcher.describe(number, record, expected, shown)
            for number, record in ranked[:MAX_SHOWN]
        ]
        if len(ranked) > MAX_SHOWN:
            lines.append(f"  … and {len(ranked) - MAX_SHOWN} more")
    unstored = [
        (number, request)
        for number, request in enumerate(requests, start=1)
        if request.path == matcher.path and request.status != 201
    ]
    if unstored:
        lines.append(f"{_count(len(unstored), 'other request')} to {matcher.path} stored nothing:")
        lines += describe_requests(unstored, shown)
    raise AssertionError(redact("\n".join(lines), keys))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _answer(request: RecordedRequest) -> str:
    if request.status is None:
        answer = "no answer (connection closed)"
    else:
        answer = str(request.status)
        problem = request.problem or {}
        if problem.get("code"):
            answer += f" {problem['code']}"
        if problem.get("detail"):
            answer += f": {problem['detail']}"
        if request.status == 200 and request.path in {BACKUP_PATH, NOTIFICATION_PATH}:
            answer += " (a repeat of an accepted entry: nothing new stored)"
    return f"{answer} [{request.fault}]" if request.fault else answer


def _field_errors(problem: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """The (field, code, message) of each field error a problem lists."""
    listed: object = (problem or {}).get("errors")
    if not isinstance(listed, list):
        return []
    found: list[tuple[str, str, str]] = []
    for item in cast("list[object]", listed):
        if isinstance(item, dict):
            error = cast("dict[str, object]", item)
            found.append(
                (str(error.get("field", "")), str(error.get("code")), str(error.get("message")))
            )
    return found


def describe_requests(numbered: Iterable[tuple[int, RecordedRequest]], shown: Shown) -> list[str]:
    """Lines for requests: what was asked, the answer, field errors, key and body if refused."""
    lines: list[str] = []
    for number, request in numbered:
        lines.append(f"  #{number} {request.method} {request.path} → {_answer(request)}")
        lines.extend(
            f"      {field or '(payload)'} {code}: {message}"
            for field, code, message in _field_errors(request.problem)
        )
        if request.status in {401, 403}:
            key = request.headers.get("x-api-key")
            lines.append(f"      X-Api-Key: {key}" if key else "      no X-Api-Key header")
        failed = request.status is None or request.status >= 400
        if failed and not request.answered_by_fault:
            lines.append(f"      body: {shown.body(request.body)}")
    return lines


def rejection_report(requests: Sequence[RecordedRequest], keys: Iterable[str]) -> str:
    """Each request the app answered 4xx, with its problem; "" when there is none."""
    rejected = [
        (number, request) for number, request in enumerate(requests, start=1) if request.rejected
    ]
    if not rejected:
        return ""
    lines = [f"{_count(len(rejected), 'request')} rejected by the fake ingest endpoint:"]
    lines += describe_requests(rejected, Shown(tuple(keys)))
    return redact("\n".join(lines), keys)


def wait_failure(
    kind: str,
    count: int,
    timeout: float,
    records: Sequence[Any],
    requests: Sequence[RecordedRequest],
    keys: Iterable[str],
) -> str:
    """Why ``wait_for`` gave up: what did arrive, and every request."""
    shown = Shown(tuple(keys))
    lines = [f"waited {timeout:g} s for {_count(count, kind)}, but {len(records)} arrived"]
    if kind != "request" and records:
        lines[0] += ":"
        matcher: Matcher[Any] = BACKUPS if kind == "backup" else NOTIFICATIONS
        lines += [
            matcher.describe(number, record, {}, shown)
            for number, record in enumerate(records, start=1)
        ]
    if requests:
        lines.append(f"{_count(len(requests), 'request')} in all:")
        lines += describe_requests(enumerate(requests, start=1), shown)
    else:
        lines.append("no request reached the fake at all; check the URL the client uses")
    return redact("\n".join(lines), keys)
