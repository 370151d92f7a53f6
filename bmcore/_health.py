"""Job health: is a job on time, late, missing, failing or fine, judged from its reports.

A store keeps a :class:`ReportSummary` per job (the latest report, the last success and the
failures since), updated as reports arrive with :meth:`ReportSummary.add`, so that judging a
job costs the same however long its history. :func:`assess` turns a summary, the job's
:class:`~bmcore.Schedule` (or none) and the current time into a :class:`JobHealth`.

Timing uses each report's own ``timestamp``, when the job ran, not when the report arrived:
a backfilled report counts where it belongs.

>>> from datetime import datetime, timedelta, timezone
>>> from bmcore import Outcome, parse_schedule
>>> ran = datetime(2026, 12, 1, 2, 0, tzinfo=timezone.utc)
>>> summary = ReportSummary().add(ran, Outcome.SUCCESS)
>>> daily = parse_schedule({"every": "24h", "grace": "1h"})
>>> [assess(daily, summary, ran + timedelta(hours=h)).state.value for h in (1, 24.5, 26)]
['ok', 'late', 'missing']
"""

from __future__ import annotations

import enum
import itertools
import math
import statistics
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Final

import attrs

from bmcore._models import Outcome
from bmcore._schedules import Schedule

__all__ = [
    "JobHealth",
    "JobState",
    "Pause",
    "ReportSummary",
    "assess",
    "suggest_schedule",
    "summarize",
]


class JobState(enum.Enum):
    """A job's state; :attr:`rank` orders them from best to worst."""

    PAUSED = "paused"
    NEW = "new"
    OK = "ok"
    WARNING = "warning"
    LATE = "late"
    FAILING = "failing"
    MISSING = "missing"

    @property
    def rank(self) -> int:
        """How bad the state is: ``missing`` is the worst (6); ``paused`` the mildest (0)."""
        return _RANK[self]


#: How many report times a summary keeps for :func:`suggest_schedule`: ten give nine gaps.
RECENT_REPORTS: Final = 10

_RANK: Final = {
    JobState.PAUSED: 0,
    JobState.NEW: 1,
    JobState.OK: 1,
    JobState.WARNING: 2,
    JobState.LATE: 3,
    JobState.FAILING: 4,
    JobState.MISSING: 5,
}


@attrs.frozen(kw_only=True)
class ReportSummary:
    """What health needs of a job's reports: the latest, the last success, the failures since.

    A store assumes at most one report per instant, as the ingest rules guarantee (a second
    result at one instant is a conflict). Build it with :func:`summarize` or, report by report,
    with :meth:`add`.
    """

    latest_at: datetime | None = None
    latest_outcome: Outcome | None = None
    last_success_at: datetime | None = None
    #: Error reports after the latest Success, in timestamp order.
    consecutive_failures: int = 0
    #: The earliest of those Error reports: since when the job is failing.
    failing_since: datetime | None = None
    #: The newest report times, at most :data:`RECENT_REPORTS`, oldest first: what
    #: :func:`suggest_schedule` needs, kept so that a suggestion costs no history scan.
    recent: tuple[datetime, ...] = ()

    def add(self, at: datetime, outcome: Outcome) -> ReportSummary | None:
        """The summary with one more report, or ``None`` if only a recount of the job can tell.

        That is the one case a summary cannot decide alone: a Success backfilled between two
        Errors of the current streak, which splits it. Then call :func:`summarize` over the
        job's reports.
        """
        latest_at, latest_outcome = self.latest_at, self.latest_outcome
        if latest_at is None or at > latest_at:
            latest_at, latest_outcome = at, outcome
        last_success_at = self.last_success_at
        failures, failing_since = self.consecutive_failures, self.failing_since
        after_success = last_success_at is None or at > last_success_at
        if outcome is Outcome.ERROR and after_success:
            failures += 1
            failing_since = at if failing_since is None else min(failing_since, at)
        elif outcome is Outcome.SUCCESS and after_success:
            last_success_at = at
            if failing_since is None or at == latest_at:
                failures, failing_since = 0, None
            elif at > failing_since:
                return None  # some of the streak's Errors are before it, some after
        return ReportSummary(
            latest_at=latest_at,
            latest_outcome=latest_outcome,
            last_success_at=last_success_at,
            consecutive_failures=failures,
            failing_since=failing_since,
            recent=_recent_with(self.recent, at),
        )


def _recent_with(recent: tuple[datetime, ...], at: datetime) -> tuple[datetime, ...]:
    if at in recent:
        return recent
    return tuple(sorted((*recent, at)))[-RECENT_REPORTS:]


def summarize(reports: Iterable[tuple[datetime, Outcome]]) -> ReportSummary:
    """The summary of a job's reports, in any order: each ``(timestamp, outcome)``.

    >>> from datetime import datetime, timezone
    >>> day = lambda d: datetime(2026, 12, d, tzinfo=timezone.utc)
    >>> s = summarize([(day(3), Outcome.ERROR), (day(1), Outcome.SUCCESS), (day(2), Outcome.ERROR)])
    >>> s.consecutive_failures, s.failing_since == day(2), s.latest_outcome
    (2, True, <Outcome.ERROR: 'Error'>)
    """
    summary = ReportSummary()
    for at, outcome in sorted(reports, key=lambda report: report[0]):
        added = summary.add(at, outcome)
        assert added is not None  # noqa: S101 - in timestamp order no recount is ever needed
        summary = added
    return summary


@attrs.frozen(kw_only=True)
class Pause:
    """A job's pause: from ``since`` until ``until`` (``None``: until resumed)."""

    since: datetime
    until: datetime | None = None

    def covers(self, now: datetime) -> bool:
        """Whether the job is paused at ``now``."""
        return self.since <= now and (self.until is None or now < self.until)


@attrs.frozen(kw_only=True)
class JobHealth:
    """A job's health at one moment; see :func:`assess`."""

    state: JobState
    #: Since when the state holds, as far as the reports tell; ``None`` if unknown.
    since: datetime | None
    next_due_at: datetime | None
    last_report_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int


def assess(
    schedule: Schedule | None,
    summary: ReportSummary,
    now: datetime,
    *,
    scheduled_at: datetime | None = None,
    pause: Pause | None = None,
) -> JobHealth:
    """The job's health at ``now``.

    - **Timing** (with a schedule): the job is due at ``schedule.next_due(latest report)``; it
      is ``late`` once ``now`` passes that, and ``missing`` once ``now`` passes it plus
      ``grace``. A job with no report yet is ``new`` until the first due time after
      ``scheduled_at`` (when the schedule was set) plus grace, then ``missing``.
    - **Outcome**: the latest report's, ``failing`` (Error), ``warning`` (Warning or Unknown)
      or ``ok`` (Success).
    - The state is the worst of the two (``missing`` > ``failing`` > ``late`` > ``warning`` >
      ``ok``), and ``paused`` while ``pause`` covers ``now``. After a pause, the job is due
      again one period after the pause ended at the earliest: a maintenance window does not
      end in an alarm.
    """
    due = _next_due(schedule, summary, scheduled_at, pause)
    state: JobState
    since: datetime | None
    if pause is not None and pause.covers(now):
        state, since = JobState.PAUSED, pause.since
    else:
        state, since = _outcome_state(summary)
        if schedule is not None and due is not None:
            timing = None
            if now > due + schedule.grace:
                timing = (JobState.MISSING, due + schedule.grace)
            elif now > due and summary.latest_at is not None:  # a new job is never late
                timing = (JobState.LATE, due)
            if timing is not None and timing[0].rank > state.rank:
                state, since = timing
        if state is JobState.NEW:
            since = scheduled_at  # new since its schedule was set
    return JobHealth(
        state=state,
        since=since,
        next_due_at=due,
        last_report_at=summary.latest_at,
        last_success_at=summary.last_success_at,
        consecutive_failures=summary.consecutive_failures,
    )


def _next_due(
    schedule: Schedule | None,
    summary: ReportSummary,
    scheduled_at: datetime | None,
    pause: Pause | None,
) -> datetime | None:
    if schedule is None:
        return None
    anchor = summary.latest_at if summary.latest_at is not None else scheduled_at
    if pause is not None and pause.until is not None and (anchor is None or pause.until > anchor):
        anchor = pause.until
    return None if anchor is None else schedule.next_due(anchor)


def _outcome_state(summary: ReportSummary) -> tuple[JobState, datetime | None]:
    match summary.latest_outcome:
        case None:
            return JobState.NEW, None
        case Outcome.ERROR:
            return JobState.FAILING, summary.failing_since or summary.latest_at
        case Outcome.SUCCESS:
            return JobState.OK, summary.latest_at
        case Outcome.WARNING | Outcome.UNKNOWN:
            return JobState.WARNING, summary.latest_at


#: The periods a suggestion is rounded to: what people put in crontabs and timers.
_COMMON_PERIODS: Final = tuple(
    timedelta(minutes=minutes)
    for minutes in (
        5,
        10,
        15,
        30,
        60,
        120,
        180,
        240,
        360,
        480,
        720,
        1440,
        2880,
        10080,
        20160,
        43200,
    )
)
#: A suggestion needs this many reports: four gaps are the fewest a median means much for.
SUGGESTION_MIN_REPORTS: Final = 5


def suggest_schedule(report_times: Iterable[datetime]) -> Schedule | None:
    """An interval schedule that fits a job's report times, or ``None`` from fewer than five.

    The interval is the median gap between reports, rounded to the nearest common period (5
    minutes to 30 days); the median ignores a missed run or an extra manual one. The grace
    covers how late the reports have been past that period (90th percentile, with half again
    as margin), at least a tenth of the period and at most the period itself, rounded up to a
    common period.

    >>> from datetime import datetime, timedelta, timezone
    >>> start = datetime(2026, 12, 1, 2, tzinfo=timezone.utc)
    >>> runs = [start + timedelta(days=d, minutes=7 * (d % 2)) for d in range(6)]
    >>> suggest_schedule(runs).to_wire()
    {'every': '1d', 'grace': '3h'}
    """
    times = sorted(set(report_times))
    if len(times) < SUGGESTION_MIN_REPORTS:
        return None
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    median = timedelta(seconds=statistics.median(gap.total_seconds() for gap in gaps))
    every = min(_COMMON_PERIODS, key=lambda period: abs(_log_ratio(median, period)))
    overdue = sorted(max(gap - every, timedelta()) for gap in gaps if gap < 2 * every)
    p90 = overdue[int(0.9 * (len(overdue) - 1))] if overdue else timedelta()
    wanted = min(max(p90 * 3 / 2, every / 10), every)
    grace = next(period for period in (*_COMMON_PERIODS, every) if period >= wanted)
    return Schedule(every=every, grace=min(grace, every))


def _log_ratio(a: timedelta, b: timedelta) -> float:
    return math.log(max(a, timedelta(seconds=1)) / b)
