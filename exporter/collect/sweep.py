"""Execution sweeps: which job's QUEUED and IN_PROGRESS executions are read next.

One job at a time per target, page after page of ListJobExecutionsForJob, under a budget
of its own (the source's bucket): a job that events or its counts say changed first,
then a job never swept, then the oldest sweep, larger jobs first among equals. A job
whose counts say nothing is queued or in progress costs no call: its sweep is emptied.
No job is swept more often than every `interval` but for a change.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from exporter.aws import LIST_EXECUTIONS, ApiError
from exporter.collect.schedule import Clock
from exporter.config import Executions
from exporter.events import JobEvent, LogThrottle
from exporter.executions import (
    PAGE_SIZE,
    SWEPT_STATES,
    ExecutionSummary,
    ExecutionSweep,
    TimeInState,
    summarise,
)
from exporter.model import JobSnapshot
from exporter.telemetry import Telemetry

log = logging.getLogger(__name__)

# A job whose sweep failed waits this long before it is tried again (its other jobs go on).
RETRY_SECONDS = 30.0
# The shortest gap between two sweeps of one job, whatever events say.
MIN_GAP_SECONDS = 5.0


class ExecutionSource(Protocol):
    async def list_executions(
        self, job_id: str, status: str, token: str | None = None
    ) -> tuple[list[ExecutionSummary], str | None, float | None]:
        """A page, the next token, and the answer's Date (the server's clock)."""
        ...


# Applies a change to a job's latest snapshot and stores it (TargetPoller.amend).
Amend = Callable[[str, Callable[[JobSnapshot], JobSnapshot]], None]


@dataclass(slots=True)
class SweepState:
    """What a target's sweeps remember across reloads."""

    # Jobs to sweep sooner: an event or a describe said their executions changed.
    marked: dict[str, None] = field(default_factory=dict)
    # When a job was last tried (failed sweeps included), monotonic.
    tried: dict[str, float] = field(default_factory=dict)
    # When a job never swept first waited for a sweep, monotonic.
    seen: dict[str, float] = field(default_factory=dict)
    # Jobs whose last sweep failed: not tried again before this (monotonic), however often
    # events mark them. Bounded by the jobs; a success or forget() clears it.
    retry_at: dict[str, float] = field(default_factory=dict)
    # Whether the next sweep goes to the marked job due earliest (turns alternate).
    marked_turn: bool = True
    # Per job, the server's time of its last complete sweep: an execution that started
    # after it is seen in progress for the first time (its queue time is observed once,
    # however many executions the remembered starts can hold).
    measured: dict[str, float] = field(default_factory=dict)
    # Executions seen IN_PROGRESS: (job, thing) -> (startedAt, executionNumber); the
    # oldest are forgotten past max_tracked_executions. Their run is timed when their
    # terminal event comes, and their queue time was observed once, when first seen.
    started: OrderedDict[tuple[str, str], tuple[float, int | None]] = field(
        default_factory=OrderedDict
    )


def _non_terminal(snapshot: JobSnapshot) -> int:
    return (snapshot.execution_count("queued") or 0) + (
        snapshot.execution_count("in_progress") or 0
    )


def next_job(
    jobs: Mapping[str, JobSnapshot | None],
    state: SweepState,
    now: float,
    interval: float,
) -> tuple[str | None, float | None]:
    """The job to sweep now, or None and how long until one is due (None: nothing to do).

    A job is due `interval` after its last try, MIN_GAP_SECONDS after it when its
    executions changed (marked), and from when it first waited when never swept. Turns
    alternate: the marked job due earliest, then the job due earliest of all. A change is
    read again within about one sweep however long the backlog, and a job whose counts
    stand still (a stalled rollout looks exactly like that) still gets every other sweep:
    neither kind can starve the other. Among equals the larger job goes first.
    """
    best: tuple[tuple[float, int], str] | None = None
    marked: tuple[tuple[float, int], str] | None = None
    for job_id, snapshot in jobs.items():
        if snapshot is None or not _non_terminal(snapshot):
            continue
        tried = state.tried.get(job_id)
        if tried is None:
            due_at = state.seen.setdefault(job_id, now)
        elif job_id in state.marked:
            due_at = tried + MIN_GAP_SECONDS
        else:
            due_at = tried + interval
        retry = state.retry_at.get(job_id)
        if retry is not None:
            # A failed sweep waits out its retry delay, marks or not: a job that keeps
            # failing while events keep marking it costs one try per RETRY_SECONDS.
            due_at = max(due_at, retry)
        key = (due_at, -_non_terminal(snapshot))
        if best is None or key < best[0]:
            best = (key, job_id)
        if job_id in state.marked and due_at <= now and (marked is None or key < marked[0]):
            marked = (key, job_id)
    if marked is not None and state.marked_turn:
        return marked[1], 0.0
    if best is None:
        return None, None
    due_at = best[0][0]
    if due_at > now:
        return None, due_at - now
    return best[1], 0.0


class Sweeper:
    """The sweeps of one target's jobs (the TargetPoller's `jobs`)."""

    def __init__(
        self,
        target: str,
        settings: Executions,
        interval: float,
        source: Callable[[], ExecutionSource],
        jobs: Callable[[], Mapping[str, JobSnapshot | None]],
        amend: Amend,
        telemetry: Telemetry,
        clock: Clock,
        state: SweepState | None = None,
    ) -> None:
        self.target = target
        self.settings = settings
        self.interval = interval
        self.source = source
        self.jobs = jobs
        self.amend = amend
        self.telemetry = telemetry
        self.clock = clock
        self.state = state if state is not None else SweepState()
        self.wakeup = asyncio.Event()
        self._log = LogThrottle(60.0, clock.monotonic)
        telemetry.watch_sweep_age(target, self.oldest_age)

    def mark(self, job_id: str) -> None:
        """Sweep the job soon: its executions changed."""
        if job_id not in self.state.marked:
            self.state.marked[job_id] = None
            self.wakeup.set()

    def running(self, job_id: str, thing: str | None) -> bool:
        """Whether a sweep saw the thing's execution of the job in progress."""
        return thing is not None and (job_id, thing) in self.state.started

    def forget(self, job_id: str) -> None:
        self.state.marked.pop(job_id, None)
        self.state.tried.pop(job_id, None)
        self.state.retry_at.pop(job_id, None)
        self.state.seen.pop(job_id, None)
        self.state.measured.pop(job_id, None)
        # Its remembered starts are left to age out of the bounded map: scanning 100,000
        # of them for each of many jobs a retention drops at once would stall the loop.

    def oldest_age(self) -> float:
        """Seconds since the oldest last sweep of a job that needs sweeps (0: none waits); a
        job never swept counts from when it first waited, so sweeps that always fail (a
        denied call) show as an age that grows."""
        now, mono, oldest = self.clock.time(), self.clock.monotonic(), 0.0
        for job_id, snapshot in self.jobs().items():
            if snapshot is None or not _non_terminal(snapshot):
                continue
            if snapshot.sweep is not None:
                age = now - snapshot.sweep.ended_at
            else:
                age = mono - self.state.seen.setdefault(job_id, mono)
            oldest = max(oldest, age)
        return oldest

    async def run(self) -> None:
        """Sweeps until cancelled; a failing sweep costs its job one try, never the loop."""
        if self.settings.requests_per_second <= 0:
            return
        while True:
            # One copy of the jobs per turn: both passes below read every job.
            jobs = self.jobs()
            self._empty_idle(jobs)
            job_id, wait = next_job(jobs, self.state, self.clock.monotonic(), self.interval)
            if job_id is None:
                self.wakeup.clear()
                timeout = 60.0 if wait is None else min(wait, 60.0)
                sleep = asyncio.ensure_future(self.clock.sleep(timeout))
                woken = asyncio.ensure_future(self.wakeup.wait())
                try:
                    await asyncio.wait({sleep, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleep.cancel()
                    woken.cancel()
                continue
            try:
                await self.sweep(job_id)
            except Exception:
                log.exception("sweep crashed target=%s job_id=%s", self.target, job_id)

    def _empty_idle(self, jobs: Mapping[str, JobSnapshot | None]) -> None:
        """Jobs whose counts say nothing waits lose their stuck executions at no cost."""
        for job_id, snapshot in jobs.items():
            if snapshot is None or snapshot.sweep is None or _non_terminal(snapshot):
                continue
            if any(counts.by_age[-1] for _, counts in snapshot.sweep.states):
                self.amend(job_id, self._empty)

    def _empty(self, snapshot: JobSnapshot) -> JobSnapshot:
        sweep = summarise({}, self.clock.time(), self._thresholds(snapshot))
        return replace(snapshot, sweep=sweep)

    def _thresholds(self, snapshot: JobSnapshot) -> dict[str, float]:
        timeout = snapshot.in_progress_timeout_minutes
        return {
            "in_progress": timeout * 60.0 if timeout else self.settings.stuck_in_progress_after,
            "queued": self.settings.stuck_queued_after,
        }

    async def sweep(self, job_id: str) -> ExecutionSweep | None:
        """Reads the job's queued and in-progress executions and publishes the counts."""
        # A marked job's turn leads to the earliest due of all, and back.
        was_marked = job_id in self.state.marked
        previous_try = self.state.tried.get(job_id)
        self.state.marked_turn = not was_marked
        self.state.marked.pop(job_id, None)
        self.state.tried[job_id] = self.clock.monotonic()
        snapshot = self.jobs().get(job_id)
        if snapshot is None:
            return None
        # By state, then by thing: an answer that lists one execution on many pages
        # counts it once.
        summaries: dict[str, dict[str, ExecutionSummary]] = {}
        pages, truncated = 0, False
        # Ages are measured on the server's clock when its answers say the time, and the
        # time they say is within max_clock_skew of the host's.
        server_now: float | None = None
        limit = self.settings.max_executions_per_job
        # A state stops after the page that brings it to `limit` entries, or after the
        # pages that many entries fill: empty pages with fresh tokens end too.
        max_pages = limit // PAGE_SIZE + 1
        try:
            for api_state, label in SWEPT_STATES:
                found = summaries[api_state] = {}
                if not snapshot.execution_count(label):
                    continue
                token: str | None = None
                # At most max_pages tokens of at most 4096 characters each.
                seen: set[str] = set()
                read = 0
                for _ in range(max_pages):
                    page, token, date = await self.source().list_executions(
                        job_id, api_state, token
                    )
                    if date is not None:
                        server_now = self._server_time(date, server_now)
                    pages += 1
                    read += len(page)
                    self.telemetry.sweep_page(self.target, len(page))
                    found.update((s.thing_name, s) for s in page if s.status == api_state)
                    if not token:
                        break
                    if read >= limit:
                        # Per state: the in-progress ones are read however many wait.
                        truncated = True
                        break
                    if token in seen:
                        # The pages were fine, the listing is not: counted as the call's.
                        self.telemetry.api_call(self.target, LIST_EXECUTIONS, "malformed")
                        raise ApiError("malformed", LIST_EXECUTIONS, "nextToken repeats a page")
                    seen.add(token)
                else:
                    truncated = True
        except asyncio.CancelledError:
            # Cut short by a reload or a shutdown: the job stays as due as it was, so the
            # sweeper that takes over sweeps it now, not an interval later.
            if previous_try is None:
                self.state.tried.pop(job_id, None)
            else:
                self.state.tried[job_id] = previous_try
            if was_marked:
                self.state.marked[job_id] = None
            raise
        except ApiError as exc:
            if self._log.allow():
                log.warning(
                    "sweep failed target=%s job_id=%s outcome=%s error=%r suppressed=%d",
                    self.target,
                    job_id,
                    exc.outcome,
                    exc.detail,
                    self._log.take(),
                )
            # Tried again after RETRY_SECONDS rather than the interval: a throttled page
            # must not leave the job's counts an interval behind; nor sooner, whatever
            # marks it meanwhile.
            mono = self.clock.monotonic()
            self.state.tried[job_id] = mono - self.interval + RETRY_SECONDS
            self.state.retry_at[job_id] = mono + RETRY_SECONDS
            return None
        self.state.retry_at.pop(job_id, None)
        now = self.clock.time()
        latest = self.jobs().get(job_id) or snapshot
        # Never more stuck than AWS counts in the state (the latest describe's counts).
        caps = {
            label: count
            for _, label in SWEPT_STATES
            if (count := latest.execution_count(label)) is not None
        }
        listed = {state: list(found.values()) for state, found in summaries.items()}
        sweep = summarise(
            listed,
            server_now if server_now is not None else now,
            self._thresholds(latest),
            self.settings.stuck_list_size,
            pages,
            truncated,
            ended_at=now,
            caps=caps,
        )
        reference = server_now if server_now is not None else now
        started = self._seen_started(job_id, listed["IN_PROGRESS"], now)
        # Queue times of executions started since the last complete sweep only: one the
        # remembered starts forgot (past max_tracked_executions) is not counted again.
        since = self.state.measured.get(job_id)
        if since is not None:
            started = [s for s in started if s.started_at is not None and s.started_at > since]
        if not truncated:
            self.state.measured[job_id] = reference
        if truncated:
            self.telemetry.sweep_truncated(self.target)

        def change(current: JobSnapshot) -> JobSnapshot:
            times = current.time_in_state or TimeInState()
            for summary in started:
                times = times.started(summary, now)
            return replace(current, sweep=sweep, time_in_state=times)

        self.amend(job_id, change)
        return sweep

    def _server_time(self, date: float, current: float | None) -> float | None:
        """The answer's Date when within max_clock_skew of the host's clock; else the
        host's clock is trusted instead (None), and the answer counted. One answer dated
        2100 would make every execution stuck and stop queue times being recorded; one
        dated 1970 would hide every stuck one."""
        if abs(date - self.clock.time()) <= self.settings.max_clock_skew:
            return date
        self.telemetry.sweep_date_ignored(self.target)
        return current

    def _seen_started(
        self, job_id: str, running: list[ExecutionSummary], now: float
    ) -> list[ExecutionSummary]:
        """The in-progress executions seen for the first time, remembered for their end."""
        new = []
        started = self.state.started
        bound = self.settings.max_tracked_executions
        for summary in running:
            if summary.started_at is None:
                continue
            key = (job_id, summary.thing_name)
            known = started.get(key)
            if known is not None and known == (summary.started_at, summary.execution_number):
                continue
            started[key] = (summary.started_at, summary.execution_number)
            started.move_to_end(key)
            new.append(summary)
        while len(started) > bound:
            started.popitem(last=False)
        return new

    def ended(self, event: JobEvent) -> Callable[[JobSnapshot], JobSnapshot] | None:
        """The change an execution's terminal event makes: its run is timed when a sweep
        saw it start. None when there is nothing to time."""
        if event.thing is None or event.timestamp is None:
            return None
        known = self.state.started.pop((event.job_id, event.thing), None)
        if known is None:
            return None
        started_at, number = known
        ended_at = event.timestamp

        def change(current: JobSnapshot) -> JobSnapshot:
            times = current.time_in_state or TimeInState()
            times = times.finished(event.thing or "", number, started_at, ended_at)
            return replace(current, time_in_state=times)

        return change
