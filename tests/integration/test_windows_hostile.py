"""Maintenance windows from a hostile answer: a bounded number read per job, next occurrences
found without a walk for dates that never come, and "never" kept apart from 1970 (issue 18,
D5 and D13). The collector tests go over real HTTP to tests/hostile_aws.py and botocore."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter import cron, model
from exporter.aws import JobSource
from exporter.collect.poller import TargetPoller
from exporter.config import Config, parse_config
from exporter.cron import CronExpression
from exporter.model import JobSnapshot, parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore, render_job
from tests.hostile_aws import HostileAws, job_body

P = "aws_iot_job_maintenance_window_"
# Saturday 1 March 2025: the next 29 February is three years off.
MARCH_2025 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def month_visits(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many months the cron search has looked into since the fixture started."""
    visits = [0]
    length = getattr(cron, "_month_length", None)

    def counting(year: int, month: int) -> int:
        visits[0] += 1
        assert length is not None
        return length(year, month)

    # Not raising: the test then fails on what it asserts, not in its set-up.
    monkeypatch.setattr(cron, "_month_length", counting, raising=False)
    return lambda: visits[0]


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """How many next-occurrence searches ran since the fixture started."""
    calls = [0]
    search = CronExpression.next_at_or_after

    def counting(self: CronExpression, when: datetime) -> datetime | None:
        calls[0] += 1
        return search(self, when)

    monkeypatch.setattr(CronExpression, "next_at_or_after", counting)
    return lambda: calls[0]


# --- cron.py: dates that never come cost nothing; rare ones are still found ----------------


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 0 30 FEB ? *)",
        "cron(59 23 31 FEB ? *)",
        "cron(0 0 30,31 FEB ? *)",
        "cron(0 0 31 APR ? *)",
        "cron(0 0 31 JUN ? *)",
        "cron(0 0 31 SEP ? *)",
        "cron(0 0 31 NOV ? *)",
        "cron(0/5 * 31 APR,JUN,SEP,NOV ? *)",
        "cron(0 0 31 2,4,6,9,11 ? *)",
        # 29 February in years of which none is a leap year (2100 is not one).
        "cron(0 0 29 FEB ? 2025)",
        "cron(0 0 29 FEB ? 2025-2027)",
        "cron(0 0 29 FEB ? 2100)",
        "cron(0 0 29 FEB ? 2025-2199/4)",
    ],
)
def test_impossible_dates_have_no_occurrence_and_no_search(
    expression: str, month_visits: Callable[[], int]
) -> None:
    parsed = CronExpression.parse(expression)
    assert parsed.possible is False
    for when in (MARCH_2025, datetime(1970, 1, 1, tzinfo=UTC), datetime(2199, 12, 31)):
        assert parsed.next_at_or_after(when) is None
    assert month_visits() == 0


@pytest.mark.parametrize(
    ("expression", "when", "expected", "most_months"),
    [
        # Three years to the next leap day: the old two-year horizon said "never".
        ("cron(0 0 29 FEB ? *)", MARCH_2025, datetime(2028, 2, 29, tzinfo=UTC), 3),
        ("cron(0 0 29 FEB ? *)", datetime(2028, 2, 29, 0, 1, tzinfo=UTC),
         datetime(2032, 2, 29, tzinfo=UTC), 5),
        ("cron(30 4 29 FEB ? *)", datetime(2028, 2, 29, 4, 30, tzinfo=UTC),
         datetime(2028, 2, 29, 4, 30, tzinfo=UTC), 1),
        # 2100 is no leap year: the next leap day after 2096 is in 2104.
        ("cron(0 0 29 FEB ? *)", datetime(2096, 3, 1, tzinfo=UTC),
         datetime(2104, 2, 29, tzinfo=UTC), 8),
        # 31 in a list of months, one of which has it.
        ("cron(0 0 31 FEB,APR,JUL ? *)", MARCH_2025, datetime(2025, 7, 31, tzinfo=UTC), 3),
        ("cron(0 0 31 * ? *)", datetime(2025, 4, 1, tzinfo=UTC),
         datetime(2025, 5, 31, tzinfo=UTC), 2),
        ("cron(0 0 30 * ? *)", datetime(2025, 1, 31, tzinfo=UTC),
         datetime(2025, 3, 30, tzinfo=UTC), 3),
        # A leap day in a listed leap year, searched for from before it and after it.
        ("cron(0 0 29 FEB ? 2024,2025-2199/4)", datetime(2023, 5, 1, tzinfo=UTC),
         datetime(2024, 2, 29, tzinfo=UTC), 1),
        ("cron(0 0 29 FEB ? 2024,2025-2199/4)", MARCH_2025, None, 44),
        # Naive instants stay naive.
        ("cron(15 10 ? * MON *)", datetime(2025, 3, 1), datetime(2025, 3, 3, 10, 15), 1),
    ],
)  # fmt: skip
def test_rare_dates_are_found_in_few_months(
    expression: str,
    when: datetime,
    expected: datetime | None,
    most_months: int,
    month_visits: Callable[[], int],
) -> None:
    parsed = CronExpression.parse(expression)
    assert parsed.next_at_or_after(when) == expected
    assert month_visits() <= most_months


def test_the_walk_is_bounded_by_the_years_an_expression_lists(
    month_visits: Callable[[], int],
) -> None:
    # The longest walk there is: every year from 1970 to 2199, of which only 1972 has the
    # day, searched for from after it.
    years = [1972, *range(1973, 2200, 4)]
    while len(expression := f"cron(0 0 29 FEB ? {','.join(map(str, years))})") > 256:
        years.pop()
    parsed = CronExpression.parse(expression)
    assert parsed.possible
    assert parsed.next_at_or_after(datetime(1973, 1, 1, tzinfo=UTC)) is None
    assert month_visits() <= len(parsed.years)


@pytest.mark.parametrize(
    "expression",
    [
        "cron(² 0 * * ? *)",  # a digit to isdigit(), not to int()
        "cron(0 0 \u0661 * ? *)",  # an Arabic-Indic 1
        f"cron({'9' * 5000} 0 * * ? *)",  # past int()'s digit limit
        "cron(0/" + "9" * 5000 + " * * * ? *)",
        "cron(0 0 1 * ? *" + " " * 300 + ")",  # longer than AWS's 256
    ],
)
def test_unreadable_numbers_are_cron_errors(expression: str) -> None:
    # A ValueError of another kind escaped the model's `except CronError` and failed the
    # rendering of the job.
    with pytest.raises(cron.CronError):
        CronExpression.parse(expression)


def _reference(parsed: CronExpression, when: datetime, years: int) -> datetime | None:
    """The first occurrence within `years` years, day by day: slow, plainly right."""
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(years * 366):
        if (
            day.year in parsed.years
            and day.month in parsed.months
            and (parsed.days is None or day.day in parsed.days)
            and (parsed.weekdays is None or day.isoweekday() % 7 + 1 in parsed.weekdays)
        ):
            for h in sorted(parsed.hours):
                for m in sorted(parsed.minutes):
                    if (candidate := day.replace(hour=h, minute=m)) >= when:
                        return candidate
        day += timedelta(days=1)
    return None


def _part(low: int, high: int) -> st.SearchStrategy[str]:
    single = st.integers(low, high).map(str)
    span = st.tuples(st.integers(low, high), st.integers(low, high)).map(
        lambda ab: f"{min(ab)}-{max(ab)}"
    )
    stepped = st.tuples(st.integers(low, high), st.integers(1, 12)).map(lambda a: f"{a[0]}/{a[1]}")
    return st.lists(single | span | stepped, min_size=1, max_size=3).map(",".join)


@settings(max_examples=300, deadline=None)
@given(
    minute=_part(0, 59),
    hour=_part(0, 23),
    dom=st.just("?") | _part(1, 31) | st.sampled_from(["29", "30", "31", "28-31"]),
    month=_part(1, 12) | st.sampled_from(["2", "4,6,9,11"]),
    dow=_part(1, 7),
    year=st.just("*") | _part(2020, 2034),
    when=st.datetimes(datetime(2021, 1, 1), datetime(2029, 12, 31), timezones=st.just(UTC)),
)
def test_the_search_agrees_with_a_day_by_day_walk(
    minute: str, hour: str, dom: str, month: str, dow: str, year: str, when: datetime
) -> None:
    parsed = CronExpression.parse(
        f"cron({minute} {hour} {dom} {month} {'?' if dom != '?' else dow} {year})"
    )
    found = parsed.next_at_or_after(when)
    expected = _reference(parsed, when, years=9)
    if expected is not None or found is None or found.year <= when.year + 8:
        assert found == expected
    assert (found is None) >= (not parsed.possible)


# --- D13: a window that never starts is closed, with no next start ------------------------


@pytest.mark.parametrize(
    "start",
    ["cron(0 0 30 FEB ? *)", "cron(0 0 31 NOV ? *)", "cron(0 0 29 FEB ? 2025)"],
)
def test_a_window_that_never_starts_is_closed_without_a_next_start(start: str) -> None:
    now = time.time()
    body = job_body(
        "never",
        schedulingConfig={
            # 30,000,000 minutes reach from 1970 to 2027: "no occurrence" read as 0 was
            # an occurrence on 1 January 1970, open ever since.
            "maintenanceWindows": [{"startTime": start, "durationInMinutes": 30_000_000}]
        },
    )
    (window,) = parse_describe_job(body, now).maintenance_windows
    assert window.next_start(now) is None
    assert window.open_at(now) is False
    samples = _samples(render_job(parse_describe_job(body, now), 'target="ep"').data)
    assert samples[P + "open"] == [0.0]
    assert P + "next_start_timestamp_seconds" not in samples


# --- D5 over HTTP: 20,000 windows in one DescribeJob answer --------------------------------


def _config(aws: HostileAws, jobs: str) -> Config:
    return parse_config(
        "collector: {interval: 300ms, request_timeout: 5s, max_attempts: 2}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        f"    jobs: {{{jobs}}}\n"
    )


def _samples(text: bytes) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample.value)
    return out


@pytest.fixture
async def aws() -> AsyncIterator[HostileAws]:
    server = await HostileAws().start()
    yield server
    await server.close()


async def _describe_once(
    aws: HostileAws, job_id: str
) -> tuple[JobSnapshot, dict[str, list[float]]]:
    """One cycle of the real collector over HTTP: the job's snapshot and its series."""
    config = _config(aws, f"ids: [{job_id}]")
    telemetry, store = SelfMetrics(), MetricsStore()
    telemetry.init_target("ep")
    async with JobSource(config.targets[0], config.collector, telemetry) as source:
        collector = TargetPoller(config.targets[0], config.collector, source, store, telemetry)
        try:
            await collector.collect_once()
        finally:
            await collector.close()
    snapshot = collector.jobs[job_id]
    assert snapshot is not None
    return snapshot, _samples(store.body())


async def test_windows_past_the_cap_are_counted_and_never_searched(
    aws: HostileAws, searches: Callable[[], int], month_visits: Callable[[], int]
) -> None:
    windows = [
        {"startTime": f"cron({i % 60} {i // 60 % 24} 30 FEB ? *)", "durationInMinutes": 60}
        for i in range(20_000)
    ]
    aws.describe["flood"] = json.dumps(
        job_body("flood", schedulingConfig={"maintenanceWindows": windows})
    ).encode()
    snapshot, samples = await _describe_once(aws, "flood")
    # What the event loop ran: two searches per window kept (next start, open) at most,
    # none of which walked a single month (it was 40,000 searches of 733 days each),
    # and series for the kept windows only.
    cap = 100
    assert searches() <= 2 * cap
    assert month_visits() == 0
    assert len(samples[P + "info"]) == cap
    assert samples[P + "open"] == [0.0] * cap
    assert P + "next_start_timestamp_seconds" not in samples
    # The first windows are read, in the answer's order; the rest are counted.
    assert cap == model.MAX_MAINTENANCE_WINDOWS
    assert [w.start_time for w in snapshot.maintenance_windows] == [
        w["startTime"] for w in windows[:cap]
    ]
    assert snapshot.maintenance_windows_dropped == 20_000 - cap


async def test_a_never_starting_window_over_http_is_closed(aws: HostileAws) -> None:
    windows = [
        {"startTime": "cron(0 0 30 FEB ? *)", "durationInMinutes": 30_000_000},
        {"startTime": "cron(0 0 * * ? *)", "durationInMinutes": 1440},
    ]
    aws.describe["never"] = json.dumps(
        job_body("never", schedulingConfig={"maintenanceWindows": windows})
    ).encode()
    snapshot, samples = await _describe_once(aws, "never")
    assert snapshot.maintenance_windows_dropped == 0
    # Window 0 never starts: closed, no next start. Window 1, daily for a whole day, is open.
    assert samples[P + "open"] == [0.0, 1.0]
    assert len(samples[P + "next_start_timestamp_seconds"]) == 1
