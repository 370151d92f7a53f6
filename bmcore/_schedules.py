"""Job schedules: when a job is expected to report, and how long to wait before alarming.

A :class:`Schedule` is either an interval (``every``: the job reports at least this often) or
a cron expression read in an IANA time zone, plus a ``grace`` period. Both are parsed from
and written back to the strings users type (:func:`parse_schedule`, :meth:`Schedule.to_wire`)::

    {"every": "24h", "grace": "1h"}
    {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "grace": "2h"}

Durations are whole numbers with a unit, ``s``, ``m``, ``h`` or ``d``, alone or combined
(``90m``, ``1h30m``, ``7d``); they are written back in the largest unit that divides them
exactly (``24h`` is written ``1d``, ``90m`` stays ``90m``).

Cron expressions have the five fields of crontab(5) and are evaluated with cronsim, written by
Healthchecks for exactly this: it follows Debian cron across daylight saving time (a time
skipped by a spring-forward change fires right after the change; a time that occurs twice
fires once). Zones come from :mod:`zoneinfo`, backed by the ``tzdata`` package where the
system has no zone database.

>>> schedule = parse_schedule({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "grace": "1h"})
>>> from datetime import datetime, timezone
>>> schedule.next_due(datetime(2026, 3, 28, 1, 30, tzinfo=timezone.utc)).isoformat()
'2026-03-29T01:00:00+00:00'
>>> schedule.to_wire()
{'cron': '30 2 * * *', 'timezone': 'Europe/Berlin', 'grace': '1h'}
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

import attrs
from cronsim import CronSim, CronSimError

from bmcore._errors import FieldError, PayloadError

__all__ = [
    "MAX_CRON_LENGTH",
    "MAX_DURATION",
    "MIN_EVERY",
    "Schedule",
    "format_duration",
    "parse_duration",
    "parse_schedule",
]

#: The shortest interval: reports carry whole seconds, and a job checked more often than
#: once a minute is a heartbeat, not a backup.
MIN_EVERY: Final = timedelta(minutes=1)
#: The longest cron expression: every crontab line a person writes fits, a flood does not.
MAX_CRON_LENGTH: Final = 200
#: The longest interval or grace: a year and a day covers yearly jobs.
MAX_DURATION: Final = timedelta(days=366)
#: A report at most this long before a cron firing counts for it (capped by grace, see
#: :meth:`Schedule.next_due`): jobs started a little early by a skewed clock are not late.
_MAX_EARLY: Final = timedelta(hours=1)

#: Longer texts are refused before a timedelta overflows (it holds 999,999,999 days).
_LONGEST_SECONDS: Final = 10 * 366 * 86400
_UNITS: Final = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_DURATION: Final = re.compile(r"(?:\d{1,10}[dhms])+", re.ASCII)
_PART: Final = re.compile(r"(\d{1,10})([dhms])", re.ASCII)
_CRON_FIELDS: Final = ("minute", "hour", "day-of-month", "month", "day-of-week")


def parse_duration(text: str) -> timedelta:
    """A duration as users type it: ``24h``, ``90m``, ``7d``, ``1h30m``.

    Raises :class:`ValueError` with a message saying what is accepted.

    >>> parse_duration("1h30m")
    datetime.timedelta(seconds=5400)
    """
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        msg = f"{text!r} is not a duration: write a number and a unit, s, m, h or d (e.g. 24h, 90m)"
        raise ValueError(msg)
    units_seen = [unit for _, unit in _PART.findall(compact)]
    if len(set(units_seen)) != len(units_seen):
        msg = f"{text!r} names a unit twice: write each of d, h, m and s at most once"
        raise ValueError(msg)
    seconds = sum(
        int(number) * int(_UNITS[unit].total_seconds()) for number, unit in _PART.findall(compact)
    )
    if seconds > _LONGEST_SECONDS:
        msg = f"{text!r} is too long a duration: at most 366d"
        raise ValueError(msg)
    return timedelta(seconds=seconds)


def format_duration(duration: timedelta) -> str:
    """The canonical text of ``duration``: one number in the largest unit that divides it.

    >>> format_duration(timedelta(hours=24)), format_duration(timedelta(minutes=90))
    ('1d', '90m')
    """
    if duration <= timedelta() or duration % timedelta(seconds=1):
        msg = f"only positive whole seconds have a text form, not {duration!r}"
        raise ValueError(msg)
    for unit, size in _UNITS.items():
        if not duration % size:
            return f"{duration // size}{unit}"
    raise AssertionError(
        "unreachable: every whole number of seconds divides by 1s"
    )  # pragma: no cover


def _is_known_zone(name: str) -> bool:
    # zoneinfo reads files named by the key: refuse paths before asking it.
    if not name or name.startswith("/") or ".." in name or "\\" in name or "\0" in name:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


@attrs.frozen(kw_only=True)
class Schedule:
    """When a job should report: ``every`` or ``cron`` in ``timezone``, plus ``grace``.

    Build one with :func:`parse_schedule` (from what users type) or directly; the constructor
    checks the same rules and raises :class:`~bmcore.PayloadError` naming the field.
    """

    grace: timedelta
    every: timedelta | None = None
    cron: str | None = None
    #: The IANA zone a cron expression is read in; ``UTC`` unless given. Unused for ``every``.
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        errors = list(_schedule_errors(self))
        if errors:
            raise PayloadError(errors)

    def next_due(self, after: datetime) -> datetime | None:
        """When the job should next report, given that it last reported at ``after``.

        For an interval, ``after + every``. For cron, the first firing after ``after``,
        except that a report shortly before a firing counts for it: up to ``grace``, at most
        an hour, and less than half the gap to the firing before. A job started a minute
        early is not then due again at once, and so is not ``late``. ``None`` when a cron
        expression does not fire again within 50 years (cronsim's horizon).
        """
        if after.tzinfo is None:
            msg = "next_due needs an aware datetime"
            raise ValueError(msg)
        if self.every is not None:
            return after + self.every
        following = self._firing_after(after)
        if following is None:
            return None
        previous = self._firing_before(following)
        early = min(self.grace, _MAX_EARLY)
        if previous is not None:
            early = min(early, (following - previous) / 2 - timedelta(seconds=1))
        if following - after <= early:
            return self._firing_after(following)
        return following

    def to_wire(self) -> dict[str, str]:
        """The schedule as users type it, canonical; :func:`parse_schedule` reads it back."""
        grace = format_duration(self.grace)
        if self.every is not None:
            return {"every": format_duration(self.every), "grace": grace}
        assert self.cron is not None  # noqa: S101 - __attrs_post_init__ guarantees one of the two
        return {"cron": self.cron, "timezone": self.timezone, "grace": grace}

    def _zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def _firing_after(self, instant: datetime) -> datetime | None:
        assert self.cron is not None  # noqa: S101 - only called for cron schedules
        local = instant.astimezone(self._zone())
        try:
            firing = next(CronSim(self.cron, local))
        except StopIteration:
            return None
        return firing.astimezone(UTC)

    def _firing_before(self, instant: datetime) -> datetime | None:
        assert self.cron is not None  # noqa: S101 - only called for cron schedules
        local = instant.astimezone(self._zone())
        try:
            return next(CronSim(self.cron, local, reverse=True)).astimezone(UTC)
        except StopIteration:
            return None


def _schedule_errors(schedule: Schedule) -> list[FieldError]:
    errors: list[FieldError] = []
    if (schedule.every is None) == (schedule.cron is None):
        errors.append(
            FieldError(
                field="",
                code="schedule_kind",
                message=(
                    "give either every (an interval such as 24h) or cron (such as 0 2 * * *),"
                    " not both or neither"
                ),
            )
        )
    errors.extend(_duration_errors("/grace", schedule.grace, minimum=timedelta(seconds=1)))
    if schedule.every is not None:
        errors.extend(_duration_errors("/every", schedule.every, minimum=MIN_EVERY))
        if schedule.timezone != "UTC":
            errors.append(
                FieldError(
                    field="/timezone",
                    code="timezone_without_cron",
                    message="a time zone applies to cron schedules only: remove it, or use cron",
                )
            )
    if schedule.cron is not None:
        errors.extend(_cron_errors(schedule.cron))
        if not _is_known_zone(schedule.timezone):
            errors.append(
                FieldError(
                    field="/timezone",
                    code="unknown_timezone",
                    message=(
                        f"{schedule.timezone!r} is not an IANA time zone:"
                        " use a name such as Europe/Berlin or UTC"
                    ),
                )
            )
    return errors


def _duration_errors(field: str, duration: timedelta, *, minimum: timedelta) -> list[FieldError]:
    if duration <= timedelta():
        return [
            FieldError(
                field=field,
                code="not_positive",
                message=f"{field[1:]} must be positive, such as 1h",
            )
        ]
    if duration % timedelta(seconds=1):
        return [
            FieldError(
                field=field, code="not_whole_seconds", message=f"{field[1:]} must be whole seconds"
            )
        ]
    if duration < minimum:
        text = format_duration(minimum)
        return [
            FieldError(
                field=field, code="too_short", message=f"{field[1:]} must be at least {text}"
            )
        ]
    if duration > MAX_DURATION:
        return [
            FieldError(field=field, code="too_long", message=f"{field[1:]} must be at most 366d")
        ]
    return []


def _cron_errors(expression: str) -> list[FieldError]:
    if len(expression) > MAX_CRON_LENGTH:
        return [
            FieldError(
                field="/cron",
                code="too_long",
                message=f"a cron expression is at most {MAX_CRON_LENGTH} characters; "
                "use ranges and steps (1-5, */10) rather than long lists",
            )
        ]
    fields = expression.split()
    if len(fields) != len(_CRON_FIELDS):
        return [
            FieldError(
                field="/cron",
                code="cron_field_count",
                message=(
                    "a cron expression has 5 fields (minute hour day-of-month month"
                    f" day-of-week), not {len(fields)}"
                ),
            )
        ]
    for name, value in zip(_CRON_FIELDS, fields, strict=True):
        # Probe each field alone, the others starred, so the error names the field at fault.
        probe = ["*"] * len(_CRON_FIELDS)
        probe[_CRON_FIELDS.index(name)] = value
        try:
            CronSim(" ".join(probe), datetime(2000, 1, 1, tzinfo=UTC))
        except CronSimError:
            return [
                FieldError(
                    field="/cron",
                    code="bad_cron_field",
                    message=f"the {name} field {value!r} is not valid in cron: see crontab(5)",
                )
            ]
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as error:
        return [
            FieldError(
                field="/cron", code="bad_cron", message=f"{expression!r} never fires: {error}"
            )
        ]
    return []


def parse_schedule(fields: Mapping[str, object]) -> Schedule:
    """A :class:`Schedule` from its wire form: ``every`` or ``cron`` and ``timezone``; ``grace``.

    Raises :class:`~bmcore.PayloadError` listing every problem, each naming its field.

    >>> parse_schedule({"every": "24h", "grace": "0s"})
    Traceback (most recent call last):
    ...
    bmcore._errors.PayloadError: invalid payload, 1 problem:
      /grace: grace must be positive, such as 1h [not_positive]
    """
    errors: list[FieldError] = []
    known = {"every", "cron", "timezone", "grace"}
    errors.extend(
        FieldError(
            field=f"/{name}",
            code="unknown_field",
            message=f"unknown field {name!r}: use every, cron, timezone and grace",
        )
        for name in fields
        if name not in known
    )
    durations: dict[str, timedelta | None] = {}
    for name in ("every", "grace"):
        value = fields.get(name)
        durations[name] = None
        if value is None:
            continue
        if not isinstance(value, str):
            errors.append(
                FieldError(
                    field=f"/{name}",
                    code="wrong_type",
                    message=f"{name} must be a string such as 24h",
                )
            )
            continue
        try:
            durations[name] = parse_duration(value)
        except ValueError as error:
            errors.append(FieldError(field=f"/{name}", code="invalid_duration", message=str(error)))
    texts: dict[str, str | None] = {}
    for name in ("cron", "timezone"):
        value = fields.get(name)
        texts[name] = value if isinstance(value, str) else None
        if value is not None and not isinstance(value, str):
            errors.append(
                FieldError(field=f"/{name}", code="wrong_type", message=f"{name} must be a string")
            )
    if fields.get("grace") is None:
        errors.append(
            FieldError(
                field="/grace",
                code="missing",
                message="grace is required: how long to wait past the due time, such as 1h",
            )
        )
    if errors:
        raise PayloadError(errors)
    grace = durations["grace"]
    assert grace is not None  # noqa: S101 - checked above
    cron = texts["cron"]
    return Schedule(
        grace=grace,
        every=durations["every"],
        cron=" ".join(cron.split()) if cron is not None else None,
        timezone="UTC" if texts["timezone"] is None else texts["timezone"],
    )
