"""One target's poller: which job is described when, in a cycle every interval; freezes
terminal jobs. It builds the target's parts (discovery, event path, sweeps), each given
the frozen context, the state and the narrow calls it makes (context.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from exporter.aws import ApiError
from exporter.budget import FIRST, REFRESH, WORK
from exporter.collect.context import SnapshotSink, Source, TargetContext
from exporter.collect.discovery import Discovery
from exporter.collect.eventpath import EventPath
from exporter.collect.schedule import (
    SYSTEM_CLOCK,
    Clock,
    cycle_seconds,
    hold,
    refresh_due,
    spacing,
    staleness,
)
from exporter.collect.shard import ONE_SHARD, Shard
from exporter.collect.state import Cycle, TargetState, Tracked
from exporter.collect.sweep import Sweeper
from exporter.config import CollectorSettings, Target
from exporter.events import EventConsumer, ReasonCounts
from exporter.model import JobSnapshot
from exporter.status import (
    STATUS_WINDOW,
    JobView,
    LastError,
    StuckJob,
    StuckRow,
    TargetStatus,
    job_lists,
    window_base,
)
from exporter.telemetry import TRACKED_STATES, Telemetry
from exporter.tracing import NOOP_TRACING, Tracing

log = logging.getLogger(__name__)

__all__ = ["SnapshotSink", "Source", "TargetPoller"]

# Jobs with stuck executions the status page lists per target, oldest stuck first.
STUCK_JOBS_LISTED = 50


def _waiting(snapshot: JobSnapshot) -> tuple[int | None, int | None]:
    """The job's queued and in-progress counts: a change calls for a sweep."""
    return snapshot.execution_count("queued"), snapshot.execution_count("in_progress")


class TargetPoller:
    """Polls one target: discovery every discovery_interval, active jobs every interval."""

    def __init__(
        self,
        target: Target,
        settings: CollectorSettings,
        source: Source,
        store: SnapshotSink,
        telemetry: Telemetry,
        shard: Shard = ONE_SHARD,
        clock: Clock = SYSTEM_CLOCK,
        tracing: Tracing = NOOP_TRACING,
        state: TargetState | None = None,
    ) -> None:
        self.context = TargetContext(target, settings, telemetry, clock, shard, tracing)
        self.source = source
        self.store = store
        # The replica's share of the budget: every shard spends from the same quota.
        self.rate = settings.requests_per_second / max(shard.total, 1)
        events = target.events
        if state is None:
            state = TargetState(reasons=ReasonCounts(events.max_reasons_per_job if events else 10))
        self.state = state.adopt(target, shard)
        self._stretched = False
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        # The cycle's calls hold at most the other half of the slots: a stretched cycle (a
        # thousand due reconciles waiting for tokens) would otherwise hold every slot, and
        # event describes would wait for a slot before the budget's weights could apply.
        self._cycle_slots = asyncio.Semaphore(
            max(1, settings.concurrency - settings.concurrency // 2)
        )
        # Calls outlive the cycle that started them when they are slow: a slow call must
        # not hold the target's other jobs. Their results count in the cycle they end in.
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        # Of those, the ones a cycle started: a call still running when a cycle ends is a
        # job it could not refresh. Event describes (of known or unknown ids) are not.
        self._in_flight_cycle: set[str] = set()
        self._discovery: asyncio.Task[None] | None = None
        self.cycle = Cycle()
        self._tracked_at = 0.0
        self._cycle_started = 0.0
        telemetry.init_target(target.name, discovery=target.jobs.discover is not None)
        # Sweeps read executions; events say which jobs changed; discovery lists them.
        self.sweeper = Sweeper(
            target.name,
            settings.executions,
            settings.interval,
            lambda: self.source,
            self.snapshots,
            self.amend,
            telemetry,
            clock,
            self.state.sweeps,
        )
        self.events = EventPath(self.context, self.state, self, self.sweeper)
        self.discovery = Discovery(
            self.context,
            self.state,
            lambda: self.source,
            self.events.forget_unknown,
            self.update_tracked,
        )
        self._sample_calls()

    # The context's parts, by the names the rest of the exporter reads.
    @property
    def target(self) -> Target:
        return self.context.target

    @property
    def settings(self) -> CollectorSettings:
        return self.context.settings

    @property
    def telemetry(self) -> Telemetry:
        return self.context.telemetry

    @property
    def clock(self) -> Clock:
        return self.context.clock

    @property
    def shard(self) -> Shard:
        return self.context.shard

    @property
    def tracing(self) -> Tracing:
        return self.context.tracing

    # What other modules read of the state, by name.
    @property
    def cycles(self) -> int:
        return self.state.cycles

    @cycles.setter
    def cycles(self, value: int) -> None:
        self.state.cycles = value

    @property
    def primed(self) -> bool:
        return self.state.primed

    @property
    def last_error(self) -> LastError | None:
        return self.state.last_error

    @property
    def reasons(self) -> ReasonCounts:
        return self.state.reasons

    @property
    def jobs(self) -> dict[str, JobSnapshot | None]:
        """The jobs this poller tracks, each with its last snapshot (None until described).

        A copy, read-only: what the scheduler knows, including jobs not (yet) in the store.
        """
        return {job_id: t.snapshot for job_id, t in self.state.jobs.items()}

    def snapshots(self) -> dict[str, JobSnapshot | None]:
        """`jobs`, as a function to hand on (the sweeper reads it per sweep)."""
        return self.jobs

    def amend(self, job_id: str, change: Callable[[JobSnapshot], JobSnapshot]) -> None:
        """Applies `change` to the job's latest snapshot (a sweep's counts, an event's) and
        stores the result; nothing when the job is gone or not described yet."""
        tracked = self.state.jobs.get(job_id)
        if tracked is None or tracked.snapshot is None:
            return
        snapshot = change(tracked.snapshot)
        if snapshot == tracked.snapshot:
            # Most execution events change nothing the exposition shows (a success with
            # no run time to add): nothing to render.
            return
        tracked.snapshot = snapshot
        self.store.put_job(self.target, job_id, snapshot)

    # The event path's entry points, as other modules and tests name them.
    def job_changed(self, job_id: str, mark: bool = True) -> bool:
        return self.events.job_changed(job_id, mark)

    async def describe_dirty(self, unknown: bool = False) -> None:
        await self.events.describe_dirty(unknown)

    @property
    def consumer(self) -> EventConsumer | None:
        return self.events.consumer

    def busy(self, job_id: str) -> bool:
        return job_id in self.in_flight

    def record_error(
        self, outcome: str, operation: str, message: str, job_id: str | None = None
    ) -> None:
        self.state.record_error(self.clock.time(), outcome, operation, message, job_id)

    async def discover(self, cycle: Cycle) -> bool:
        return await self.discovery.run(cycle)

    async def spawn(
        self, job_id: str, tasks: list[asyncio.Task[None]], kind: str, from_cycle: bool = True
    ) -> None:
        """Describes the job in a task of its own, as work of `kind` at the budget."""
        # Taking the slot before creating the task keeps at most `concurrency` tasks alive,
        # however many jobs are due: 10,000 sleeping tasks would cost more than the jobs.
        if job_id in self.in_flight:
            return
        if from_cycle:
            await self._cycle_slots.acquire()
        try:
            await self._semaphore.acquire()
        except BaseException:
            if from_cycle:
                self._cycle_slots.release()
            raise
        if job_id in self.in_flight or (kind == FIRST and from_cycle and self._fresh(job_id)):
            # Spawned by the event path or the cycle while this one waited for the slot, or
            # a first describe the event path has done meanwhile: a first cycle works
            # through its list for minutes, and a second call would only cost budget.
            self._release(from_cycle)
            return
        # The task takes the context with it: its calls spend as `kind` (budget.WORK).
        token = WORK.set(kind)
        try:
            task = asyncio.create_task(self._describe(job_id, from_cycle))
        finally:
            WORK.reset(token)
        self.in_flight[job_id] = task
        if from_cycle:
            self._in_flight_cycle.add(job_id)
        task.add_done_callback(lambda _: self._in_flight_done(job_id))
        tasks.append(task)

    def _fresh(self, job_id: str) -> bool:
        """Described since the current cycle started (frozen jobs discovery wants described
        again were described long before, and are not)."""
        tracked = self.state.jobs.get(job_id)
        snapshot = tracked.snapshot if tracked is not None else None
        return snapshot is not None and snapshot.fetched_at >= self._cycle_started

    def _in_flight_done(self, job_id: str) -> None:
        self.in_flight.pop(job_id, None)
        self._in_flight_cycle.discard(job_id)

    def _release(self, from_cycle: bool) -> None:
        self._semaphore.release()
        if from_cycle:
            self._cycle_slots.release()

    async def _describe(self, job_id: str, from_cycle: bool = True) -> None:
        try:
            snapshot = await self.source.describe_job(job_id)
            self._update(job_id, snapshot, self.cycle)
        except ApiError as exc:
            self._describe_failed(job_id, exc, self.cycle)
        except Exception as exc:
            # A bug must cost one job one cycle, not the whole cycle of the target.
            log.exception("describe crashed target=%s job_id=%s", self.target.name, job_id)
            self.record_error("error", "DescribeJob", type(exc).__name__, job_id)
            self.cycle.failures += 1
        finally:
            self._release(from_cycle)

    def _update(self, job_id: str, snapshot: JobSnapshot, cycle: Cycle) -> None:
        tracked = self.state.jobs.get(job_id)
        if self.events.forget_unknown(job_id) and tracked is None:
            # The job an event named exists: tracked from now as if discovered.
            tracked = self.state.jobs[job_id] = Tracked(explicit=False)
        if tracked is None:
            return
        cycle.described += 1
        if self.clock.monotonic() - self._tracked_at >= 1.0:
            self.update_tracked()
        self._answered()
        previous = tracked.snapshot
        snapshot = snapshot.with_observed_rate(previous).carry(previous)
        # Events counted before the job's first describe (or while it was dropped) too.
        counts = tuple(self.reasons.samples(job_id))
        if counts != snapshot.execution_events:
            snapshot = dataclasses.replace(snapshot, execution_events=counts)
        if previous is None or _waiting(previous) != _waiting(snapshot):
            self.sweeper.mark(job_id)
        if self.context.expired_at(snapshot.status, snapshot.ended_at, self.clock.time()):
            self.drop(job_id)
            self.state.expired.add(job_id)
            return
        self.store.put_job(self.target, job_id, snapshot)
        tracked.snapshot = snapshot
        self.state.job_errors.pop(job_id, None)

    def _describe_failed(self, job_id: str, exc: ApiError, cycle: Cycle) -> None:
        tracked = self.state.jobs.get(job_id)
        if self.events.forget_unknown(job_id):
            # An id only an event named: whatever the failure, it is not followed. If the
            # job exists, discovery finds it; a flood of made-up ids fails no cycle.
            self.reasons.forget(job_id)
            if exc.outcome == "invalid":
                self.telemetry.jobs_dropped(self.target.name, "invalid")
            return
        if exc.outcome == "invalid":
            # AWS refuses the id itself: asking again every cycle would fail the target
            # forever. Dropped, counted and logged once; discovery never re-adds it.
            self._answered()
            self.state.invalid.add(job_id)
            self.telemetry.jobs_dropped(self.target.name, "invalid")
            log.warning(
                "job id refused as invalid, dropped target=%s job_id=%s error=%r",
                self.target.name,
                job_id,
                exc.detail,
            )
            cycle.dropped.append(job_id)
            self.drop(job_id)
            return
        if exc.outcome == "not_found":
            # AWS answered, so the credentials work: a wrong id is not an unready target.
            self._answered()
            if tracked is not None and tracked.explicit:
                self.state.missing.add(job_id)
                log.warning("job not found target=%s job_id=%s", self.target.name, job_id)
            cycle.dropped.append(job_id)
            self.drop(job_id)
            return
        cycle.failures += 1
        self.record_error(exc.outcome, exc.operation, exc.detail, job_id)
        if self.last_error is not None and job_id in self.state.jobs:
            self.state.job_errors[job_id] = self.last_error
        # The last good snapshot stays exported; its last_success timestamp shows the age.
        log.warning(
            "describe failed target=%s job_id=%s outcome=%s error=%r",
            self.target.name,
            job_id,
            exc.outcome,
            exc.detail,
        )

    def _answered(self) -> None:
        if self.target.jobs.discover is None:
            self.state.primed = True

    def drop(self, job_id: str) -> None:
        self.state.jobs.pop(job_id, None)
        self.state.job_errors.pop(job_id, None)
        self.events.forget(job_id)
        self.reasons.forget(job_id)
        self.sweeper.forget(job_id)
        self.store.remove((self.target.name, job_id))

    def _expire_frozen(self) -> None:
        now = self.clock.time()
        for job_id, tracked in list(self.state.jobs.items()):
            snap = tracked.snapshot
            if snap is not None and self.context.expired_at(snap.status, snap.ended_at, now):
                self.drop(job_id)
                self.state.expired.add(job_id)

    async def collect_once(self, spread: float = 0.0) -> None:
        """One cycle, traced when OpenTelemetry tracing is on."""
        with self.tracing.cycle_span(self.target.name) as span:
            cycle = await self._collect_once(spread)
            span.set_attribute("described", cycle.described)
            span.set_attribute("failures", cycle.failures)
            span.set_outcome("error" if cycle.failures else "ok")

    async def _collect_once(self, spread: float) -> Cycle:
        """One cycle: discovery when due, then every job that is not frozen.

        Jobs never described yet go first, at once. Jobs already known are spread evenly
        over `spread` seconds, so the API sees a steady trickle instead of a burst each
        interval; the token bucket still caps the rate, which stretches the cycle when
        the quota cannot fit every active job in one interval.
        """
        started = self.clock.monotonic()
        self._cycle_started = self.clock.time()
        cycle = self.cycle
        first_cycle = spread <= 0
        tasks: list[asyncio.Task[None]] = []
        discovery = await self._start_discovery()
        pending, known = self._pending(), await self._known_due()
        self._check_budget(len(pending) + len(known))
        await self._describe_due(pending, known, spread, tasks)
        if discovery is not None:
            await self._await_discovery(
                discovery, None if first_cycle else self._hold(started), tasks
            )
        if tasks:
            await asyncio.wait(tasks, timeout=None if first_cycle else self._hold(started))
        self._finish(cycle, started)
        return cycle

    async def _start_discovery(self) -> asyncio.Task[None] | None:
        """Discovery when due, beside the describes: a long or slow listing never stops the
        known jobs from being described. One at a time; a slow one carries over."""
        if self._discovery is None and self.clock.time() >= self.state.next_discovery:
            self._discovery = asyncio.create_task(self._discover())
            self.state.next_discovery = self.clock.time() + self.settings.discovery_interval
            await asyncio.sleep(0)  # let it queue the explicit ids it re-adds first
        return self._discovery

    async def _discover(self) -> None:
        # A discovery may end in a later cycle than it began: it counts in that one.
        outcome = await self.discovery.in_background()
        self.cycle.failures += outcome.failures

    async def _known_due(self) -> list[str]:
        """The known active jobs this cycle describes: all of them when polling; while
        events flow, those events did not mark whose data is a reconcile interval old."""
        known = [
            job_id
            for job_id, t in self.state.jobs.items()
            if t.snapshot is not None and not t.snapshot.frozen
        ]
        events = self.target.events
        if events is None:
            return known
        await self.events.await_consumer()
        if not self.events.check_driven():
            return known
        # Events say which jobs changed; the rest are reconciled less often, for lost
        # events and for what no event reports (an execution going in progress). Half an
        # interval early, so a job is not left a whole extra cycle behind.
        return refresh_due(
            [(job_id, self._fetched_at(job_id)) for job_id in known],
            self.clock.time(),
            self.settings.interval,
            events.reconcile_interval,
            self.events.marks.__contains__,
        )

    async def _describe_due(
        self, pending: list[str], known: list[str], spread: float, tasks: list[asyncio.Task[None]]
    ) -> None:
        """Jobs never described at once, then the known ones spaced evenly over `spread`."""
        step = spacing(spread, len(known))
        for job_id in pending:
            await self.spawn(job_id, tasks, FIRST)
        first = self.clock.monotonic()
        for i, job_id in enumerate(known):
            delay = first + i * step - self.clock.monotonic()
            if delay > 0:
                await self.clock.sleep(delay)
            await self.spawn(job_id, tasks, REFRESH)

    async def _await_discovery(
        self, discovery: asyncio.Task[None], hold: float | None, tasks: list[asyncio.Task[None]]
    ) -> None:
        """Waits up to `hold` (None: the first cycle, which waits for discovery: readiness
        means every job was seen once), then describes the jobs it found."""
        await asyncio.wait([discovery], timeout=hold)
        if discovery.done():
            self._discovery = None
            for job_id in self._pending():
                await self.spawn(job_id, tasks, FIRST)

    def _finish(self, cycle: Cycle, started: float) -> None:
        """The cycle's tally: calls carried over, frozen jobs expired, success and telemetry."""
        # A call still running, started by this cycle or an earlier one, is a job this
        # cycle could not refresh: not a success, or the gauge would flap while it is slow.
        carried = len(self._in_flight_cycle)
        if carried:
            cycle.failures += carried
            log.debug("calls carried over target=%s calls=%d", self.target.name, carried)
        self.cycle = Cycle()
        self._expire_frozen()
        self.events.unknown_log.summarise(log, "events for unknown jobs dropped", self.target.name)
        self.state.cycles += 1
        name = self.target.name
        # A cycle without discovery cannot show that ListJobs works again: until a
        # discovery succeeds, the target stays failed instead of flapping back to 1.
        success = not cycle.failures and not self.state.discovery_failed
        self.state.last_success = success
        now = self.clock.time()
        if success:
            self.state.last_collection = now
        self.telemetry.cycle_done(name, self.clock.monotonic() - started, success, now)
        if self.target.jobs.discover is None and not self.state.jobs:
            # Nothing of this target is this shard's to describe: nothing to wait for.
            self.state.primed = True
        self.update_tracked()
        self._sample_calls()
        log.debug(
            "cycle done target=%s described=%d failures=%d dropped=%d",
            name,
            cycle.described,
            cycle.failures,
            len(cycle.dropped),
        )

    def set_budget(self, settings: CollectorSettings) -> None:
        """A reload that changed requests_per_second only (the buckets are Budgets'): the
        parts get the new context."""
        self.context = dataclasses.replace(self.context, settings=settings)
        self.events.context = self.discovery.context = self.context
        self.rate = settings.requests_per_second / max(self.shard.total, 1)

    def _fetched_at(self, job_id: str) -> float:
        snapshot = self.state.jobs[job_id].snapshot
        return snapshot.fetched_at if snapshot is not None else 0.0

    def _pending(self) -> list[str]:
        """Jobs never described, and frozen jobs discovery wants described once more."""
        pending = [
            job_id
            for job_id, t in self.state.jobs.items()
            if t.snapshot is None or job_id in self.state.recheck
        ]
        self.state.recheck.clear()
        return pending

    def _hold(self, started: float) -> float:
        """How long a cycle waits for its calls: to the end of its interval, and at least
        `request_timeout` for the calls it started last; a slower call ends in a later cycle."""
        return hold(
            started, self.clock.monotonic(), self.settings.interval, self.settings.request_timeout
        )

    async def close(self) -> None:
        """Cancel the calls and the discovery still running, and wait for them."""
        tasks = list(self.in_flight.values())
        if self._discovery is not None:
            tasks.append(self._discovery)
            self._discovery = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _check_budget(self, calls: int) -> None:
        """Says, once per change, when the quota cannot describe every due job per interval."""
        needed = cycle_seconds(calls, self.rate)
        stretched = needed > self.settings.interval
        self.telemetry.cycle_stretched(self.target.name, stretched)
        if stretched != self._stretched:
            self._stretched = stretched
            if stretched:
                log.warning(
                    "collection stretched target=%s due_jobs=%d requests_per_second=%g "
                    "cycle_seconds=%g interval_seconds=%g",
                    self.target.name,
                    calls,
                    self.rate,
                    needed,
                    self.settings.interval,
                )
            else:
                log.info("collection fits its interval again target=%s", self.target.name)

    def _api_totals(self) -> tuple[int, int, int]:
        """This target's attempts so far: all, throttled, and failed (anything but ok)."""
        return self.telemetry.api_totals(self.target.name)

    def _sample_calls(self) -> None:
        now = self.clock.time()
        self.state.calls.append((now, *self._api_totals(), *self.events.totals()))
        # Keep one sample older than the window, the baseline of its difference.
        while len(self.state.calls) > 2 and self.state.calls[1][0] <= now - STATUS_WINDOW:
            self.state.calls.popleft()

    def status(self) -> TargetStatus:
        """The target as the status page shows it, computed now from what the poller knows."""
        now = self.clock.time()
        current = (now, *self._api_totals(), *self.events.totals())
        base = window_base(self.state.calls, current)
        events = self.target.events
        driven = events is not None and self.events.event_driven()
        threshold = staleness(
            self.settings.interval, events.reconcile_interval if events else None, driven
        )
        lists = job_lists(
            (
                JobView(
                    job_id,
                    tracked.state,
                    tracked.snapshot.status if tracked.snapshot else None,
                    tracked.snapshot.fetched_at if tracked.snapshot else None,
                    tracked.snapshot is not None and tracked.snapshot.frozen,
                )
                for job_id, tracked in self.state.jobs.items()
            ),
            self.state.job_errors,
            TRACKED_STATES,
            now,
            threshold.after_seconds,
        )
        return TargetStatus(
            name=self.target.name,
            region=self.target.region,
            discovery=self.target.jobs.discover is not None,
            ready=self.primed,
            collection_success=self.state.last_success,
            last_discovery_success=self.state.last_discovery,
            last_collection_success=self.state.last_collection,
            last_error=self.last_error,
            api_window_seconds=now - base[0],
            api_calls=current[1] - base[1],
            api_throttled=current[2] - base[2],
            api_failed=current[3] - base[3],
            jobs_by_state=lists.by_state,
            jobs_by_status=lists.by_status,
            stale_after_seconds=threshold.after_seconds,
            stale_total=lists.stale_total,
            stale_jobs=lists.stale,
            stale_basis=threshold.basis,
            failing_total=lists.failing_total,
            failing_jobs=lists.failing,
            events=self.events.status(driven, now, base[4:]),
            stuck_jobs=self._stuck_jobs(),
        )

    def _stuck_jobs(self) -> tuple[StuckJob, ...]:
        """Jobs with stuck executions at their last sweep, oldest stuck first; at most
        STUCK_JOBS_LISTED of them, each with its executions.stuck_list_size oldest."""
        found = []
        for job_id, tracked in self.state.jobs.items():
            sweep = tracked.snapshot.sweep if tracked.snapshot is not None else None
            if sweep is None or not sweep.oldest_stuck:
                continue
            rows = tuple(
                StuckRow(
                    job_id, r.thing_name, r.state, r.since, r.retry_attempt, r.execution_number
                )
                for r in sweep.oldest_stuck
            )
            stuck = tuple((state, counts.stuck) for state, counts in sweep.states)
            found.append(StuckJob(job_id, stuck, sweep.ended_at, rows))
        found.sort(key=lambda j: (j.oldest[0].since, j.job_id))
        return tuple(found[:STUCK_JOBS_LISTED])

    def update_tracked(self) -> None:
        self._tracked_at = self.clock.monotonic()
        counts = dict.fromkeys(TRACKED_STATES, 0)
        for tracked in self.state.jobs.values():
            counts[tracked.state] += 1
        self.telemetry.tracked_jobs(self.target.name, counts, len(self.state.missing))

    async def run(self) -> None:
        """Cycles forever, one every interval; a failing cycle never ends the loop."""
        try:
            while True:
                started = self.clock.monotonic()
                try:
                    # The first cycle describes everything at once so /readyz comes quickly.
                    await self.collect_once(spread=self.settings.interval if self.cycles else 0.0)
                except Exception:
                    # Unexpected bugs must not stop collection: retried next interval.
                    log.exception("collection cycle crashed target=%s", self.target.name)
                    self.telemetry.cycle_failed(self.target.name)
                    self.state.last_success = False
                elapsed = self.clock.monotonic() - started
                await self.clock.sleep(max(0.0, self.settings.interval - elapsed))
        finally:
            await self.close()
