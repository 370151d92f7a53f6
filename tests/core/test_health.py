"""Job health: timing from each report's own timestamp, outcome, and no false alarms."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bmcore import (
    RECENT_REPORTS,
    JobHealth,
    JobState,
    Outcome,
    Pause,
    ReportSummary,
    Schedule,
    assess,
    parse_schedule,
    suggest_schedule,
    summarize,
)

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
DAILY = parse_schedule({"every": "24h", "grace": "1h"})
HOUR = timedelta(hours=1)


def _summary(*reports: tuple[datetime, Outcome]) -> ReportSummary:
    return summarize(reports)


def _state(
    schedule: Schedule | None, summary: ReportSummary, now: datetime, **kwargs: object
) -> JobState:
    return assess(schedule, summary, now, **kwargs).state  # type: ignore[arg-type]  # keyword pass-through


# --- timing and outcome ---------------------------------------------------------------------


def test_a_daily_job_is_ok_then_late_then_missing() -> None:
    summary = _summary((T0, Outcome.SUCCESS))
    assert assess(DAILY, summary, T0 + HOUR) == JobHealth(
        state=JobState.OK,
        since=T0,
        next_due_at=T0 + 24 * HOUR,
        last_report_at=T0,
        last_success_at=T0,
        consecutive_failures=0,
    )
    # Exactly at the due time it is not yet late; just after, it is.
    assert _state(DAILY, summary, T0 + 24 * HOUR) is JobState.OK
    late = assess(DAILY, summary, T0 + 24 * HOUR + timedelta(seconds=1))
    assert (late.state, late.since) == (JobState.LATE, T0 + 24 * HOUR)
    assert _state(DAILY, summary, T0 + 25 * HOUR) is JobState.LATE
    missing = assess(DAILY, summary, T0 + 25 * HOUR + timedelta(seconds=1))
    assert (missing.state, missing.since) == (JobState.MISSING, T0 + 25 * HOUR)


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (Outcome.SUCCESS, JobState.OK),
        (Outcome.WARNING, JobState.WARNING),
        (Outcome.UNKNOWN, JobState.WARNING),
        (Outcome.ERROR, JobState.FAILING),
    ],
)
def test_the_latest_outcome_gives_the_state_when_on_time(outcome: Outcome, state: JobState) -> None:
    summary = _summary((T0 - 24 * HOUR, Outcome.SUCCESS), (T0, outcome))
    assert _state(DAILY, summary, T0 + HOUR) is state
    assert _state(None, summary, T0 + 1000 * HOUR) is state  # no schedule: outcome alone


def test_the_worst_of_timing_and_outcome_wins() -> None:
    failed = _summary((T0, Outcome.ERROR))
    assert _state(DAILY, failed, T0 + 24.5 * HOUR) is JobState.FAILING  # failing > late
    assert _state(DAILY, failed, T0 + 26 * HOUR) is JobState.MISSING  # missing > failing
    warned = _summary((T0, Outcome.WARNING))
    assert _state(DAILY, warned, T0 + 24.5 * HOUR) is JobState.LATE  # late > warning


def test_a_job_without_a_schedule_has_no_due_time() -> None:
    health = assess(None, _summary((T0, Outcome.SUCCESS)), T0 + 1000 * HOUR)
    assert (health.state, health.next_due_at) == (JobState.OK, None)


def test_a_backfilled_report_counts_where_it_belongs() -> None:
    newest = _summary((T0, Outcome.SUCCESS))
    backfilled = newest.add(T0 - 48 * HOUR, Outcome.ERROR)
    assert backfilled is not None
    # An old Error does not make the job failing nor move its due time.
    assert backfilled.latest_at == T0
    assert backfilled.consecutive_failures == 0
    assert assess(DAILY, backfilled, T0 + HOUR).state is JobState.OK
    # An old Success after which nothing came does not rescue a missing job either.
    overdue = _summary((T0, Outcome.SUCCESS))
    assert _state(DAILY, overdue.add(T0 - HOUR, Outcome.SUCCESS) or overdue, T0 + 30 * HOUR) is (
        JobState.MISSING
    )


def test_consecutive_failures_count_errors_after_the_latest_success() -> None:
    summary = _summary(
        (T0, Outcome.ERROR),
        (T0 + 1 * HOUR, Outcome.SUCCESS),
        (T0 + 2 * HOUR, Outcome.ERROR),
        (T0 + 3 * HOUR, Outcome.WARNING),
        (T0 + 4 * HOUR, Outcome.ERROR),
    )
    health = assess(None, summary, T0 + 5 * HOUR)
    assert (health.state, health.since, health.consecutive_failures) == (
        JobState.FAILING,
        T0 + 2 * HOUR,
        2,
    )
    assert health.last_success_at == T0 + HOUR


def test_a_success_backfilled_into_a_failure_streak_asks_for_a_recount() -> None:
    summary = _summary((T0, Outcome.ERROR), (T0 + 2 * HOUR, Outcome.ERROR))
    assert summary.add(T0 + HOUR, Outcome.SUCCESS) is None
    # Before the whole streak, it only moves the last success.
    before = summary.add(T0 - HOUR, Outcome.SUCCESS)
    assert before is not None
    assert (before.consecutive_failures, before.last_success_at) == (2, T0 - HOUR)


# --- new and paused -------------------------------------------------------------------------


def test_a_scheduled_job_without_reports_is_new_until_its_first_due_time_and_grace() -> None:
    empty = ReportSummary()
    assert _state(DAILY, empty, T0 + 25 * HOUR, scheduled_at=T0) is JobState.NEW
    missing = assess(DAILY, empty, T0 + 25 * HOUR + timedelta(seconds=1), scheduled_at=T0)
    assert (missing.state, missing.since, missing.next_due_at) == (
        JobState.MISSING,
        T0 + 25 * HOUR,
        T0 + 24 * HOUR,
    )


def test_a_paused_job_is_paused_until_its_pause_ends_then_due_one_period_later() -> None:
    summary = _summary((T0, Outcome.ERROR))
    pause = Pause(since=T0 + HOUR, until=T0 + 72 * HOUR)
    during = assess(DAILY, summary, T0 + 50 * HOUR, pause=pause)
    assert (during.state, during.since) == (JobState.PAUSED, T0 + HOUR)
    # After the maintenance window: due a period after it, not at once missing.
    after = assess(DAILY, summary, T0 + 73 * HOUR, pause=pause)
    assert (after.state, after.next_due_at) == (JobState.FAILING, T0 + 96 * HOUR)
    assert _state(DAILY, summary, T0 + 98 * HOUR, pause=pause) is JobState.MISSING
    assert _state(DAILY, summary, T0 + 50 * HOUR, pause=Pause(since=T0)) is JobState.PAUSED


# --- properties -----------------------------------------------------------------------------

outcomes = st.sampled_from(list(Outcome))
offsets = st.integers(min_value=0, max_value=60 * 86400).map(lambda s: timedelta(seconds=s))
report_lists = st.lists(
    st.tuples(offsets, outcomes), max_size=12, unique_by=lambda report: report[0]
).map(lambda reports: [(T0 + offset, outcome) for offset, outcome in reports])
schedules = st.one_of(
    st.none(),
    st.builds(
        Schedule,
        every=st.integers(min_value=60, max_value=10 * 86400).map(lambda s: timedelta(seconds=s)),
        grace=st.integers(min_value=1, max_value=86400).map(lambda s: timedelta(seconds=s)),
    ),
    st.builds(
        Schedule,
        cron=st.sampled_from(["30 2 * * *", "0 */6 * * *", "15 3 * * 1-5", "*/30 * * * *"]),
        timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"]),
        grace=st.integers(min_value=1, max_value=86400).map(lambda s: timedelta(seconds=s)),
    ),
)


def _pause(start: timedelta, length: timedelta | None) -> Pause:
    return Pause(since=T0 + start, until=None if length is None else T0 + start + length)


pauses = st.one_of(st.none(), st.builds(_pause, offsets, st.one_of(st.none(), offsets)))


@given(report_lists, st.randoms(use_true_random=False))
def test_a_summary_does_not_depend_on_arrival_order(
    reports: list[tuple[datetime, Outcome]], random: object
) -> None:
    shuffled = list(reports)
    random.shuffle(shuffled)  # type: ignore[attr-defined]  # hypothesis's Random
    summary = ReportSummary()
    seen: list[tuple[datetime, Outcome]] = []
    for at, outcome in shuffled:
        seen.append((at, outcome))
        # What a store does: add, or recount the job when add cannot tell.
        summary = summary.add(at, outcome) or summarize(seen)
        assert summary == summarize(seen)
    assert summary == summarize(reports)
    assert summary.recent == tuple(sorted(at for at, _ in reports))[-RECENT_REPORTS:]


@given(
    schedules,
    report_lists,
    pauses,
    st.lists(offsets, min_size=2, max_size=6).map(sorted),
)
def test_without_a_new_report_the_state_never_improves_as_time_passes(
    schedule: Schedule | None,
    reports: list[tuple[datetime, Outcome]],
    pause: Pause | None,
    moments: Sequence[timedelta],
) -> None:
    summary = summarize(reports)
    latest = summary.latest_at or T0
    ranks: list[int] = []
    for offset in moments:
        now = latest + offset
        if pause is not None and pause.covers(now):
            ranks.clear()  # while paused the question is moot; from the pause's end on, it holds
            continue
        ranks.append(assess(schedule, summary, now, scheduled_at=T0, pause=pause).state.rank)
    assert ranks == sorted(ranks)


@given(schedules.filter(lambda s: s is not None), report_lists, outcomes)
def test_a_report_at_its_due_time_makes_the_job_ok_or_failing(
    schedule: Schedule | None, reports: list[tuple[datetime, Outcome]], outcome: Outcome
) -> None:
    assert schedule is not None
    summary = summarize(reports)
    due = assess(schedule, summary, T0, scheduled_at=T0).next_due_at
    assume(due is not None)
    assert due is not None
    on_time = summary.add(due, outcome) or summarize([*reports, (due, outcome)])
    state = assess(schedule, on_time, due, scheduled_at=T0).state
    expected = {Outcome.SUCCESS: JobState.OK, Outcome.ERROR: JobState.FAILING}.get(
        outcome, JobState.WARNING
    )
    assert state is expected


@given(
    st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=8, unique=True),
    outcomes,
    st.integers(min_value=0, max_value=3 * 86400),
    st.integers(min_value=1, max_value=86400),
)
def test_every_24h_and_a_daily_cron_in_utc_agree(
    days: list[int], outcome: Outcome, after_s: int, grace_s: int
) -> None:
    midnight = datetime(2026, 1, 1, tzinfo=UTC)
    summary = summarize([(midnight + timedelta(days=day), outcome) for day in days])
    grace = timedelta(seconds=grace_s)
    every = Schedule(every=timedelta(days=1), grace=grace)
    cron = Schedule(cron="0 0 * * *", timezone="UTC", grace=grace)
    now = midnight + timedelta(days=max(days), seconds=after_s)
    assert assess(every, summary, now) == assess(cron, summary, now)


# --- no false alarms across daylight saving time ---------------------------------------------


@pytest.mark.parametrize(
    "runs",
    [
        # Spring forward, 2026-03-29: 02:30 does not exist; Debian cron runs it at 03:00 CEST.
        [
            "2026-03-27T01:30Z",
            "2026-03-28T01:30Z",
            "2026-03-29T01:00Z",
            "2026-03-30T00:30Z",
            "2026-03-31T00:30Z",
        ],
        # Fall back, 2026-10-25: 02:30 happens twice; the job runs once, at the first (CEST).
        [
            "2026-10-23T00:30Z",
            "2026-10-24T00:30Z",
            "2026-10-25T00:30Z",
            "2026-10-26T01:30Z",
            "2026-10-27T01:30Z",
        ],
    ],
    ids=["spring-forward", "fall-back"],
)
def test_a_daily_0230_berlin_job_raises_no_false_alarm_across_dst(runs: list[str]) -> None:
    schedule = parse_schedule({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "grace": "30m"})
    times = [datetime.fromisoformat(run) for run in runs]
    # Each job runs a few seconds after cron starts it; look every minute, across all days.
    reports = [(time + timedelta(seconds=20), Outcome.SUCCESS) for time in times]
    now = times[0] + timedelta(minutes=1)
    while now < times[-1]:
        arrived = [report for report in reports if report[0] <= now]
        health = assess(schedule, summarize(arrived), now)
        # Between the firing and the report (20 s) the job is due; never later than that.
        assert health.state is JobState.OK or (
            health.state is JobState.LATE
            and health.next_due_at is not None
            and now - health.next_due_at <= timedelta(seconds=20)
        ), (now, health)
        now += timedelta(minutes=1)


def test_a_job_that_misses_its_run_on_the_dst_day_is_still_caught() -> None:
    schedule = parse_schedule({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "grace": "30m"})
    saturday = datetime(2026, 3, 28, 1, 30, 20, tzinfo=UTC)
    health = assess(
        schedule, _summary((saturday, Outcome.SUCCESS)), datetime(2026, 3, 29, 1, 31, tzinfo=UTC)
    )
    assert (health.state, health.since) == (
        JobState.MISSING,
        datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
    )


# --- suggestions ----------------------------------------------------------------------------


def test_a_schedule_is_suggested_from_five_reports_and_not_fewer() -> None:
    daily = [T0 + timedelta(days=day, minutes=3 * (day % 3)) for day in range(6)]
    assert suggest_schedule(daily[:4]) is None
    suggestion = suggest_schedule(daily)
    assert suggestion is not None
    assert suggestion.every == timedelta(days=1)
    assert timedelta(0) < suggestion.grace <= timedelta(days=1)


def test_a_missed_run_and_an_extra_run_do_not_move_the_suggestion() -> None:
    hourly = [T0 + n * HOUR for n in range(12) if n != 5] + [T0 + 7.5 * HOUR]
    suggestion = suggest_schedule(hourly)
    assert suggestion is not None
    assert suggestion.to_wire()["every"] == "1h"


@given(
    st.sampled_from([timedelta(minutes=15), HOUR, 6 * HOUR, timedelta(days=1), timedelta(days=7)]),
    st.lists(st.integers(min_value=0, max_value=120), min_size=5, max_size=30),
)
def test_regular_reports_suggest_their_own_period(period: timedelta, jitter_s: list[int]) -> None:
    times = [
        T0 + index * period + timedelta(seconds=jitter) for index, jitter in enumerate(jitter_s)
    ]
    suggestion = suggest_schedule(times)
    assert suggestion is not None
    assert suggestion.every == period
    # The grace covers the jitter seen: every report would have been on time.
    summary = ReportSummary()
    for at in times:
        due = assess(suggestion, summary, at).next_due_at
        assert due is None or at <= due + suggestion.grace
        summary = summary.add(at, Outcome.SUCCESS) or summary
