"""The simulated fleet: things, groups and jobs evolving by discrete events in simulated time."""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from simulator.packages import Packages, parse_version_arn
from simulator.positions import SortedPositions
from simulator.scenario import (
    Devices,
    Generate,
    JobSpec,
    Precomputed,
    Rollout,
    Scenario,
    Target,
    TimelineEvent,
)

log = logging.getLogger("simulator")

QUEUED = "QUEUED"
IN_PROGRESS = "IN_PROGRESS"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
TIMED_OUT = "TIMED_OUT"
REJECTED = "REJECTED"
REMOVED = "REMOVED"
CANCELED = "CANCELED"
EXECUTION_STATES = (QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, TIMED_OUT, REJECTED, REMOVED, CANCELED)
NON_TERMINAL = frozenset({QUEUED, IN_PROGRESS})

JOB_SCHEDULED = "SCHEDULED"
JOB_IN_PROGRESS = "IN_PROGRESS"
JOB_COMPLETED = "COMPLETED"
JOB_CANCELED = "CANCELED"
JOB_DELETING = "DELETION_IN_PROGRESS"
# The `status` of each job event, as AWS publishes it.
JOB_EVENT_STATUS = {
    "completed": "COMPLETED",
    "canceled": "CANCELED",
    "deleted": "DELETED",
    "cancellation_in_progress": "CANCELLATION_IN_PROGRESS",
    "deletion_in_progress": "DELETION_IN_PROGRESS",
}

# AWS's documented ceiling when a job has no maximumPerMinute.
DEFAULT_MAXIMUM_PER_MINUTE = 1000
ABORT_REASON_CODE = "ABORT_CRITERIA_MET"
_GROUP_ID_NAMESPACE = uuid.UUID("6f1d3b7e-3c59-4c43-9a53-3e0c2f7a9b10")


class FleetError(Exception):
    """An admin action the fleet refuses (unknown job or group, job in the wrong state)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class Execution:
    thing: str
    execution_number: int
    retry_attempt: int
    status: str
    queued_at: float
    last_updated_at: float
    started_at: float | None = None
    # The thing's place in its job's listing: the order of first notification, kept by
    # its retries, so that a page token can name the last execution it returned.
    position: int = 0


@dataclass(slots=True)
class RolloutEntry:
    """One notification (first attempt) and the rate the configuration allowed for it."""

    at: float
    rate_limit_per_minute: int
    thing: str


@dataclass(slots=True)
class Job:
    spec: JobSpec
    status: str
    created_at: float
    last_updated_at: float
    rng: random.Random
    scheduled_start: float | None = None
    scheduled_end: float | None = None
    completed_at: float | None = None
    force_canceled: bool = False
    reason_code: str | None = None
    comment: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXECUTION_STATES, 0))
    # Latest execution per thing, in notification order (what ListJobExecutionsForJob shows).
    latest: dict[str, Execution] = field(default_factory=dict)
    # The same things by position, and the positions of the latest executions per state:
    # a page of the listing, filtered or not, reads only what it returns.
    order: list[str] = field(default_factory=list)
    by_status: dict[str, SortedPositions] = field(default_factory=dict)
    # Things waiting to be notified, in order. An OrderedDict, not a dict: removal by key
    # is O(1) in both, but taking the first of a plain dict after many deletions from its
    # front walks every hole they left, which made a 100,000-thing rollout quadratic.
    pending: OrderedDict[str, None] = field(default_factory=OrderedDict)
    known: set[str] = field(default_factory=set)
    rollout_log: list[RolloutEntry] = field(default_factory=list)
    next_rollout: float | None = None
    last_rollout: float | None = None
    rollout_stopped: bool = False
    canceling_until: float | None = None
    cancel_in_progress: bool = False
    retries: dict[tuple[str, str], int] = field(default_factory=dict)
    deleting: bool = False
    version: int = 0

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def is_concurrent(self) -> bool:
        if self.canceling_until is not None:
            return True
        return self.status == JOB_IN_PROGRESS and self.rolling_out

    @property
    def rolling_out(self) -> bool:
        return bool(self.pending) or self.next_rollout is not None


_Event = tuple[float, int, Callable[..., object], tuple[Any, ...]]


def arn(region: str, account: str, kind: str, name: str) -> str:
    return f"arn:aws:iot:{region}:{account}:{kind}/{name}"


def group_id(account: str, name: str) -> str:
    # Stable across runs so that a test can filter ListJobs by thingGroupId.
    return str(uuid.uuid5(_GROUP_ID_NAMESPACE, f"{account}/{name}"))


def minute_string(epoch: float) -> str:
    """The API's 'YYYY-MM-DDTHH:MM' form (UTC) used by schedulingConfig."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M")


class Fleet:
    """All state of the simulated account; mutated only by `advance` and the admin actions.

    Everything happens through a heap of timed events processed in (time, insertion) order,
    and each job draws from its own seeded random generator: the state at a simulated time
    depends on the seed and the scenario, not on when or how often `advance` is called.
    """

    def __init__(self, scenario: Scenario, start: float) -> None:
        self.scenario = scenario
        self.account_id = scenario.account_id
        self.start = start
        self.now = start
        self.groups: dict[str, dict[str, None]] = {}
        self.group_ids: dict[str, str] = {}
        self.thing_groups: dict[str, set[str]] = {}
        self.jobs: dict[str, Job] = {}
        self.deleted: set[str] = set()
        self._heap: list[_Event] = []
        self._seq = 0
        self._execution_number = 0
        self._next_thing: dict[str, int] = {}
        self._order: list[Job] | None = None
        self._fleet_rng = random.Random(f"{scenario.seed}/fleet")
        # Job events as AWS publishes them: (topic, payload) to every listener. Reasons
        # draw from a generator of their own, so listening changes nothing else.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._event_rng = random.Random(f"{scenario.seed}/events")
        # Events are stamped when published, in real time, as AWS stamps them: simulated
        # time runs ahead at a speed-up, and the exporter measures lag against its clock.
        self.wall_clock: Callable[[], float] = time.time

        earliest = start
        for g in scenario.groups:
            self._add_group(g.name)
            self._grow_group(g.name, g.things)
        self.packages = Packages(scenario, start)
        for spec in scenario.jobs:
            created = start + spec.created_minutes * 60.0
            earliest = min(earliest, created)
            if spec.precomputed is not None:
                self._create_precomputed(spec, spec.precomputed, created)
            elif spec.every_minutes is not None:
                self._push(created, self._create_repeated, spec, 1)
            else:
                self._push(created, self._create_later, spec, start)
        for event in scenario.timeline:
            self._push(start + event.at_minutes * 60.0, self._timeline, event)
        if scenario.generate is not None:
            self._generate(scenario.generate)
        # Each thing's $package shadow: the versions installed before the start (once the
        # generated groups exist, before any job has run).
        self.packages.install(self.groups)
        self.now = earliest
        self.advance(start)

    # --- the event loop -----------------------------------------------------------------

    def _push(self, at: float, fn: Callable[..., object], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, fn, args))

    def advance(self, now: float) -> int:
        """Process every event due by `now`; returns how many ran."""
        ran = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, fn, args = heapq.heappop(heap)
            if at > self.now:
                self.now = at
            fn(*args)
            ran += 1
        if now > self.now:
            self.now = now
        return ran

    def pending_events(self) -> int:
        return len(self._heap)

    # --- things and groups --------------------------------------------------------------

    def _add_group(self, name: str) -> None:
        if name not in self.groups:
            self.groups[name] = {}
            self.group_ids[name] = group_id(self.account_id, name)
            self._next_thing[name] = 0

    def _grow_group(self, name: str, count: int) -> list[str]:
        start = self._next_thing[name]
        things = [f"{name}-{i:05d}" for i in range(start, start + count)]
        self._next_thing[name] = start + count
        self._join(name, things)
        return things

    def _join(self, group: str, things: list[str]) -> None:
        members = self.groups[group]
        joined = []
        for thing in things:
            if thing in members:
                continue
            members[thing] = None
            self.thing_groups.setdefault(thing, set()).add(group)
            joined.append(thing)
        if not joined:
            return
        # Continuous jobs pick up things that join a target group after the job started.
        for job in self.jobs.values():
            if (
                job.status == JOB_IN_PROGRESS
                and not job.rollout_stopped
                and job.spec.target_selection == "CONTINUOUS"
                and _targets_group(job.spec, group)
            ):
                for thing in joined:
                    if thing not in job.known:
                        job.known.add(thing)
                        job.pending[thing] = None
                job.version += 1
                self._kick_rollout(job)

    def _leave(self, group: str, things: list[str]) -> None:
        members = self.groups[group]
        for thing in things:
            if thing not in members:
                continue
            del members[thing]
            self.thing_groups.get(thing, set()).discard(group)
            for job in self.jobs.values():
                if (
                    job.status != JOB_IN_PROGRESS
                    or job.spec.target_selection != "CONTINUOUS"
                    or not _targets_group(job.spec, group)
                    or self._still_targeted(job.spec, thing)
                ):
                    continue
                job.pending.pop(thing, None)
                job.known.discard(thing)
                exe = job.latest.get(thing)
                if exe is not None and exe.status in NON_TERMINAL:
                    self._set_state(job, exe, REMOVED)
                job.version += 1

    def _still_targeted(self, spec: JobSpec, thing: str) -> bool:
        groups = self.thing_groups.get(thing, set())
        return any(
            (t.kind == "thing" and t.name == thing) or (t.kind == "thinggroup" and t.name in groups)
            for t in spec.targets
        )

    def add_things(self, group: str, things: list[str] | None = None, count: int = 0) -> list[str]:
        """Admin: add named things (created if new) or `count` new things to a group."""
        self._add_group(group)
        added = self._grow_group(group, count) if count else []
        if things:
            self._join(group, things)
            added += things
        return added

    def remove_things(
        self, group: str, things: list[str] | None = None, count: int = 0
    ) -> list[str]:
        """Admin: remove named things, or the `count` longest-standing members, from a group."""
        if group not in self.groups:
            raise FleetError("ResourceNotFoundException", f"thing group {group} not found")
        chosen = list(things or [])
        if count:
            chosen += [t for t in list(self.groups[group])[:count] if t not in chosen]
        self._leave(group, chosen)
        return chosen

    def members(self, target: Target) -> list[str]:
        if target.kind == "thing":
            return [target.name]
        return list(self.groups.get(target.name, {}))

    # --- job life cycle -----------------------------------------------------------------

    def ordered_jobs(self) -> list[Job]:
        """Jobs newest first (ListJobs order), cached until a job is created or purged."""
        if self._order is None:
            self._order = sorted(self.jobs.values(), key=lambda j: (-j.created_at, j.job_id))
        return self._order

    def _new_job(self, spec: JobSpec, status: str, created: float) -> Job:
        if spec.job_id in self.jobs:
            raise FleetError("ResourceAlreadyExistsException", f"job {spec.job_id} already exists")
        job = Job(
            spec=spec,
            status=status,
            created_at=created,
            last_updated_at=created,
            rng=random.Random(f"{self.scenario.seed}/job/{spec.job_id}"),
        )
        self.jobs[spec.job_id] = job
        self.deleted.discard(spec.job_id)
        self._order = None
        return job

    def create_job(self, spec: JobSpec) -> Job:
        """Admin: create a job now; its scheduling minutes count from now."""
        origin = self.now
        return self._create(spec, origin)

    def _create_later(self, spec: JobSpec, origin: float) -> None:
        try:
            self._create(spec, origin)
        except FleetError as e:
            # An admin call took the id first; AWS would refuse the second CreateJob too.
            log.warning("scenario job not created job_id=%s reason=%r", spec.job_id, e.message)

    def _create_repeated(self, spec: JobSpec, number: int) -> None:
        """One copy of a repeated job now, and the next one `every_minutes` later."""
        assert spec.every_minutes is not None
        copy = replace(spec, job_id=f"{spec.job_id}-{number:04d}", every_minutes=None)
        self._create_later(copy, self.now)
        self._push(self.now + spec.every_minutes * 60.0, self._create_repeated, spec, number + 1)

    def _create(self, spec: JobSpec, origin: float) -> Job:
        sched = spec.scheduling
        start = (
            _ceil_minute(origin + sched.start_minutes * 60.0)
            if sched and sched.start_minutes is not None
            else None
        )
        end = (
            _ceil_minute(origin + sched.end_minutes * 60.0)
            if sched and sched.end_minutes is not None
            else None
        )
        scheduled = start is not None and start > self.now
        job = self._new_job(spec, JOB_SCHEDULED if scheduled else JOB_IN_PROGRESS, self.now)
        job.scheduled_start = start
        job.scheduled_end = end
        if end is not None:
            self._push(max(end, self.now), self._end, job)
        if scheduled and start is not None:
            self._push(start, self._start, job)
        else:
            self._start(job)
        return job

    def _create_precomputed(self, spec: JobSpec, pre: Precomputed, created: float) -> None:
        job = self._new_job(spec, pre.status, created)
        job.counts.update({s.upper(): n for s, n in pre.counts})
        job.completed_at = max(created, self.start + pre.completed_minutes * 60.0)
        job.last_updated_at = job.completed_at
        job.force_canceled = pre.force_canceled
        job.rollout_stopped = True
        if pre.status == JOB_CANCELED:
            job.reason_code = "USER_CANCELED"

    def _start(self, job: Job) -> None:
        if job.status not in (JOB_SCHEDULED, JOB_IN_PROGRESS) or job.deleting:
            return
        job.status = JOB_IN_PROGRESS
        job.last_updated_at = self.now
        job.version += 1
        for target in job.spec.targets:
            for thing in self.members(target):
                if thing not in job.known:
                    job.known.add(thing)
                    job.pending[thing] = None
        self._kick_rollout(job)
        self._check_complete(job)

    def _end(self, job: Job) -> None:
        if job.status != JOB_IN_PROGRESS or job.deleting:
            return
        behavior = job.spec.scheduling.end_behavior if job.spec.scheduling else None
        if behavior in ("CANCEL", "FORCE_CANCEL"):
            self._cancel(job, force=behavior == "FORCE_CANCEL", reason_code="END_TIME_REACHED")
            return
        job.rollout_stopped = True
        job.pending.clear()
        job.version += 1
        self._check_complete(job)

    def rate_limit(self, job: Job) -> int:
        """Notifications per minute the rollout configuration allows now."""
        return rollout_rate(job.spec.rollout, len(job.rollout_log), job.counts[SUCCEEDED])

    def _kick_rollout(self, job: Job) -> None:
        if job.next_rollout is not None or not job.pending or job.rollout_stopped:
            return
        at = self.now
        if job.last_rollout is not None:
            at = max(at, job.last_rollout + 60.0 / self.rate_limit(job))
        job.next_rollout = at
        self._push(at, self._rollout, job)

    def _rollout(self, job: Job) -> None:
        job.next_rollout = None
        if job.status != JOB_IN_PROGRESS or job.rollout_stopped or job.deleting:
            return
        if not job.pending:
            self._check_complete(job)
            return
        windows = job.spec.scheduling.maintenance_windows if job.spec.scheduling else ()
        if windows and not self._in_window(job):
            at = self._next_window(job, self.now)
            if at is not None:
                job.next_rollout = at
                self._push(at, self._rollout, job)
            return
        thing, _ = job.pending.popitem(last=False)
        job.rollout_log.append(RolloutEntry(self.now, self.rate_limit(job), thing))
        job.last_rollout = self.now
        self._notify(job, thing, 0)
        if job.pending:
            # Spacing by the rate allowed for the next notification keeps every 60-second
            # window at or under the limit, including across exponential increases.
            at = self.now + 60.0 / self.rate_limit(job)
            job.next_rollout = at
            self._push(at, self._rollout, job)
        job.version += 1

    def _in_window(self, job: Job) -> bool:
        assert job.spec.scheduling is not None
        for w in job.spec.scheduling.maintenance_windows:
            # Inside a window when one started in (now - duration, now]; occurrences fall on
            # whole minutes, so search from the first whole minute after `since`.
            since = self.now - w.duration_in_minutes * 60.0
            first = math.floor(since / 60.0) * 60.0 + 60.0
            occurrence = w.cron.next_at_or_after(datetime.fromtimestamp(first, UTC))
            if occurrence is not None and occurrence.timestamp() <= self.now:
                return True
        return False

    def _next_window(self, job: Job, after: float) -> float | None:
        assert job.spec.scheduling is not None
        starts = []
        for w in job.spec.scheduling.maintenance_windows:
            occ = w.cron.next_at_or_after(datetime.fromtimestamp(math.ceil(after / 60) * 60, UTC))
            if occ is not None:
                starts.append(occ.timestamp())
        return min(starts) if starts else None

    def window_starts(self, job: Job, count: int = 7) -> list[float]:
        """The next `count` maintenance-window starts (scheduledJobRollouts)."""
        out: list[float] = []
        at = max(self.now, job.scheduled_start or self.now)
        while len(out) < count:
            nxt = self._next_window(job, at)
            if nxt is None:
                break
            out.append(nxt)
            at = nxt + 60.0
        return out

    # --- executions ---------------------------------------------------------------------

    def _notify(self, job: Job, thing: str, attempt: int) -> None:
        self._execution_number += 1
        previous = job.latest.get(thing)
        if previous is None:
            position = len(job.order)
            job.order.append(thing)
        else:
            position = previous.position
            _index(job, previous.status).discard(position)
        exe = Execution(
            thing, self._execution_number, attempt, QUEUED, self.now, self.now, None, position
        )
        job.latest[thing] = exe
        _index(job, QUEUED).add(position)
        job.counts[QUEUED] += 1
        dev = job.spec.devices
        # Drawn only when asked for, so that scenarios without offline devices draw the
        # same sequence as before there were any.
        offline = dev.offline_probability > 0 and job.rng.random() < dev.offline_probability
        if attempt == 0 and (offline or thing in dev.offline_things):
            # Never picked up: queuedAt and lastUpdatedAt stay at this moment.
            return
        self._push(
            self.now + _draw(job.rng, dev.queued_minutes.low, dev.queued_minutes.high),
            self._pickup,
            job,
            exe,
        )

    def _set_state(self, job: Job, exe: Execution, state: str) -> None:
        job.counts[exe.status] -= 1
        job.counts[state] += 1
        if job.latest.get(exe.thing) is exe:
            _index(job, exe.status).discard(exe.position)
            _index(job, state).add(exe.position)
        exe.status = state
        exe.last_updated_at = self.now
        job.version += 1
        if state not in NON_TERMINAL and self.listeners:
            self._execution_event(job, exe, state)

    # --- job events ---------------------------------------------------------------------

    def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(topic, payload)

    def _execution_event(self, job: Job, exe: Execution, state: str) -> None:
        payload: dict[str, Any] = {
            "eventType": "JOB_EXECUTION",
            "eventId": str(uuid.UUID(int=self._event_rng.getrandbits(128), version=4)),
            "timestamp": int(self.wall_clock()),
            "operation": state.lower(),
            "jobId": job.job_id,
            "thingArn": arn(self.scenario.region, self.account_id, "thing", exe.thing),
            "status": state,
        }
        reasons = job.spec.devices.failure_reasons
        if state in (FAILED, REJECTED, TIMED_OUT) and reasons:
            names = [name for name, _ in reasons]
            weights = [weight for _, weight in reasons]
            reason = self._event_rng.choices(names, weights)[0]
            payload["statusDetails"] = {"reason": reason}
        self._publish(f"$aws/events/jobExecution/{job.job_id}/{state.lower()}", payload)

    def _job_event(self, job: Job, operation: str) -> None:
        if not self.listeners:
            return
        payload: dict[str, Any] = {
            "eventType": "JOB",
            "eventId": str(uuid.UUID(int=self._event_rng.getrandbits(128), version=4)),
            "timestamp": int(self.wall_clock()),
            "operation": operation,
            "jobId": job.job_id,
            # The event's own word, not DescribeJob's: AWS's developer guide ("Jobs
            # events") shows CANCELLATION_IN_PROGRESS where DescribeJob says CANCELED.
            "status": JOB_EVENT_STATUS[operation],
            "targetSelection": job.spec.target_selection,
            "createdAt": int(job.created_at * 1000),
            "lastUpdatedAt": int(job.last_updated_at * 1000),
        }
        if operation == "completed":
            c = job.counts
            payload["completedAt"] = int(self.now * 1000)
            # The completed event carries five of DescribeJob's eight counts.
            payload["jobProcessDetails"] = {
                "numberOfCanceledThings": c[CANCELED],
                "numberOfRejectedThings": c[REJECTED],
                "numberOfFailedThings": c[FAILED],
                "numberOfRemovedThings": c[REMOVED],
                "numberOfSucceededThings": c[SUCCEEDED],
            }
        self._publish(f"$aws/events/job/{job.job_id}/{operation}", payload)

    def _pickup(self, job: Job, exe: Execution) -> None:
        if exe.status != QUEUED or job.deleting:
            return
        dev: Devices = job.spec.devices
        if job.rng.random() < dev.reject_probability:
            self._terminal(job, exe, REJECTED)
            return
        self._set_state(job, exe, IN_PROGRESS)
        exe.started_at = self.now
        stuck = job.rng.random() < dev.stuck_probability or (
            exe.retry_attempt == 0 and exe.thing in dev.stuck_things
        )
        duration = _draw(job.rng, dev.in_progress_minutes.low, dev.in_progress_minutes.high)
        timeout = job.spec.timeout_minutes * 60.0 if job.spec.timeout_minutes else None
        if timeout is not None and (stuck or duration >= timeout):
            self._push(self.now + timeout, self._timeout, job, exe)
        elif not stuck:
            self._push(self.now + duration, self._finish, job, exe)

    def _finish(self, job: Job, exe: Execution) -> None:
        if exe.status != IN_PROGRESS or job.deleting:
            return
        failed = job.rng.random() < job.spec.devices.failure_probability
        self._terminal(job, exe, FAILED if failed else SUCCEEDED)

    def _timeout(self, job: Job, exe: Execution) -> None:
        if exe.status == IN_PROGRESS and not job.deleting:
            self._terminal(job, exe, TIMED_OUT)

    def _terminal(self, job: Job, exe: Execution, state: str) -> None:
        self._set_state(job, exe, state)
        if state == SUCCEEDED and job.spec.destination_package_versions:
            self._report_versions(job, exe.thing)
        if state in (FAILED, TIMED_OUT) and job.status == JOB_IN_PROGRESS:
            self._maybe_retry(job, exe, state)
        self._check_abort(job)
        self._check_complete(job)

    def _report_versions(self, job: Job, thing: str) -> None:
        """AWS IoT Jobs updates the thing's `$package` shadow to the job's versions."""
        if not self.scenario.version_update_by_jobs:
            return
        lost = job.spec.devices.unreported_probability
        # Drawn only when asked for, so that other scenarios draw as before.
        if lost > 0 and job.rng.random() < lost:
            return
        for value in job.spec.destination_package_versions:
            parsed = parse_version_arn(value)
            if parsed is not None:
                self.packages.report(self.now, parsed[0], thing, parsed[1])

    def report_version(self, group: str, package: str, version: str, count: int) -> list[str]:
        """Up to `count` things of `group` not on `version` report it, without a job."""
        reported = self.packages.shadows.get(package)
        if reported is None or version not in self.packages.versions[package]:
            raise FleetError("ResourceNotFoundException", f"{package}/{version} not in the catalog")
        chosen = [t for t in self.groups.get(group, {}) if reported.by_thing.get(t) != version][
            :count
        ]
        for thing in chosen:
            self.packages.report(self.now, package, thing, version)
        return chosen

    def _maybe_retry(self, job: Job, exe: Execution, state: str) -> None:
        allowed: dict[str, int] = {c.failure_type: c.number_of_retries for c in job.spec.retry}
        kind = state if state in allowed else "ALL"
        if kind not in allowed:
            return
        key = (exe.thing, kind)
        used = job.retries.get(key, 0)
        if used < allowed[kind]:
            job.retries[key] = used + 1
            self._notify(job, exe.thing, exe.retry_attempt + 1)

    def _check_abort(self, job: Job) -> None:
        if job.status != JOB_IN_PROGRESS or not job.spec.abort:
            return
        c = job.counts
        executed = c[SUCCEEDED] + c[FAILED] + c[REJECTED] + c[TIMED_OUT]
        failures = {
            "FAILED": c[FAILED],
            "REJECTED": c[REJECTED],
            "TIMED_OUT": c[TIMED_OUT],
            "ALL": c[FAILED] + c[REJECTED] + c[TIMED_OUT],
        }
        for crit in job.spec.abort:
            if executed >= crit.min_number_of_executed_things and (
                failures[crit.failure_type] * 100.0 >= crit.threshold_percentage * executed
            ):
                comment = (
                    f"Job aborted: {crit.failure_type} executions reached "
                    f"{crit.threshold_percentage:g}% of {executed} executed things"
                )
                self._cancel(
                    job,
                    force=False,
                    reason_code=ABORT_REASON_CODE,
                    comment=comment,
                    everything=True,
                )
                return

    def _check_complete(self, job: Job) -> None:
        if (
            job.status == JOB_IN_PROGRESS
            and job.spec.target_selection == "SNAPSHOT"
            and not job.rolling_out
            and job.counts[QUEUED] == 0
            and job.counts[IN_PROGRESS] == 0
        ):
            job.status = JOB_COMPLETED
            job.completed_at = self.now
            job.last_updated_at = self.now
            job.version += 1
            self._job_event(job, "completed")

    # --- cancel and delete --------------------------------------------------------------

    def cancel_job(
        self,
        job_id: str,
        *,
        force: bool = False,
        reason_code: str | None = None,
        comment: str | None = None,
    ) -> Job:
        """Admin: CancelJob."""
        job = self.get(job_id)
        if job.status not in (JOB_IN_PROGRESS, JOB_SCHEDULED):
            raise FleetError(
                "InvalidRequestException", f"job {job_id} is {job.status}, not cancelable"
            )
        self._cancel(job, force=force, reason_code=reason_code, comment=comment)
        return job

    def _cancel(
        self,
        job: Job,
        *,
        force: bool,
        reason_code: str | None = None,
        comment: str | None = None,
        everything: bool = False,
    ) -> None:
        job.status = JOB_CANCELED
        job.force_canceled = force
        job.reason_code = reason_code
        job.comment = comment
        job.completed_at = self.now
        job.last_updated_at = self.now
        job.rollout_stopped = True
        job.pending.clear()
        job.next_rollout = None
        for exe in job.latest.values():
            if exe.status == QUEUED:
                self._set_state(job, exe, CANCELED)
        # Canceling takes a while on AWS (isConcurrent is true meanwhile); in-progress
        # executions go at the end of it when forced or aborted, else they run to their end.
        job.cancel_in_progress = force or everything
        job.canceling_until = self.now + self.scenario.cancel_minutes * 60.0
        job.version += 1
        self._job_event(job, "cancellation_in_progress")
        self._push(job.canceling_until, self._cancel_done, job)

    def _cancel_done(self, job: Job) -> None:
        if job.deleting:
            return
        if job.cancel_in_progress:
            for exe in job.latest.values():
                if exe.status in NON_TERMINAL:
                    self._set_state(job, exe, CANCELED)
        job.canceling_until = None
        job.version += 1
        self._job_event(job, "canceled")

    def delete_job(self, job_id: str) -> Job:
        """Admin: DeleteJob (always forced): DELETION_IN_PROGRESS for a while, then gone."""
        job = self.get(job_id)
        if job.deleting:
            raise FleetError("InvalidRequestException", f"job {job_id} is already being deleted")
        job.deleting = True
        job.status = JOB_DELETING
        job.last_updated_at = self.now
        job.rollout_stopped = True
        job.pending.clear()
        job.next_rollout = None
        job.canceling_until = None
        job.version += 1
        self._job_event(job, "deletion_in_progress")
        self._push(self.now + self.scenario.deletion_minutes * 60.0, self._purge, job)
        return job

    def _purge(self, job: Job) -> None:
        if self.jobs.get(job.job_id) is job:
            del self.jobs[job.job_id]
            self.deleted.add(job.job_id)
            self._order = None
            self._job_event(job, "deleted")

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise FleetError("ResourceNotFoundException", f"Job {job_id} cannot be found.")
        return job

    def _timeline(self, event: TimelineEvent) -> None:
        try:
            if event.action == "add_things" and event.group:
                self.add_things(event.group, count=event.count)
            elif event.action == "remove_things" and event.group:
                self.remove_things(event.group, count=event.count)
            elif event.action == "cancel_job" and event.job_id:
                self.cancel_job(
                    event.job_id,
                    force=event.force,
                    reason_code=event.reason_code,
                    comment=event.comment,
                )
            elif event.action == "delete_job" and event.job_id:
                self.delete_job(event.job_id)
            elif event.action == "report_version" and event.group and event.package:
                self.report_version(event.group, event.package, event.version or "", event.count)
        except FleetError:
            # A timeline step on a job that already ended (say, aborted before its planned
            # cancel) is a no-op, as it would be against AWS.
            pass
        finally:
            if event.every_minutes is not None:
                self._push(self.now + event.every_minutes * 60.0, self._timeline, event)

    # --- bulk generation ----------------------------------------------------------------

    def _generate(self, gen: Generate) -> None:
        """Scale scenario: terminal jobs get precomputed counts; only active ones simulate."""
        rng = random.Random(f"{self.scenario.seed}/generate")
        names = [f"scale-group-{g:04d}" for g in range(gen.groups)]
        for name in names:
            if name not in self.groups:
                self._add_group(name)
                self._grow_group(name, gen.things_per_group)
        dev = self.scenario.devices
        n = gen.things_per_group
        for i in range(gen.jobs):
            group = names[i % len(names)]
            job_id = f"scale-job-{i:05d}"
            u = rng.random()
            created_minutes = -rng.uniform(60.0, 30 * 24 * 60.0)
            if u < gen.active_ratio:
                spec = JobSpec(
                    job_id=job_id,
                    targets=(Target("thinggroup", group),),
                    target_selection="CONTINUOUS",
                    created_minutes=-rng.uniform(0.0, 30.0),
                    description=f"Generated active job {i}",
                    rollout=Rollout(maximum_per_minute=gen.maximum_per_minute),
                    devices=dev,
                )
                self._push(
                    self.start + spec.created_minutes * 60.0, self._create_later, spec, self.start
                )
                continue
            canceled = u < gen.active_ratio + gen.canceled_ratio
            failed = round(n * dev.failure_probability * rng.uniform(0.5, 1.5))
            rejected = round(n * dev.reject_probability * rng.uniform(0.5, 1.5))
            timed_out = round(n * dev.stuck_probability * rng.uniform(0.5, 1.5))
            canceled_n = rng.randint(1, max(1, n // 2)) if canceled else 0
            succeeded = max(0, n - failed - rejected - timed_out - canceled_n)
            counts = (
                ("succeeded", succeeded),
                ("failed", failed),
                ("rejected", rejected),
                ("timed_out", timed_out),
                ("canceled", canceled_n),
            )
            pre = Precomputed(
                status=JOB_CANCELED if canceled else JOB_COMPLETED,
                completed_minutes=created_minutes + rng.uniform(10.0, 600.0),
                counts=counts,
            )
            spec = JobSpec(
                job_id=job_id,
                targets=(Target("thinggroup", group),),
                created_minutes=created_minutes,
                description=f"Generated job {i}",
                rollout=Rollout(maximum_per_minute=gen.maximum_per_minute),
                devices=dev,
                precomputed=pre,
            )
            self._create_precomputed(spec, pre, self.start + created_minutes * 60.0)

    # --- views --------------------------------------------------------------------------

    def executions(self, job: Job) -> Iterator[Execution]:
        """Latest execution per thing; precomputed jobs get executions made up from counts."""
        if job.spec.precomputed is None:
            yield from job.latest.values()
            return
        things: list[str] = []
        for t in job.spec.targets:
            things += self.members(t)
        states = [s for s in EXECUTION_STATES for _ in range(job.counts[s])]
        at = job.completed_at or job.created_at
        for i, (thing, state) in enumerate(zip(things, states, strict=False)):
            yield Execution(thing, i + 1, 0, state, job.created_at, at, job.created_at, i)

    def page(
        self, job: Job, status: str | None, after: int, limit: int
    ) -> tuple[list[Execution], bool]:
        """Up to `limit` latest executions (of `status`, if given) positioned after `after`,
        in position order, and whether more follow.

        Keyset pagination: a page starts after the last position the previous one returned,
        so executions that change state between pages never shift the others, and no
        unchanged execution is returned twice or skipped.
        """
        if job.spec.precomputed is not None:
            # Terminal jobs made up from counts: a scan, but only of a finished job.
            found = [
                e
                for e in self.executions(job)
                if e.position > after and (status is None or e.status == status)
            ]
            return found[:limit], len(found) > limit
        if status is None:
            positions: Iterable[int] = range(after + 1, min(len(job.order), after + 2 + limit))
        else:
            index = job.by_status.get(status)
            positions = index.after(after, limit + 1) if index is not None else ()
        found = [job.latest[job.order[p]] for p in positions]
        return found[:limit], len(found) > limit

    def truth(self) -> dict[str, Any]:
        """Ground truth for tests: what DescribeJob reports for every job right now."""
        return {
            job.job_id: {
                "status": job.status,
                "targetSelection": job.spec.target_selection,
                "isConcurrent": job.is_concurrent,
                "executions": {s.lower(): n for s, n in job.counts.items()},
                "notified": len(job.rollout_log),
                "rateLimitPerMinute": self.rate_limit(job),
            }
            for job in self.jobs.values()
        }


def _targets_of(fleet: Fleet, spec: JobSpec) -> set[str]:
    things: set[str] = set()
    for t in spec.targets:
        things.update(fleet.members(t))
    return things


def _by_group(fleet: Fleet, reported: dict[str, str]) -> dict[str, Any]:
    groups = {}
    for group, members in fleet.groups.items():
        counts: dict[str, int] = {}
        for thing in members:
            version = reported.get(thing)
            if version is not None:
                counts[version] = counts.get(version, 0) + 1
        groups[group] = {
            "things": len(members),
            "versions": dict(sorted(counts.items())),
            "unreported": len(members) - sum(counts.values()),
        }
    return groups


def package_truth(fleet: Fleet) -> dict[str, Any]:
    """Ground truth for tests: who reports which version, per group and per job.

    `versions`, `groups` and each job's `on_version` are the shadows now; `indexed` is the
    same as fleet indexing answers it now (the shadows `lag_seconds` ago).
    """
    pk = fleet.packages
    out: dict[str, Any] = {}
    everyone = set(fleet.thing_groups)
    for name, spec in pk.specs.items():
        truth, index = pk.shadows[name], pk.indexed[name]
        out[name] = {
            "default_version": spec.default_version,
            "statuses": {v.name: v.status for v in spec.versions},
            "things": len(everyone),
            "versions": dict(sorted(truth.counts.items())),
            "unreported": len(everyone) - len(truth.by_thing),
            "groups": _by_group(fleet, truth.by_thing),
            "indexed": {
                "versions": dict(sorted(index.counts.items())),
                "unreported": len(everyone) - len(index.by_thing),
                "groups": _by_group(fleet, index.by_thing),
            },
        }
    jobs: dict[str, Any] = {}
    for job in fleet.jobs.values():
        destinations = [
            parsed
            for parsed in map(parse_version_arn, job.spec.destination_package_versions)
            if parsed is not None
        ]
        if not destinations:
            continue
        targets = _targets_of(fleet, job.spec)
        succeeded = {t for t, e in job.latest.items() if e.status == SUCCEEDED}
        per_version = []
        for package, version in destinations:
            truth_of = pk.shadows.get(package)
            index_of = pk.indexed.get(package)
            on = {t for t in targets if truth_of and truth_of.by_thing.get(t) == version}
            on_indexed = {t for t in targets if index_of and index_of.by_thing.get(t) == version}
            groups = [t.name for t in job.spec.targets if t.kind == "thinggroup"]
            per_version.append(
                {
                    "package": package,
                    "version": version,
                    "on_version": len(on),
                    "groups": {g: len(on & set(fleet.groups.get(g, {}))) for g in groups},
                    "succeeded_not_on_version": len(succeeded - on),
                    "on_version_not_succeeded": len(on - succeeded),
                    "indexed": {
                        "on_version": len(on_indexed),
                        "groups": {
                            g: len(on_indexed & set(fleet.groups.get(g, {}))) for g in groups
                        },
                    },
                }
            )
        jobs[job.job_id] = {
            "targets": len(targets),
            "succeeded": job.counts[SUCCEEDED],
            "destinations": per_version,
        }
    return {"packages": out, "jobs": jobs, "pending_index_updates": pk.pending()}


def rollout_rate(rollout: Rollout | None, notified: int, succeeded: int) -> int:
    """The rate AWS allows after `notified` notifications and `succeeded` successes."""
    maximum = DEFAULT_MAXIMUM_PER_MINUTE
    if rollout is None:
        return maximum
    if rollout.maximum_per_minute is not None:
        maximum = rollout.maximum_per_minute
    exp = rollout.exponential_rate
    if exp is None:
        return maximum
    crit = exp.rate_increase_criteria
    if crit.number_of_notified_things:
        steps = notified // crit.number_of_notified_things
    else:
        steps = succeeded // (crit.number_of_succeeded_things or 1)
    # Compare in log space: incrementFactor ** steps overflows a float for long rollouts.
    if steps * math.log(exp.increment_factor) >= math.log(maximum / exp.base_rate_per_minute):
        return maximum
    return max(1, min(maximum, int(exp.base_rate_per_minute * exp.increment_factor**steps)))


def _index(job: Job, status: str) -> SortedPositions:
    index = job.by_status.get(status)
    if index is None:
        index = job.by_status[status] = SortedPositions()
    return index


def _targets_group(spec: JobSpec, group: str) -> bool:
    return any(t.kind == "thinggroup" and t.name == group for t in spec.targets)


def _draw(rng: random.Random, low_minutes: float, high_minutes: float) -> float:
    return rng.uniform(low_minutes, high_minutes) * 60.0


def _ceil_minute(epoch: float) -> float:
    return math.ceil(epoch / 60.0) * 60.0
