"""A target's event path: jobs events say changed are described soon, ids only events
named wait apart, and whether events drive the target or it polls.

It is given the target's context and state, the calls it makes on the target's jobs
(context.JobCalls: describe, amend, drop, built by poller.TargetPoller) and the sweeps'
marks; it marks jobs and asks for their describes inside the same budget, and never
describes, stores or schedules a cycle itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

from exporter.aws import describe_exception
from exporter.budget import EVENT, FIRST, UNKNOWN
from exporter.collect.context import JobCalls, TargetContext
from exporter.collect.schedule import CONFIRM_MARK, EXECUTION_MARK, JOB_MARK, EventMarks, Mark
from exporter.collect.state import TargetState
from exporter.events import EventConsumer, JobEvent, LogThrottle, Queue
from exporter.logs import sanitise
from exporter.model import JobSnapshot
from exporter.status import EventsStatus, LastError

log = logging.getLogger(__name__)


class SweepMarks(Protocol):
    """What the event path asks of the target's sweeps (sweep.Sweeper)."""

    def mark(self, job_id: str) -> None: ...
    def running(self, job_id: str, thing: str | None) -> bool: ...
    def ended(self, event: JobEvent) -> Callable[[JobSnapshot], JobSnapshot] | None: ...


async def _wait(event: asyncio.Event) -> object:
    return await event.wait()


class EventPath:
    """The events of one target (events.EventSink): marks, unknown ids, the consumer."""

    def __init__(
        self, context: TargetContext, state: TargetState, calls: JobCalls, sweeps: SweepMarks
    ) -> None:
        self.context = context
        self.state = state
        self.calls = calls
        self.sweeps = sweeps
        events = context.target.events
        gap = events.min_describe_interval if events else 0.0
        # Jobs an event marked changed: job-level marks ahead, then the job whose data is
        # oldest (schedule.EventMarks).
        self.marks = EventMarks(gap)
        self.dirty_wakeup = asyncio.Event()
        self.unknown_marks = EventMarks(gap)
        self.unknown_wakeup = asyncio.Event()
        # One call at a time for ids only events named, whatever the concurrency.
        self.unknown_slots = asyncio.Semaphore(1)
        # Job ids only events named, awaiting the describe that says whether they exist:
        # at most events.max_unknown_jobs, in the order they came (the rest are dropped).
        self.unknown: dict[str, None] = {}
        self.unknown_log = LogThrottle(EventConsumer.LOG_EVERY)
        # Event describes hold at most half of the target's concurrent calls: the rest
        # stay free for the cycle's, however many events come.
        self.event_slots = asyncio.Semaphore(max(1, context.settings.concurrency // 2))
        self.consumer: EventConsumer | None = None
        self.driven_before = False
        self.describes = 0

    def forget(self, job_id: str) -> None:
        """A job that is no longer followed leaves the marks."""
        self.marks.forget(job_id)
        self.unknown_marks.forget(job_id)

    def totals(self) -> tuple[int, int]:
        """Events received and the describes they caused, so far."""
        consumer = self.consumer
        return (consumer.received if consumer is not None else 0), self.describes

    def owns(self, job_id: str) -> bool:
        return self.context.shard.owns(self.context.target, job_id)

    def job_changed(self, job_id: str, mark: bool = True, kind: str = EXECUTION_MARK) -> bool:
        """An event says the job changed: describe it soon (a known job only when `mark`;
        else the caller marks it). False when it is not followed."""
        if job_id not in self.state.jobs and job_id not in self.unknown:
            discover = self.context.target.jobs.discover
            if job_id in self.state.expired or job_id in self.state.invalid:
                return False
            if discover is None or not discover.matches(job_id):
                return False
            # A job created since the last discovery is described at once, not minutes
            # later: if it exists. Anyone who can write to the queue can name any number
            # of ids, so they wait apart, bounded, and spend the smallest share.
            settings = self.context.target.events
            limit = settings.max_unknown_jobs if settings else 0
            if len(self.unknown) >= limit:
                self.context.telemetry.jobs_dropped(self.context.target.name, "unknown_limit")
                if self.unknown_log.allow():
                    log.warning(
                        "event for an unknown job dropped target=%s job_id=%s "
                        "max_unknown_jobs=%d suppressed=%d",
                        self.context.target.name,
                        job_id,
                        limit,
                        self.unknown_log.take(),
                    )
                return False
            self.unknown[job_id] = None
            self.context.telemetry.unknown_jobs(self.context.target.name, len(self.unknown))
        now = self.context.clock.monotonic()
        if job_id in self.unknown:
            if self.unknown_marks.mark(job_id, now):
                self.unknown_wakeup.set()
        elif mark and self.marks.mark(job_id, now, self._data_at(job_id), kind):
            self.dirty_wakeup.set()
        return True

    def _data_at(self, job_id: str) -> float:
        """When the job's data was read: the order execution marks are served in (a job
        never described goes first)."""
        tracked = self.state.jobs.get(job_id)
        snapshot = tracked.snapshot if tracked is not None else None
        return snapshot.fetched_at if snapshot is not None else 0.0

    def job_event(self, event: JobEvent) -> bool:
        """A job-level event: what it says is applied to the job's snapshot at once (its
        status, times and a `completed` event's counts), then a describe confirms it,
        ahead of execution marks. An event older than the job's last describe changes
        nothing (JobSnapshot.with_job_event)."""
        status = event.job_status
        if status is not None:
            updated, completed, counts = event.last_updated_at, event.completed_at, event.counts

            def change(snapshot: JobSnapshot) -> JobSnapshot:
                return snapshot.with_job_event(status, updated, completed, counts)

            self.calls.amend(event.job_id, change)
        return self.job_changed(event.job_id, kind=JOB_MARK)

    def job_deleted(self, job_id: str) -> None:
        tracked = self.state.jobs.get(job_id)
        if tracked is None:
            return
        log.info("job deleted target=%s job_id=%s", self.context.target.name, job_id)
        if tracked.explicit:
            self.state.missing.add(job_id)
        self.calls.drop(job_id)

    def execution_ended(self, event: JobEvent) -> None:
        """An execution of a followed job ended: its counts, its run time, a sweep soon,
        and a describe.

        The end is counted from the event at once where the snapshot can tell it is not in
        its describe yet (JobSnapshot.with_execution_end); the describe that follows then
        only confirms, in the confirmations' share. One the event could not count, or one
        a describe in flight may answer over (read before the event), is an execution mark.
        """
        job_id = event.job_id
        was = "in_progress" if self.sweeps.running(job_id, event.thing) else None
        timed = self.sweeps.ended(event)
        counts = tuple(self.state.reasons.samples(job_id))
        state = event.status.lower() if event.status is not None else None
        counted = False

        def change(snapshot: JobSnapshot) -> JobSnapshot:
            nonlocal counted
            if state is not None:
                ended = snapshot.with_execution_end(state, event.timestamp, was)
                counted, snapshot = ended is not snapshot, ended
            if timed is not None:
                snapshot = timed(snapshot)
            if counts != snapshot.execution_events:
                snapshot = dataclasses.replace(snapshot, execution_events=counts)
            return snapshot

        self.calls.amend(job_id, change)
        self.sweeps.mark(job_id)
        confirm = counted and not self.calls.busy(job_id)
        self.job_changed(job_id, kind=CONFIRM_MARK if confirm else EXECUTION_MARK)

    def event_driven(self) -> bool:
        """Events refresh the active jobs now; else they are polled every interval."""
        consumer = self.consumer
        if consumer is None or not consumer.healthy():
            return False
        active = any(
            t.snapshot is not None and not t.snapshot.frozen for t in self.state.jobs.values()
        )
        return not (active and consumer.silent())

    def check_driven(self) -> bool:
        driven = self.event_driven()
        if self.consumer is not None and driven != self.driven_before:
            if driven:
                log.info("events drive collection target=%s", self.context.target.name)
            else:
                log.warning(
                    "events lost or failing, polling every interval target=%s interval_seconds=%g",
                    self.context.target.name,
                    self.context.settings.interval,
                )
        self.driven_before = driven
        return driven

    async def describe_dirty(self, unknown: bool = False) -> None:
        """Describes the jobs events marked, inside the same budget: job-level marks
        first, then the job whose data is oldest (schedule.EventMarks).

        The slot is taken before the mark is picked, so the pick is made when a call can
        start: a job event that comes while every slot is busy goes ahead of the marks
        that came before it. Ids only events named have a queue, a wake-up and one call
        of their own (`unknown`): a flood of made-up ids never stands between a known
        job's event and its describe.
        """
        marks = self.unknown_marks if unknown else self.marks
        wakeup = self.unknown_wakeup if unknown else self.dirty_wakeup
        slots = self.unknown_slots if unknown else self.event_slots
        while True:
            await slots.acquire()
            try:
                mark = await self._next_mark(marks, wakeup)
                started = await self._describe_mark(mark, unknown)
            except BaseException:
                slots.release()
                raise
            if started is None:
                slots.release()
                continue
            kind = "unknown" if unknown else mark.kind

            def done(_: object, kind: str = kind, marked_at: float = mark.marked_at) -> None:
                slots.release()
                waited = self.context.clock.monotonic() - marked_at
                self.context.telemetry.event_describe_waited(self.context.target.name, kind, waited)

            started.add_done_callback(done)

    async def _next_mark(self, marks: EventMarks, wakeup: asyncio.Event) -> Mark:
        """The next mark due, waiting for it as long as it takes."""
        while True:
            mark, delay = marks.next(self.context.clock.monotonic(), self.calls.busy)
            if mark is not None:
                return mark
            # Nothing due: wait for the first due mark, or for a newer one.
            await self._wait_for_mark(wakeup, delay)

    async def _describe_mark(self, mark: Mark, unknown: bool) -> asyncio.Task[None] | None:
        """Starts the describe a mark asks for; its task, or None when none was needed."""
        job_id = mark.job_id
        tracked = self.state.jobs.get(job_id)
        if tracked is None and job_id not in self.unknown:
            return None
        self.describes += 1
        self.context.telemetry.event_describe(self.context.target.name)
        if tracked is None:
            kind = UNKNOWN
        elif tracked.snapshot is None:
            kind = FIRST
        else:
            kind = EVENT
        # Tracked in in_flight like the cycle's calls, and closed with them.
        tasks: list[asyncio.Task[None]] = []
        await self.calls.spawn(job_id, tasks, kind, from_cycle=False)
        return tasks[0] if tasks else None

    async def _wait_for_mark(self, wakeup: asyncio.Event, delay: float | None) -> None:
        """Until `delay` has passed on the clock (None: forever), or a job is marked."""
        wakeup.clear()
        waits: set[asyncio.Future[object]] = {asyncio.ensure_future(_wait(wakeup))}
        if delay is not None:
            waits.add(asyncio.ensure_future(self.context.clock.sleep(delay)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()

    def attach(self, queue: Queue) -> EventConsumer:
        """The target's event consumer on `queue`; run it with run_events().

        Made before the cycles start, so that the first cycle knows to wait for the
        queue's first answer instead of polling every active job.
        """
        events = self.context.target.events
        assert events is not None
        self.consumer = EventConsumer(
            self.context.target.name,
            events,
            queue,
            self,
            self.context.telemetry,
            self.state.reasons,
            clock=self.context.clock.time,
        )
        return self.consumer

    async def run(self, consumer: EventConsumer) -> None:
        """The consumer and the describes it causes, until cancelled.

        Never raises but for cancellation: whatever ends the consumer or the event
        describes is logged and restarted after a pause, and the target's polling, which
        runs beside this, goes on meanwhile.
        """
        # Read when the self-metrics are rendered (at most once a second): the consumer's
        # health changes between cycles.
        self.context.telemetry.watch_events_driven(self.context.target.name, self.event_driven)
        try:
            while True:
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(consumer.run())
                        group.create_task(self.describe_dirty())
                        group.create_task(self.describe_dirty(unknown=True))
                except Exception as exc:
                    log.error(
                        "event path stopped, restarting target=%s error=%s",
                        self.context.target.name,
                        describe_exception(exc),
                    )
                    self.context.telemetry.event_consumer_error(self.context.target.name)
                    await asyncio.sleep(EventConsumer.BACKOFF[-1])
        finally:
            self.consumer = None
            self.context.telemetry.watch_events_driven(self.context.target.name, lambda: False)

    def forget_unknown(self, job_id: str) -> bool:
        """Whether the job was one only events named; it no longer waits either way."""
        if job_id not in self.unknown:
            return False
        del self.unknown[job_id]
        self.context.telemetry.unknown_jobs(self.context.target.name, len(self.unknown))
        return True

    async def await_consumer(self) -> None:
        """Whether events flow is known once the queue answered: wait for that a moment, so
        that a restart or a reload does not poll every active job before the first receive."""
        consumer = self.consumer
        if consumer is None or consumer.answered.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.context.settings.request_timeout):
                await consumer.answered.wait()

    def status(self, driven: bool, now: float, base: tuple[int, ...]) -> EventsStatus | None:
        events = self.context.target.events
        if events is None:
            return None
        consumer = self.consumer
        received, describes = self.totals()
        if consumer is None:
            reason = "the event queue is not connected (no AWS client yet)"
        elif driven:
            reason = "events flow"
        else:
            reason = sanitise(consumer.polling_reason() or "") or (
                f"no message for {events.silence_timeout:g} s (silence_timeout) while jobs "
                "are active: events are taken as lost"
            )
        error = None
        if consumer is not None and consumer.last_error is not None:
            at, outcome, detail = consumer.last_error
            error = LastError(at, outcome, "SQS", sanitise(detail))
        return EventsStatus(
            queue_url=events.sqs_queue_url,
            driven=driven,
            reason=reason,
            last_error=error,
            last_message=consumer.last_message if consumer is not None else None,
            lag_seconds=consumer.lag if consumer is not None else None,
            received=received - base[0],
            describes=describes - base[1],
            unknown_waiting=len(self.unknown),
        )
