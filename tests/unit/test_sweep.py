"""Execution sweeps on a fake clock: which job is swept when, what a sweep costs and
publishes, and what it remembers; no server, no socket, milliseconds."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from exporter.aws import ApiError
from exporter.collect.sweep import (
    MIN_GAP_SECONDS,
    RETRY_SECONDS,
    Sweeper,
    SweepState,
    next_job,
)
from exporter.config import Executions
from exporter.events import JobEvent, parse_event
from exporter.executions import (
    AGE_BOUNDS,
    ExecutionSummary,
    parse_page,
    summarise,
)
from exporter.model import JobSnapshot
from exporter.selfmetrics import SelfMetrics
from tests.support import FakeClock

NOW = 1_700_000_000.0


def job(
    job_id: str, queued: int = 0, in_progress: int = 0, timeout: int | None = None
) -> JobSnapshot:
    return JobSnapshot(
        job_id,
        NOW,
        status="IN_PROGRESS",
        executions=(("queued", queued), ("in_progress", in_progress), ("succeeded", 5)),
        in_progress_timeout_minutes=timeout,
    )


def summary(thing: str, status: str, since: float, retry: int = 0) -> ExecutionSummary:
    started = since if status == "IN_PROGRESS" else None
    return ExecutionSummary(thing, status, since, started, since, 1, retry)


# --- what is due ---------------------------------------------------------------------------


def test_the_job_overdue_longest_goes_first_and_a_change_brings_a_job_forward() -> None:
    jobs = {
        "idle": job("idle"),
        "old": job("old", in_progress=5),
        "older-small": job("older-small", in_progress=1),
        "older-big": job("older-big", in_progress=900),
        "new": job("new", queued=3),
        "changed": job("changed", in_progress=2),
    }
    state = SweepState(tried={"old": 50.0, "older-small": 10.0, "older-big": 10.0, "changed": 95.0})
    now, interval = 100.0, 30.0
    order = []
    state.marked["changed"] = None
    for _ in range(5):
        job_id, wait = next_job(jobs, state, now, interval)
        assert job_id is not None and wait == 0.0
        order.append(job_id)
        state.tried[job_id] = now
        state.marked_turn = job_id not in state.marked  # as Sweeper.sweep does
        state.marked.pop(job_id, None)
    # The changed job (swept 5 s ago: due MIN_GAP_SECONDS later, now) has the first turn;
    # then by due time: 40 (the larger first), 80, and the one first seen now.
    assert MIN_GAP_SECONDS == 5.0
    assert order == ["changed", "older-big", "older-small", "old", "new"]
    # A job whose counts say nothing waits is never picked, however old.
    assert next_job({"idle": jobs["idle"]}, state, 1e9, interval) == (None, None)


def test_a_change_waits_about_one_sweep_however_long_the_backlog() -> None:
    jobs = {f"j{i}": job(f"j{i}", in_progress=10) for i in range(1000)}
    state = SweepState(tried={j: float(i) for i, j in enumerate(jobs)})
    now = 10_000.0  # every job is long overdue
    state.marked_turn = False  # the last sweep was a marked job's
    assert next_job(jobs, state, now, 60.0)[0] == "j0"
    state.tried["j0"], state.marked_turn = now, True
    state.marked["j999"] = None
    # The next turn is the change's, ahead of 998 overdue jobs.
    assert next_job(jobs, state, now, 60.0)[0] == "j999"


def test_changed_jobs_cannot_starve_a_job_whose_counts_stand_still() -> None:
    jobs = {f"busy-{i}": job(f"busy-{i}", in_progress=500) for i in range(50)}
    jobs["stalled"] = job("stalled", in_progress=1)
    state = SweepState(tried={j: 0.0 for j in jobs})
    now = 1000.0
    for j in jobs:
        if j != "stalled":
            state.tried[j] = now - 1
            state.marked[j] = None
    # Changed jobs take every other turn; the stalled job, due longest, the ones between.
    state.marked_turn = False
    assert next_job(jobs, state, now, 60.0)[0] == "stalled"


def test_nothing_due_says_how_long_to_wait() -> None:
    jobs = {"a": job("a", in_progress=1), "b": job("b", queued=1)}
    state = SweepState(tried={"a": 100.0, "b": 110.0})
    assert next_job(jobs, state, 120.0, 60.0) == (None, 40.0)
    state.marked["b"] = None
    assert next_job(jobs, state, 112.0, 60.0) == (None, 3.0)
    assert next_job({}, state, 120.0, 60.0) == (None, None)


# --- what a sweep counts -------------------------------------------------------------------


def test_ages_are_cumulative_and_stuck_is_past_the_threshold() -> None:
    now = 10_000.0
    summaries = {
        "IN_PROGRESS": [
            summary("fresh", "IN_PROGRESS", now - 10),
            summary("hour", "IN_PROGRESS", now - 3600),  # exactly the threshold: not stuck
            summary("silent", "IN_PROGRESS", now - 3601, retry=3),
            summary("ancient", "IN_PROGRESS", now - 700_000),
        ],
        "QUEUED": [summary("offline", "QUEUED", now - 90_000)],
    }
    sweep = summarise(summaries, now, {"in_progress": 3600.0, "queued": 86400.0}, keep_stuck=2)
    running = sweep.counts("in_progress")
    assert running is not None
    assert running.by_age == (1, 1, 2, 3, 3, 3, 4)
    assert len(running.by_age) == len(AGE_BOUNDS) + 1
    assert running.stuck == 2 and running.oldest == now - 700_000
    assert running.retries[0] == 3 and running.retries[3] == 1
    queued = sweep.counts("queued")
    assert queued is not None and queued.stuck == 1
    # The oldest stuck first, at most keep_stuck of them, every state together.
    assert [s.thing_name for s in sweep.oldest_stuck] == ["ancient", "offline"]


def test_a_page_without_its_list_is_malformed_and_an_odd_entry_is_skipped() -> None:
    from exporter.executions import MalformedPage

    for bad in (
        {},
        {"executionSummaries": None},
        [],
        "x",
        {"executionSummaries": [], "nextToken": 1},
    ):
        with pytest.raises(MalformedPage):
            parse_page(bad)
    found, token = parse_page(
        {
            "executionSummaries": [
                None,
                {
                    "thingArn": "arn:aws:iot:r:1:thing/" + "x" * 300,
                    "jobExecutionSummary": {"status": "QUEUED"},
                },
                {"thingArn": "", "jobExecutionSummary": {"status": "QUEUED"}},
            ],
            "nextToken": "",
        }
    )
    assert [len(s.thing_name) for s in found] == [128] and token is None


# --- a sweeper on a fake source ------------------------------------------------------------


class FakeSource:
    """ListJobExecutionsForJob from lists in memory, pages of 250, Date = the fake clock."""

    def __init__(self, clock: FakeClock, executions: dict[str, list[ExecutionSummary]]) -> None:
        self.clock = clock
        self.executions = executions
        self.calls: list[tuple[str, str, str | None]] = []

    async def list_executions(
        self, job_id: str, status: str, token: str | None = None
    ) -> tuple[list[ExecutionSummary], str | None, float | None]:
        self.calls.append((job_id, status, token))
        await self.clock.sleep(0.5)  # the budget's pace, 2 calls a second
        rows = [s for s in self.executions.get(job_id, []) if s.status == status]
        start = int(token or 0)
        page = rows[start : start + 250]
        more = start + 250 < len(rows)
        return page, str(start + 250) if more else None, self.clock.time()


class Harness:
    def __init__(
        self,
        jobs: dict[str, JobSnapshot],
        executions: dict[str, list[ExecutionSummary]],
        **settings: object,
    ) -> None:
        self.clock = FakeClock(NOW)
        self.jobs = dict(jobs)
        self.source = FakeSource(self.clock, executions)
        self.sweeper = Sweeper(
            "t",
            Executions(**settings),  # type: ignore[arg-type]
            60.0,
            lambda: self.source,
            lambda: self.jobs,
            self.amend,
            SelfMetrics(),
            self.clock,
        )

    def amend(self, job_id: str, change: Callable[[JobSnapshot], JobSnapshot]) -> None:
        self.jobs[job_id] = change(self.jobs[job_id])


async def test_a_sweep_reads_each_waiting_state_in_pages_of_250_and_skips_empty_ones() -> None:
    rows = [summary(f"t{i}", "IN_PROGRESS", NOW - 7200 + i) for i in range(600)]
    h = Harness({"big": job("big", in_progress=600)}, {"big": rows})
    sweep = await h.sweeper.sweep("big")
    assert sweep is not None
    # Three pages of in-progress executions; the queued count is 0, so no call for it.
    assert [(s, t) for _, s, t in h.source.calls] == [
        ("IN_PROGRESS", None),
        ("IN_PROGRESS", "250"),
        ("IN_PROGRESS", "500"),
    ]
    assert sweep.pages == 3 and not sweep.truncated
    assert h.jobs["big"].sweep is sweep
    assert sweep.counts("in_progress").stuck == 600  # type: ignore[union-attr]
    # First seen in progress: their queue time is observed once, not at the next sweep.
    times = h.jobs["big"].time_in_state
    assert times is not None and times.queued.count == 600
    await h.sweeper.sweep("big")
    assert h.jobs["big"].time_in_state.queued.count == 600  # type: ignore[union-attr]


async def test_a_job_in_progress_timeout_is_its_threshold() -> None:
    rows = [summary("a", "IN_PROGRESS", NOW - 7200)]
    h = Harness({"j": job("j", in_progress=1, timeout=180)}, {"j": rows})
    sweep = await h.sweeper.sweep("j")
    assert sweep is not None and sweep.counts("in_progress").threshold == 10_800  # type: ignore[union-attr]
    assert sweep.counts("in_progress").stuck == 0  # type: ignore[union-attr]


async def test_max_executions_per_job_cuts_a_sweep_into_a_lower_bound() -> None:
    rows = [summary(f"t{i}", "QUEUED", NOW - 10) for i in range(2000)]
    h = Harness({"j": job("j", queued=2000)}, {"j": rows}, max_executions_per_job=500)
    sweep = await h.sweeper.sweep("j")
    assert sweep is not None and sweep.truncated and len(h.source.calls) == 2


async def test_the_end_of_a_run_is_timed_from_the_start_a_sweep_saw() -> None:
    rows = [summary("dev-1", "IN_PROGRESS", NOW - 100)]
    h = Harness({"j": job("j", in_progress=1)}, {"j": rows})
    await h.sweeper.sweep("j")
    body = (
        '{"eventType": "JOB_EXECUTION", "eventId": "e1", "operation": "succeeded", '
        f'"jobId": "j", "thingArn": "arn:aws:iot:r:1:thing/dev-1", "status": "SUCCEEDED", '
        f'"timestamp": {int(NOW + 200)}}}'
    )
    event = parse_event(body)
    assert event.thing == "dev-1"
    change = h.sweeper.ended(event)
    assert change is not None
    h.amend("j", change)
    run = h.jobs["j"].time_in_state.run  # type: ignore[union-attr]
    assert run.count == 1 and run.total == 300.0
    assert [e.thing_name for e in run.exemplars if e] == ["dev-1"]
    # Remembered once: a duplicate terminal event times nothing.
    assert h.sweeper.ended(event) is None


def test_remembered_starts_are_bounded() -> None:
    h = Harness({}, {}, max_tracked_executions=3)
    rows = [summary(f"t{i}", "IN_PROGRESS", NOW - i) for i in range(10)]
    new = h.sweeper._seen_started("j", rows, NOW)
    assert len(new) == 10 and list(h.sweeper.state.started) == [
        ("j", "t7"),
        ("j", "t8"),
        ("j", "t9"),
    ]


@pytest.mark.parametrize(
    "arn",
    ["arn:aws:iot:r:1:thing/<script>", "arn:aws:iot:r:1:thing/" + "x" * 129, "no-thing", 7, None],
)
def test_an_event_thing_that_is_not_a_thing_name_times_nothing(arn: object) -> None:
    import json

    body = json.dumps(
        {
            "eventType": "JOB_EXECUTION",
            "eventId": "e",
            "jobId": "j",
            "thingArn": arn,
            "status": "FAILED",
            "timestamp": 1,
        }
    )
    assert parse_event(body).thing is None


async def test_jobs_that_stop_waiting_lose_their_stuck_counts_at_no_cost() -> None:
    rows = [summary("a", "IN_PROGRESS", NOW - 7200)]
    h = Harness({"j": job("j", in_progress=1)}, {"j": rows})
    await h.sweeper.sweep("j")
    calls = len(h.source.calls)
    h.jobs["j"] = dataclasses.replace(
        h.jobs["j"], executions=(("queued", 0), ("in_progress", 0), ("succeeded", 6))
    )
    h.sweeper._empty_idle(h.jobs)
    counts = h.jobs["j"].sweep.counts("in_progress")  # type: ignore[union-attr]
    assert counts is not None and counts.stuck == 0 and counts.by_age[-1] == 0
    assert len(h.source.calls) == calls


def test_an_event_for_an_unseen_execution_times_nothing() -> None:
    h = Harness({}, {})
    event = JobEvent("e", "execution", "failed", "j", NOW, "FAILED", None, "dev-9")
    assert h.sweeper.ended(event) is None


def test_a_job_never_swept_ages_from_when_it_first_waited() -> None:
    h = Harness({"j": job("j", in_progress=1)}, {})
    assert h.sweeper.oldest_age() == 0.0
    h.clock.advance(120)
    # Describes come and go (a fresh fetched_at), the age keeps growing: a denied sweep
    # shows as a sweep falling behind.
    h.jobs["j"] = dataclasses.replace(h.jobs["j"], fetched_at=h.clock.time())
    assert h.sweeper.oldest_age() == 120.0


def test_long_thing_names_keep_exemplars_within_the_openmetrics_limit() -> None:
    from exporter.executions import Exemplar
    from exporter.store import EXEMPLAR_CHARACTERS, _exemplar

    def label_chars(text: str) -> int:
        inside = text.split("{", 1)[1].split("}", 1)[0]
        pairs = [p.split("=", 1) for p in inside.split(",")]
        return sum(len(k) + len(v.strip('"')) for k, v in pairs)

    for length in (1, 90, 100, 118):
        text = _exemplar(Exemplar("x" * length, 123456789, 1.0, 2.0))
        assert text and label_chars(text) <= EXEMPLAR_CHARACTERS, length
    assert "execution_number" in _exemplar(Exemplar("short", 7, 1.0, 2.0))
    assert "execution_number" not in _exemplar(Exemplar("x" * 100, 123456789, 1.0, 2.0))
    # A longer name is cut to fit, not dropped: the exemplar still leads to a device.
    cut = _exemplar(Exemplar("x" * 200, 1, 1.0, 2.0))
    assert f'thing_name="{"x" * 118}"' in cut and label_chars(cut) == EXEMPLAR_CHARACTERS


async def test_queue_times_are_observed_once_past_the_remembered_starts() -> None:
    rows = [summary(f"t{i}", "IN_PROGRESS", NOW - 600 + i) for i in range(10)]
    h = Harness({"j": job("j", in_progress=10)}, {"j": rows}, max_tracked_executions=2)
    await h.sweeper.sweep("j")
    await h.sweeper.sweep("j")
    times = h.jobs["j"].time_in_state
    assert times is not None and times.queued.count == 10
    # One that started after the last sweep is new, and counted.
    h.clock.advance(1)
    h.source.executions["j"].append(summary("late", "IN_PROGRESS", h.clock.time()))
    await h.sweeper.sweep("j")
    assert h.jobs["j"].time_in_state.queued.count == 11  # type: ignore[union-attr]


async def test_a_job_that_keeps_failing_is_retried_once_per_retry_delay_however_marked() -> None:
    """Events mark the job every second while every sweep of it is throttled: 24 s cost
    one try per RETRY_SECONDS (the first, then none until 30 s), not a try per mark."""
    h = Harness({"bad": job("bad", in_progress=3)}, {})

    async def throttled(
        job_id: str, status: str, token: str | None = None
    ) -> tuple[list[ExecutionSummary], str | None, float | None]:
        h.source.calls.append((job_id, status, token))
        await h.clock.sleep(0.5)
        raise ApiError("throttled", "ListJobExecutionsForJob", "Rate exceeded")

    h.source.list_executions = throttled  # type: ignore[method-assign]
    task = asyncio.create_task(h.sweeper.run())
    try:
        while h.clock.mono < 24.0:
            h.sweeper.mark("bad")
            await h.clock.sleep(1.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert 1 <= len(h.source.calls) <= 24.0 // RETRY_SECONDS + 1, h.source.calls
