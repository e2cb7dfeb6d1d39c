"""The scheduler on a fake clock, against a fake source: spread, stretch, event marks and
their spacing, what is due, what is stale; hours of schedule in milliseconds."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import pytest

from exporter.aws import JobSummary
from exporter.budget import FIRST
from exporter.collect.poller import TargetPoller
from exporter.collect.schedule import (
    BUSY_RETRY,
    CONFIRM_MARK,
    EXECUTION_MARK,
    JOB_MARK,
    MARK_ORDER,
    MARK_WEIGHTS,
    EventMarks,
    cycle_seconds,
    hold,
    refresh_due,
    spacing,
    staleness,
)
from exporter.config import parse_config
from exporter.model import JobSnapshot, parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from tests.support import FakeClock


class FakeSource:
    """Jobs in memory, each describe recorded with the fake clock's time."""

    def __init__(self, clock: FakeClock, jobs: dict[str, str]) -> None:
        self.clock = clock
        self.jobs = jobs  # job id → status
        self.calls: list[tuple[str, float]] = []

    async def describe_job(self, job_id: str) -> JobSnapshot:
        self.calls.append((job_id, self.clock.monotonic()))
        await asyncio.sleep(0)
        body: dict[str, Any] = {
            "job": {
                "jobId": job_id,
                "jobArn": f"arn:aws:iot:eu-west-1:123456789012:job/{job_id}",
                "status": self.jobs[job_id],
                "lastUpdatedAt": self.clock.time(),
                "jobProcessDetails": {
                    "numberOfQueuedThings": int(self.jobs[job_id] == "IN_PROGRESS"),
                    "numberOfSucceededThings": 1,
                },
            }
        }
        if self.jobs[job_id] != "IN_PROGRESS":
            body["job"]["completedAt"] = self.clock.time()
        return parse_describe_job(body, self.clock.time())

    async def list_jobs(self, params: dict[str, str]) -> list[JobSummary]:
        return [JobSummary(j, s, None) for j, s in self.jobs.items()]


def collector(
    clock: FakeClock, source: FakeSource, interval: str = "60s", events: str = ""
) -> TargetPoller:
    config = parse_config(
        f"collector: {{interval: {interval}, requests_per_second: 1000, concurrency: 50}}\n"
        "targets:\n  - name: t\n    region: eu-west-1\n"
        f"    jobs: {{ids: [{', '.join(source.jobs)}]}}\n{events}"
    )
    return TargetPoller(
        config.targets[0], config.collector, source, MetricsStore(), SelfMetrics(), clock=clock
    )


# --- pure functions -----------------------------------------------------------------------


def test_spacing_hold_and_cycle_length() -> None:
    assert spacing(60, 4) == 15 and spacing(0, 4) == 0 and spacing(60, 0) == 0
    assert hold(started=100, now=130, interval=60, request_timeout=10) == 30
    assert hold(started=100, now=158, interval=60, request_timeout=10) == 10
    assert cycle_seconds(1000, 5) == 200 and cycle_seconds(1, 0) == float("inf")


def test_polling_refreshes_every_known_job_events_only_the_unmarked_old_ones() -> None:
    known = [("fresh", 1000.0), ("old", 600.0), ("marked", 600.0)]
    assert refresh_due(known, 1000.0, 60, None, lambda j: False) == ["fresh", "old", "marked"]
    # Reconcile every 300 s, half an interval early: "old" (400 s) is due, "fresh" is not,
    # "marked" is left to its event.
    assert refresh_due(known, 1000.0, 60, 300, lambda j: j == "marked") == ["old"]


def test_stale_follows_what_the_target_means_to_achieve() -> None:
    assert staleness(10, None, driven=False).after_seconds == 20
    assert staleness(10, 300, driven=False).basis == "interval"
    driven = staleness(10, 300, driven=True)
    assert (driven.after_seconds, driven.basis) == (620, "reconcile_interval")


def _next(marks: EventMarks, now: float, busy: bool = False) -> tuple[str | None, float | None]:
    mark, delay = marks.next(now, lambda j: busy)
    return (mark.job_id if mark is not None else None), delay


def test_marks_go_first_come_first_served_each_job_at_most_once_per_interval() -> None:
    marks = EventMarks(min_interval=5)
    assert marks.mark("a", 0.0) and marks.mark("b", 0.1)
    assert not marks.mark("a", 0.2)  # marked already: one describe for many events
    assert _next(marks, 1.0) == ("a", None)
    assert _next(marks, 1.0) == ("b", None)
    assert _next(marks, 1.0) == (None, None)
    marks.mark("a", 2.0)  # described at 1.0: due at 6.0
    assert _next(marks, 2.0) == (None, 4.0)
    assert _next(marks, 6.0) == ("a", None)


def test_a_job_being_described_keeps_its_mark_and_is_tried_again() -> None:
    marks = EventMarks(min_interval=0)
    marks.mark("a", 0.0)
    assert _next(marks, 0.0, busy=True) == (None, BUSY_RETRY)
    assert _next(marks, BUSY_RETRY) == ("a", None)


def test_marks_stay_bounded_by_the_jobs_however_many_events() -> None:
    marks = EventMarks(min_interval=1)
    for i in range(100_000):
        kind = JOB_MARK if i % 7 == 0 else EXECUTION_MARK
        marks.mark(f"job-{i % 50}", i * 0.01, data_at=float(i % 13), kind=kind)
        marks.next(i * 0.01, lambda j: False)
    assert len(marks) <= 50
    assert len(marks._described) <= 2 * 50 + 1000
    heaps = len(marks._waiting) + sum(len(h) for h in marks._ready.values())
    assert heaps <= 4 * 50 + 1000


def test_the_job_whose_data_is_oldest_goes_first() -> None:
    marks = EventMarks(min_interval=0)
    marks.mark("busy", 0.0, data_at=90.0)
    marks.mark("quiet", 1.0, data_at=10.0)  # marked later, but its data is older
    assert _next(marks, 2.0) == ("quiet", None)
    assert _next(marks, 2.0) == ("busy", None)


def test_a_job_level_event_is_described_ahead_of_500_execution_marks() -> None:
    marks = EventMarks(min_interval=5)
    for i in range(500):
        marks.mark(f"exec-{i}", i * 0.001, data_at=0.0)
    marks.mark("canceled", 1.0, data_at=100.0, kind=JOB_MARK)
    mark, _ = marks.next(1.0, lambda j: False)
    assert mark is not None and (mark.job_id, mark.kind) == ("canceled", JOB_MARK)
    assert mark.marked_at == 1.0


def test_an_execution_mark_moves_to_the_job_class_and_keeps_its_time() -> None:
    marks = EventMarks(min_interval=0)
    marks.mark("other", 0.0, data_at=0.0)
    marks.mark("x", 0.5, data_at=50.0)
    assert marks.mark("x", 1.0, kind=JOB_MARK)  # a job event for a marked job
    assert not marks.mark("x", 1.5)  # an execution event adds nothing to a job mark
    mark, _ = marks.next(2.0, lambda j: False)
    assert mark is not None and (mark.job_id, mark.kind, mark.marked_at) == ("x", JOB_MARK, 0.5)
    assert _next(marks, 2.0) == ("other", None)
    assert _next(marks, 2.0) == (None, None)


def test_job_level_marks_cannot_starve_execution_marks() -> None:
    """A queue writer can send any number of job events: execution marks still get their
    share, one turn in (8 + 2) / 2."""
    marks = EventMarks(min_interval=0)
    marks.mark("exec", 0.0)
    served = []
    turns = (MARK_WEIGHTS[JOB_MARK] + MARK_WEIGHTS[EXECUTION_MARK]) // MARK_WEIGHTS[EXECUTION_MARK]
    for i in range(2 * turns):
        marks.mark(f"job-{i}", 0.0, kind=JOB_MARK)
        marks.mark(f"job-{i}-b", 0.0, kind=JOB_MARK)
        served.append(_next(marks, 1.0)[0])
    assert "exec" in served[:turns]


def test_every_class_gets_its_share_while_all_wait() -> None:
    """Over 1,100 picks with every class always waiting, each class is served its weight
    in 11, to within one turn: a larger share for the more urgent, none starved."""
    marks = EventMarks(min_interval=0)
    kind_of: dict[str, str] = {}
    n = 0

    def refill() -> None:
        nonlocal n
        for kind in MARK_ORDER:
            while sum(1 for j, k in kind_of.items() if k == kind and j in marks) < 3:
                n += 1
                kind_of[f"{kind}-{n}"] = kind
                assert marks.mark(f"{kind}-{n}", 0.0, data_at=float(n), kind=kind)

    served: Counter[str] = Counter()
    for _ in range(1100):
        refill()
        mark, _ = marks.next(1.0, lambda j: False)
        assert mark is not None and mark.kind == kind_of[mark.job_id]
        served[mark.kind] += 1
    total = sum(MARK_WEIGHTS.values())
    for kind in MARK_ORDER:
        assert abs(served[kind] - 1100 * MARK_WEIGHTS[kind] / total) <= 1, served


def test_a_mark_only_moves_to_a_more_urgent_class() -> None:
    marks = EventMarks(min_interval=0)
    assert marks.mark("x", 0.0, kind=CONFIRM_MARK)
    assert not marks.mark("x", 0.1, kind=CONFIRM_MARK)
    assert marks.mark("x", 0.2, kind=EXECUTION_MARK)  # an end the event could not count
    assert not marks.mark("x", 0.3, kind=CONFIRM_MARK)  # a counted end adds nothing
    mark, _ = marks.next(1.0, lambda j: False)
    assert mark is not None and (mark.kind, mark.marked_at) == (EXECUTION_MARK, 0.0)


def test_a_job_with_one_change_is_not_starved_by_100_jobs_that_change_continuously() -> None:
    """On a fake clock, 4 describes a second: 100 jobs with an execution ending every
    second each, marked again after every describe; one job changes once. It is
    described within one turn, not after a round of the busy ones."""
    marks = EventMarks(min_interval=5)
    fetched: dict[str, float] = {f"busy-{i}": 0.0 for i in range(100)}
    fetched["quiet"] = -600.0  # last described by a reconcile ten minutes ago
    now, waited = 0.0, None
    for step in range(4 * 120):
        now = step * 0.25
        for job_id in fetched:
            if job_id.startswith("busy"):
                marks.mark(job_id, now, data_at=fetched[job_id])
        if step == 4 * 60:
            marks.mark("quiet", now, data_at=fetched["quiet"])
            marked_at = now
        mark, _ = marks.next(now, lambda j: False)
        if mark is not None:
            fetched[mark.job_id] = now
            if mark.job_id == "quiet":
                waited = now - marked_at
    assert waited is not None and waited <= 0.25


def test_a_forgotten_job_is_not_described() -> None:
    marks = EventMarks(min_interval=0)
    marks.mark("gone", 0.0)
    marks.forget("gone")
    assert marks.next(1.0, lambda j: False) == (None, None)


# --- the collector on a fake clock ---------------------------------------------------------


async def test_known_jobs_are_spread_evenly_over_the_interval() -> None:
    clock = FakeClock()
    source = FakeSource(clock, {f"j{i}": "IN_PROGRESS" for i in range(6)})
    poller = collector(clock, source)
    await poller.collect_once()  # the first cycle: every job at once
    assert {at for _, at in source.calls} == {0.0}
    source.calls.clear()
    await poller.collect_once(spread=60)
    starts = [at for _, at in source.calls]
    assert len(starts) == 6
    assert [round(b - a, 6) for a, b in itertools.pairwise(starts)] == [10.0] * 5


async def test_frozen_jobs_are_never_described_again() -> None:
    clock = FakeClock()
    source = FakeSource(clock, {"done": "COMPLETED", "running": "IN_PROGRESS"})
    poller = collector(clock, source)
    await poller.collect_once()
    source.calls.clear()
    for _ in range(5):
        clock.advance(60)
        await poller.collect_once(spread=60)
    assert {job for job, _ in source.calls} == {"running"}


async def test_a_cycle_that_cannot_fit_its_jobs_says_it_is_stretched() -> None:
    clock = FakeClock()
    jobs = {f"j{i}": "IN_PROGRESS" for i in range(100)}
    source = FakeSource(clock, jobs)
    poller = collector(clock, source, interval="50ms")  # 100 jobs at 1000/s: 100 ms
    await poller.collect_once()
    assert poller.telemetry.collection_stretched.labels("t")._value.get() == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("events", [1, 3, 20])
async def test_event_marks_describe_a_job_once_per_min_interval_on_the_clock(events: int) -> None:
    clock = FakeClock()
    source = FakeSource(clock, {"hot": "IN_PROGRESS", "cold": "IN_PROGRESS"})
    poller = collector(
        clock,
        source,
        events="    events: {sqs_queue_url: 'https://sqs.eu-west-1.amazonaws.com/123456789012/q', "
        "min_describe_interval: 5s}\n",
    )
    await poller.collect_once()
    source.calls.clear()
    task = asyncio.create_task(poller.describe_dirty())
    try:
        for _ in range(events):
            poller.job_changed("hot")
            clock.advance(1)
            for _ in range(20):
                await asyncio.sleep(0)
        for _ in range(50):  # let the last due mark come round on the fake clock
            await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    times = [at for job, at in source.calls if job == "hot"]
    # The first event at once (the clock had moved 1 s when the task first ran); later
    # ones at most one describe per 5 s of clock, however many events.
    assert times and times[0] <= 1.0
    assert all(b - a >= 5 for a, b in itertools.pairwise(times)), times
    assert len(times) <= events
    assert all(job == "hot" for job, _ in source.calls)


async def test_many_events_for_one_job_before_its_describe_cost_one_describe() -> None:
    clock = FakeClock()
    source = FakeSource(clock, {"hot": "IN_PROGRESS"})
    poller = collector(
        clock,
        source,
        events="    events: {sqs_queue_url: 'https://sqs.eu-west-1.amazonaws.com/123456789012/q', "
        "min_describe_interval: 5s}\n",
    )
    await poller.collect_once()
    source.calls.clear()
    for _ in range(1000):
        poller.job_changed("hot")
    task = asyncio.create_task(poller.describe_dirty())
    for _ in range(50):
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [job for job, _ in source.calls] == ["hot"]


async def test_an_event_describe_still_running_at_the_end_of_a_cycle_does_not_fail_it() -> None:
    clock = FakeClock()
    source = FakeSource(clock, {"busy": "IN_PROGRESS", "quiet": "IN_PROGRESS"})
    poller = collector(
        clock,
        source,
        events="    events: {sqs_queue_url: 'https://sqs.eu-west-1.amazonaws.com/123456789012/q', "
        "reconcile_interval: 1h}\n",
    )
    await poller.collect_once()
    release = asyncio.Event()
    describe = source.describe_job

    async def slow(job_id: str) -> JobSnapshot:
        if job_id == "busy":
            await release.wait()
        return await describe(job_id)

    source.describe_job = slow  # type: ignore[method-assign]
    task = asyncio.create_task(poller.describe_dirty())
    poller.job_changed("busy")
    for _ in range(10):
        await asyncio.sleep(0)
    assert "busy" in poller.in_flight  # the event's describe, not the cycle's
    await poller.collect_once(spread=60)
    assert poller.telemetry.collection_success.labels("t")._value.get() == 1  # type: ignore[attr-defined]
    release.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_first_describe_the_event_path_did_meanwhile_is_not_repeated() -> None:
    # A first cycle works through its pending list for minutes; a job the event path
    # described since the cycle started is skipped, not described twice.
    clock = FakeClock()
    source = FakeSource(clock, {"a": "IN_PROGRESS", "b": "IN_PROGRESS"})
    poller = collector(clock, source)
    poller._cycle_started = clock.time()
    clock.advance(1)
    poller.state.jobs["a"].snapshot = await source.describe_job("a")  # the event path's
    source.calls.clear()
    tasks: list[asyncio.Task[None]] = []
    for job_id in ("a", "b"):
        await poller.spawn(job_id, tasks, FIRST)
    await asyncio.gather(*tasks)
    assert [job for job, _ in source.calls] == ["b"]


async def test_an_id_events_named_first_leaves_the_unknown_ids_once_discovered() -> None:
    clock = FakeClock()
    source = FakeSource(clock, {"old": "IN_PROGRESS"})
    config = parse_config(
        "collector: {interval: 60s, requests_per_second: 1000}\n"
        "targets:\n  - name: t\n    region: eu-west-1\n    jobs: {discover: {}}\n"
        "    events: {sqs_queue_url: 'https://sqs.eu-west-1.amazonaws.com/123456789012/q'}\n"
    )
    poller = TargetPoller(
        config.targets[0], config.collector, source, MetricsStore(), SelfMetrics(), clock=clock
    )
    await poller.collect_once()
    assert poller.job_changed("new")  # created after the listing: waits as an unknown id
    assert "new" in poller.events.unknown
    source.jobs["new"] = "IN_PROGRESS"
    poller.state.next_discovery = 0
    await poller.collect_once()
    # Listed now: a job like any other, and its unknown slot is free for the next one.
    assert "new" in poller.jobs and not poller.events.unknown
