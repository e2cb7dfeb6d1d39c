"""DescribeJob responses into immutable JobSnapshots: pure, tolerant of absent fields, new enums."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from exporter.cron import CronError, CronExpression
from exporter.executions import ExecutionSweep, TimeInState, server_time

# Every JobStatus AWS documents. SCHEDULED is botocore's enum value the field's own doc
# string forgets; a value not listed here is still read and exported as it comes.
JOB_STATUSES = ("IN_PROGRESS", "CANCELED", "COMPLETED", "DELETION_IN_PROGRESS", "SCHEDULED")
TERMINAL_STATUSES = frozenset({"COMPLETED", "CANCELED"})
# The order a job's status moves in: in progress (or scheduled), then terminal, then being
# deleted. An event never moves a job back down (JobSnapshot.with_job_event).
_STATUS_RANK = {"COMPLETED": 1, "CANCELED": 1, "DELETION_IN_PROGRESS": 2}
# The states an execution ends from, and (JobSnapshot.with_execution_end) the one each way
# of ending most often leaves first: a rejection, removal or cancellation comes mostly
# before a device started.
_LIVE_STATES = ("in_progress", "queued")
_LEFT_FROM = {s: ("queued", "in_progress") for s in ("rejected", "removed", "canceled")}
# A job id as CreateJob allows it: 1-64 letters, digits, '-' or '_'. Match with fullmatch.
JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EXECUTION_STATES = (
    ("queued", "numberOfQueuedThings"),
    ("in_progress", "numberOfInProgressThings"),
    ("succeeded", "numberOfSucceededThings"),
    ("failed", "numberOfFailedThings"),
    ("rejected", "numberOfRejectedThings"),
    ("canceled", "numberOfCanceledThings"),
    ("removed", "numberOfRemovedThings"),
    ("timed_out", "numberOfTimedOutThings"),
)
# AWS's documented ceiling for maximumPerMinute, the rate an exponential rollout tops out at
# when no maximum is set.
DEFAULT_MAXIMUM_PER_MINUTE = 1000

# Maintenance windows read per job. botocore's IoT model declares no maximum for the
# MaintenanceWindows list (each window is bounded: startTime ≤ 256 characters, duration
# 1-1430 minutes), so a hostile or broken answer could carry any number, each costing a
# cron search and up to five series on every render (issue 18, D5: 20,000 took 17 s of the
# event loop). A maintenance schedule is a handful of windows; 100 leaves ample room and
# bounds a job's window series at 500. Windows past it are counted, not read.
MAX_MAINTENANCE_WINDOWS = 100

# botocore's `long`: the largest count or number AWS's model allows.
_MAX_LONG = 2**63 - 1
_ARN = re.compile(r"^arn:[^:]*:[^:]*:([^:]*):(\d*):(.*)$")


class MalformedJob(ValueError):
    """A DescribeJob response the exporter cannot read; the message names the field."""


@dataclass(frozen=True, slots=True)
class AbortCriterion:
    failure_type: str
    action: str | None
    threshold_percentage: float | None
    min_executed_things: int | None


@dataclass(frozen=True, slots=True)
class RetryCriterion:
    failure_type: str
    number_of_retries: int | None


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    start_time: str
    start_timestamp: float | None
    duration_minutes: int | None

    # AWS gives the start as a cron recurrence in UTC (`cron(0 2 ? * SUN *)`); a date-time
    # is read too. A window is open from an occurrence for duration_minutes. Both readings
    # take the instant as an argument: the metric table asks at the snapshot's fetched_at.

    def next_start(self, now: float) -> float | None:
        """The first start at or after `now`, Unix seconds; None when there is none or the
        start cannot be read."""
        if self.start_timestamp is not None:
            return self.start_timestamp if self.start_timestamp >= now else None
        readable, found = self._occurrence(now)
        return found if readable else None

    def open_at(self, now: float) -> bool | None:
        """Whether a window is open at `now`; None without a duration or a readable start."""
        opened = _open_since(self, now)
        return None if opened is None else opened[0]

    def closes_at(self, now: float) -> float | None:
        """When the occurrence open at `now` closes, Unix seconds; None when none is open
        or that cannot be read."""
        opened = _open_since(self, now)
        if opened is None or not opened[0] or self.duration_minutes is None:
            return None
        return opened[1] + self.duration_minutes * 60.0

    def _open_since(self, now: float) -> tuple[bool, float] | None:
        """Whether a window is open at `now` and, if so, when its occurrence started;
        None without a duration or a readable start."""
        if self.duration_minutes is None or not math.isfinite(now):
            return None
        length = self.duration_minutes * 60.0
        if self.start_timestamp is not None:
            start = self.start_timestamp
            return start <= now < start + length, start
        # The earliest occurrence that could still be open started `length` ago.
        readable, recent = self._occurrence(now - length)
        if not readable:
            return None
        # A recurrence that never starts again (30 FEB, a past year) is closed, not open
        # from 1970 on.
        if recent is None:
            return False, 0.0
        return recent <= now < recent + length, recent

    def _occurrence(self, at: float) -> tuple[bool, float | None]:
        """Whether the recurrence and the instant can be read, and if so the first
        occurrence at or after `at` (None: there is none, ever)."""
        cron = _cron(self.start_time)
        if cron is None or not math.isfinite(at):
            return False, None
        try:
            found = cron.next_at_or_after(datetime.fromtimestamp(at, UTC))
        except (OverflowError, ValueError, OSError):
            # An instant outside the calendar: nothing to say about the window.
            return False, None
        return True, None if found is None else found.timestamp()


# Two rows of the metric table (open, closes) ask the same question of each window at the
# snapshot's fetched_at: one search answers both.
@functools.lru_cache(maxsize=4096)
def _open_since(window: MaintenanceWindow, now: float) -> tuple[bool, float] | None:
    return window._open_since(now)


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """What one successful DescribeJob said about a job, plus when it was read."""

    job_id: str
    fetched_at: float
    job_arn: str | None = None
    account_id: str = ""
    target_selection: str | None = None
    status: str | None = None
    force_canceled: bool | None = None
    reason_code: str | None = None
    targets: tuple[str, ...] = ()
    presigned_url_role_arn: str | None = None
    presigned_url_expires_in_sec: int | None = None
    rollout_maximum_per_minute: int | None = None
    rollout_base_rate_per_minute: int | None = None
    rollout_increment_factor: float | None = None
    rollout_notified_threshold: int | None = None
    rollout_succeeded_threshold: int | None = None
    abort_criteria: tuple[AbortCriterion, ...] = ()
    created_at: float | None = None
    last_updated_at: float | None = None
    completed_at: float | None = None
    # Execution counts by state name (EXECUTION_STATES order); None when jobProcessDetails
    # is absent, and a state is missing from the tuple when AWS left its count out.
    executions: tuple[tuple[str, int], ...] | None = None
    processing_targets: int | None = None
    in_progress_timeout_minutes: int | None = None
    namespace_id: str | None = None
    job_template_arn: str | None = None
    retry_criteria: tuple[RetryCriterion, ...] = ()
    is_concurrent: bool | None = None
    scheduling_start: float | None = None
    scheduling_end: float | None = None
    end_behavior: str | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()
    # Windows the answer listed past MAX_MAINTENANCE_WINDOWS, not read.
    maintenance_windows_dropped: int = 0
    scheduled_rollouts: tuple[float, ...] = ()
    package_versions: tuple[str, ...] = ()
    observed_rate_per_minute: float | None = None
    # The answer's Date header (AWS's clock, whole seconds) when within the sweeps'
    # max_clock_skew of the host's: which execution events it may already hold.
    answered_at: float | None = None
    # Beyond DescribeJob, what the exporter learnt of the job's executions; the collector
    # carries these from one snapshot of the job to the next (`carry`).
    # The last complete ListJobExecutionsForJob sweep of its QUEUED and IN_PROGRESS ones.
    sweep: ExecutionSweep | None = None
    # How long its finished executions were queued and ran.
    time_in_state: TimeInState | None = None
    # Failed, rejected and timed-out execution events: (status, reason, count).
    execution_events: tuple[tuple[str, str, int], ...] = ()

    def carry(self, previous: JobSnapshot | None) -> JobSnapshot:
        """This snapshot with what `previous` knew beyond DescribeJob."""
        if previous is None or (
            previous.sweep is None
            and previous.time_in_state is None
            and not previous.execution_events
        ):
            return self
        return replace(
            self,
            sweep=previous.sweep,
            time_in_state=previous.time_in_state,
            execution_events=previous.execution_events,
        )

    def with_job_event(
        self,
        status: str,
        last_updated_at: float | None,
        completed_at: float | None = None,
        counts: tuple[tuple[str, int], ...] | None = None,
    ) -> JobSnapshot:
        """This snapshot with what a job event says (in DescribeJob's words), or itself
        when the event is older than what the snapshot knows.

        Older means an earlier lastUpdatedAt than the describe's (both AWS's clock), or a
        status behind the snapshot's: a job never goes back from terminal to in progress,
        nor from deletion to anything else. What only DescribeJob knows stays as it was,
        fetched_at included: the data's age is the describe's, the status the event's.
        """
        if (
            self.last_updated_at is not None
            and last_updated_at is not None
            and last_updated_at < self.last_updated_at
        ):
            return self
        rank, own = _STATUS_RANK.get(status, 0), _STATUS_RANK.get(self.status or "", 0)
        if rank < own:
            return self
        newer = (
            last_updated_at is not None
            and self.last_updated_at is not None
            and last_updated_at > self.last_updated_at
        )
        if rank == own and rank > 0 and status != self.status and not newer:
            # The other terminal status, and not known to be the later word.
            return self
        changes: dict[str, Any] = {"status": status}
        if last_updated_at is not None:
            changes["last_updated_at"] = max(last_updated_at, self.last_updated_at or 0.0)
        if completed_at is not None:
            changes["completed_at"] = completed_at
        if counts is not None:
            given = dict(counts)
            executions = [
                (state, given.pop(state, value)) for state, value in self.executions or ()
            ]
            # AWS completes a job once none of its executions is queued or in progress.
            executions = [
                (state, 0 if state in ("queued", "in_progress") else value)
                for state, value in executions
            ]
            executions.extend(given.items())
            order = {state: i for i, (state, _) in enumerate(EXECUTION_STATES)}
            changes["executions"] = tuple(sorted(executions, key=lambda e: order.get(e[0], 99)))
        updated = replace(self, **changes)
        return self if updated == self else updated

    def with_execution_end(
        self, state: str, at: float | None, was: str | None = None
    ) -> JobSnapshot:
        """This snapshot with one execution's end counted, as its event says: one more in
        `state` (a terminal state's name, as in `executions`), one fewer in the state it
        left; or itself when the describe may already hold it.

        Counted only when the event is certainly newer than the describe's answer
        (`at`, AWS's whole seconds, after `fetched_at` on the host's clock and after
        `answered_at` on AWS's): an older one, or one in the same
        second, may be in the answer already, and counting it twice is the error never
        made; its job's describe shows it. Nor on a job in a terminal status: its last
        executions decide when it is frozen, which only a describe may say. The state left
        is `was` when a sweep saw the execution (queued or in progress), else the one an
        execution ending this way most often leaves: in progress for a success, a failure
        or a timeout, queued for a rejection, a removal or a cancellation; the other when
        that one is 0. A describe replaces all of it with AWS's counts.
        """
        if at is None or self.terminal or self.executions is None:
            return self
        # On both clocks: a host behind AWS's would otherwise count an end twice.
        if at <= self.fetched_at or (self.answered_at is not None and at <= self.answered_at):
            return self
        counts = dict(self.executions)
        if state not in counts or state in _LIVE_STATES:
            return self
        order: tuple[str, ...] = (was,) if was is not None and was in _LIVE_STATES else ()
        order += _LEFT_FROM.get(state, _LIVE_STATES)
        left = next((s for s in order if counts.get(s, 0) > 0), None)
        counts[state] += 1
        if left is not None:
            counts[left] -= 1
        return replace(self, executions=tuple((s, counts[s]) for s, _ in self.executions))

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def frozen(self) -> bool:
        """Terminal and no longer changing: describing it again would return the same.

        A job canceled without force lets executions already in progress run to their
        end after isConcurrent is false again, so those must reach zero too.
        """
        if not self.terminal or self.is_concurrent is True:
            return False
        return not (self.execution_count("queued") or self.execution_count("in_progress"))

    @property
    def ended_at(self) -> float | None:
        return self.completed_at if self.completed_at is not None else self.last_updated_at

    def execution_count(self, state: str) -> int | None:
        for name, value in self.executions or ():
            if name == state:
                return value
        return None

    @property
    def executions_created(self) -> int | None:
        """Every execution the job has created, whatever its state."""
        if self.executions is None:
            return None
        return sum(value for _, value in self.executions)

    def rollout_rate_limit(self) -> float | None:
        """The notification rate the rollout config allows now (docs/metrics.md)."""
        maximum = self.rollout_maximum_per_minute
        base = self.rollout_base_rate_per_minute
        if base is None:
            return float(maximum) if maximum is not None else None
        cap = float(maximum if maximum is not None else DEFAULT_MAXIMUM_PER_MINUTE)
        factor = self.rollout_increment_factor or 1.0
        increases = 0
        if self.rollout_notified_threshold:
            increases = (self.executions_created or 0) // self.rollout_notified_threshold
        elif self.rollout_succeeded_threshold:
            succeeded = self.execution_count("succeeded") or 0
            increases = succeeded // self.rollout_succeeded_threshold
        if factor <= 1.0 or increases == 0:
            return min(float(base), cap)
        # Past the cap the exact power no longer matters, and it could overflow a float.
        limit = float(base)
        for _ in range(increases):
            limit *= factor
            if limit >= cap:
                return cap
        return limit

    def with_observed_rate(self, previous: JobSnapshot | None) -> JobSnapshot:
        """This snapshot with the creation rate measured against the previous one."""
        rate = previous.observed_rate_per_minute if previous is not None else None
        if previous is not None:
            now, before = self.executions_created, previous.executions_created
            minutes = (self.fetched_at - previous.fetched_at) / 60.0
            if now is not None and before is not None and minutes > 0:
                rate = max(0.0, (now - before) / minutes)
        return dataclasses.replace(self, observed_rate_per_minute=rate)


class _Fields:
    """Typed access to one JSON object, naming the field path in every error."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise MalformedJob(f"{path}: expected an object, got {type(data).__name__}")
        self.data = data
        self.path = path

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}"

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise MalformedJob(f"{self._where(key)}: expected a string")
        return _text(value, self._where(key))

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_LONG:
            raise MalformedJob(f"{self._where(key)}: expected a non-negative integer")
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedJob(f"{self._where(key)}: expected a number")
        # JSON integers have no bound; one past a float's range would overflow later.
        if isinstance(value, int) and abs(value) > _MAX_LONG:
            raise MalformedJob(f"{self._where(key)}: expected a number in range")
        if not math.isfinite(value):
            raise MalformedJob(f"{self._where(key)}: expected a finite number")
        return float(value)

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise MalformedJob(f"{self._where(key)}: expected a boolean")
        return value

    def timestamp(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        seconds = to_timestamp(value)
        if seconds is None:
            raise MalformedJob(f"{self._where(key)}: expected a timestamp")
        return seconds

    def obj(self, key: str) -> _Fields | None:
        value = self.data.get(key)
        if value is None:
            return None
        return _Fields(value, self._where(key))

    def objects(self, key: str, limit: int | None = None) -> list[_Fields]:
        """The list's objects, the first `limit` of them when given."""
        if not self.length(key):
            return []
        items = self.data[key][:limit]
        return [_Fields(item, f"{self._where(key)}[{i}]") for i, item in enumerate(items)]

    def length(self, key: str) -> int:
        value = self.data.get(key)
        if value is None:
            return 0
        if not isinstance(value, list):
            raise MalformedJob(f"{self._where(key)}: expected a list")
        return len(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MalformedJob(f"{self._where(key)}: expected a list of strings")
        return tuple(_text(text, self._where(key)) for text in value)


def _text(value: str, where: str) -> str:
    """The string as is, unless it cannot be encoded (JSON allows lone UTF-16 surrogates)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedJob(f"{where}: not valid Unicode text") from None
    return value


def to_timestamp(value: Any) -> float | None:
    """Unix seconds from botocore's datetime, raw epoch seconds, or an ISO 8601 string."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return parse_schedule_time(value)
    return None


def parse_schedule_time(text: str) -> float | None:
    """The API's `YYYY-MM-DDTHH:MM` scheduling strings (UTC), or fuller ISO 8601; else None."""
    candidate = text.strip()
    if candidate.endswith("Z"):
        candidate = candidate[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@functools.lru_cache(maxsize=256)
def _cron(expression: str) -> CronExpression | None:
    # A fleet's jobs share a few recurrences: parse each once.
    try:
        return CronExpression.parse(expression)
    except CronError:
        return None


def account_of(job_arn: str | None) -> str:
    if not job_arn:
        return ""
    match = _ARN.match(job_arn)
    return match.group(2) if match else ""


def target_type(target_arn: str) -> str:
    """`thing`, `thinggroup`, or whatever resource type a future ARN carries."""
    match = _ARN.match(target_arn)
    if not match:
        return "unknown"
    resource = match.group(3)
    return resource.split("/", 1)[0] if "/" in resource else "unknown"


def answer_time(response: Any, host: float, max_skew: float) -> float | None:
    """The answer's Date header, when it is one and within `max_skew` of the host's clock:
    a Date further off (a proxy's, a broken server's) is not believed, and the host's
    clock alone then decides."""
    at = server_time(response)
    return at if at is not None and abs(at - host) <= max_skew else None


def parse_describe_job(
    response: Any, fetched_at: float, max_clock_skew: float | None = None
) -> JobSnapshot:
    """A JobSnapshot from a DescribeJob response; raises MalformedJob naming the bad field.
    With `max_clock_skew`, the answer's Date is read too (JobSnapshot.answered_at)."""
    top = _Fields(response, "response")
    job = top.obj("job")
    if job is None:
        raise MalformedJob("response.job: missing")
    job_id = job.string("jobId")
    if not job_id:
        raise MalformedJob("response.job.jobId: missing")
    job_arn = job.string("jobArn")

    presigned = job.obj("presignedUrlConfig")
    rollout = job.obj("jobExecutionsRolloutConfig")
    exponential = rollout.obj("exponentialRate") if rollout else None
    criteria = exponential.obj("rateIncreaseCriteria") if exponential else None
    abort = job.obj("abortConfig")
    retry = job.obj("jobExecutionsRetryConfig")
    timeout = job.obj("timeoutConfig")
    scheduling = job.obj("schedulingConfig")

    executions: tuple[tuple[str, int], ...] | None = None
    processing: int | None = None
    details = job.obj("jobProcessDetails")
    if details is not None:
        counts = []
        for state, key in EXECUTION_STATES:
            count = details.integer(key)
            if count is not None:
                counts.append((state, count))
        executions = tuple(counts)
        processing = len(details.strings("processingTargets"))

    abort_criteria = tuple(
        AbortCriterion(
            failure_type=c.string("failureType") or "UNKNOWN",
            action=c.string("action"),
            threshold_percentage=c.number("thresholdPercentage"),
            min_executed_things=c.integer("minNumberOfExecutedThings"),
        )
        for c in (abort.objects("criteriaList") if abort else [])
    )
    retry_criteria = tuple(
        RetryCriterion(
            failure_type=c.string("failureType") or "UNKNOWN",
            number_of_retries=c.integer("numberOfRetries"),
        )
        for c in (retry.objects("criteriaList") if retry else [])
    )
    windows = []
    listed = scheduling.length("maintenanceWindows") if scheduling else 0
    for w in (
        scheduling.objects("maintenanceWindows", MAX_MAINTENANCE_WINDOWS) if scheduling else []
    ):
        start = w.string("startTime") or ""
        windows.append(
            MaintenanceWindow(start, parse_schedule_time(start), w.integer("durationInMinutes"))
        )
    rollouts = []
    for r in job.objects("scheduledJobRollouts"):
        start_text = r.string("startTime")
        start_ts = parse_schedule_time(start_text) if start_text else None
        if start_ts is not None:
            rollouts.append(start_ts)
    versions = job.strings("destinationPackageVersions")

    return JobSnapshot(
        job_id=job_id,
        fetched_at=fetched_at,
        answered_at=(
            None if max_clock_skew is None else answer_time(response, fetched_at, max_clock_skew)
        ),
        job_arn=job_arn,
        account_id=account_of(job_arn),
        target_selection=job.string("targetSelection"),
        status=job.string("status"),
        force_canceled=job.boolean("forceCanceled"),
        reason_code=job.string("reasonCode"),
        targets=job.strings("targets"),
        presigned_url_role_arn=presigned.string("roleArn") if presigned else None,
        presigned_url_expires_in_sec=presigned.integer("expiresInSec") if presigned else None,
        rollout_maximum_per_minute=rollout.integer("maximumPerMinute") if rollout else None,
        rollout_base_rate_per_minute=(
            exponential.integer("baseRatePerMinute") if exponential else None
        ),
        rollout_increment_factor=exponential.number("incrementFactor") if exponential else None,
        rollout_notified_threshold=criteria.integer("numberOfNotifiedThings") if criteria else None,
        rollout_succeeded_threshold=(
            criteria.integer("numberOfSucceededThings") if criteria else None
        ),
        abort_criteria=abort_criteria,
        created_at=job.timestamp("createdAt"),
        last_updated_at=job.timestamp("lastUpdatedAt"),
        completed_at=job.timestamp("completedAt"),
        executions=executions,
        processing_targets=processing,
        in_progress_timeout_minutes=(
            timeout.integer("inProgressTimeoutInMinutes") if timeout else None
        ),
        namespace_id=job.string("namespaceId"),
        job_template_arn=job.string("jobTemplateArn"),
        retry_criteria=retry_criteria,
        is_concurrent=job.boolean("isConcurrent"),
        scheduling_start=_schedule(scheduling, "startTime"),
        scheduling_end=_schedule(scheduling, "endTime"),
        end_behavior=scheduling.string("endBehavior") if scheduling else None,
        maintenance_windows=tuple(windows),
        maintenance_windows_dropped=max(0, listed - MAX_MAINTENANCE_WINDOWS),
        scheduled_rollouts=tuple(rollouts),
        package_versions=versions,
    )


def _schedule(scheduling: _Fields | None, key: str) -> float | None:
    if scheduling is None:
        return None
    text = scheduling.string(key)
    if text is None:
        return None
    seconds = parse_schedule_time(text)
    if seconds is None:
        raise MalformedJob(f"{scheduling.path}.{key}: expected a date-time like 2026-01-31T14:30")
    return seconds
