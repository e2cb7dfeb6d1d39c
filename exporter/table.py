"""The metric table: one row per job metric (name, type, help, docs, labels, samples).

Pure: it imports only the model, so loading the config (which checks family names and
reserved labels against it) loads no Prometheus client.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from exporter.executions import AGE_LE, MAX_RETRY_ATTEMPT, Histogram, StateCounts
from exporter.model import EXECUTION_STATES, JOB_STATUSES, JobSnapshot, target_type

IDENTITY_LABELS = ("target", "region", "account_id", "job_id")

Sample = tuple[tuple[str, ...], float]


@dataclass(frozen=True, slots=True)
class Family:
    """A row of the metric table, with its row of docs/metrics.md (docs/generate_metrics.py
    writes that table from these fields; Markdown, backticks for names)."""

    name: str
    help: str
    labels: tuple[str, ...]
    samples: Callable[[JobSnapshot], Iterable[Sample]]
    type: str = "gauge"
    # Series one job costs: `1`, `0 or 1`, a bound, or `per ...` when it grows with a list.
    series: str = ""
    # The DescribeJob fields read, under `job.`.
    source: str = ""
    # What the value means, for the docs' Meaning column.
    doc: str = ""
    # A histogram row: its histogram of a job (None: no series); `samples` yields none.
    histogram: Callable[[JobSnapshot], Histogram | None] | None = None
    # The snapshot fields of PARTIAL_FIELDS the row reads: when only those change (a
    # sweep, an execution event), the store renders only the rows that read them.
    # tests/unit/test_table_reads.py checks every row against it.
    reads: tuple[str, ...] = ()


# What the exporter learns of a job beyond DescribeJob (model.JobSnapshot.carry).
EXTRA_FIELDS = ("sweep", "time_in_state", "execution_events")
# The fields events and sweeps change between describes: those, and the execution counts
# an execution's end changes (JobSnapshot.with_execution_end). A change of only these
# renders only the rows that declare them in `reads`.
PARTIAL_FIELDS = (*EXTRA_FIELDS, "executions")


def _value(
    read: Callable[[JobSnapshot], float | int | bool | None],
) -> Callable[[JobSnapshot], Iterator[Sample]]:
    """A row with no labels of its own and one optional value."""

    def samples(job: JobSnapshot) -> Iterator[Sample]:
        value = read(job)
        if value is not None:
            yield (), float(value)

    return samples


def _minutes_to_seconds(value: int | None) -> float | None:
    return None if value is None else value * 60.0


def _info(job: JobSnapshot) -> Iterator[Sample]:
    yield (
        (
            job.job_arn or "",
            job.target_selection or "",
            job.namespace_id or "",
            job.job_template_arn or "",
            job.presigned_url_role_arn or "",
        ),
        1.0,
    )


def _target_info(job: JobSnapshot) -> Iterator[Sample]:
    for arn in dict.fromkeys(job.targets):
        yield (arn, target_type(arn)), 1.0


def _package_versions(job: JobSnapshot) -> Iterator[Sample]:
    for arn in dict.fromkeys(job.package_versions):
        yield (arn,), 1.0


def _reason(job: JobSnapshot) -> Iterator[Sample]:
    if job.reason_code:
        yield (job.reason_code,), 1.0


def _status(job: JobSnapshot) -> Iterator[Sample]:
    if job.status is None:
        return
    for status in JOB_STATUSES:
        yield (status,), 1.0 if job.status == status else 0.0
    if job.status not in JOB_STATUSES:
        yield (job.status,), 1.0


def _executions(job: JobSnapshot) -> Iterator[Sample]:
    for state, value in job.executions or ():
        yield (state,), float(value)


def _abort_threshold(job: JobSnapshot) -> Iterator[Sample]:
    for c in job.abort_criteria:
        if c.threshold_percentage is not None:
            yield (c.failure_type, c.action or ""), c.threshold_percentage / 100.0


def _abort_min_executed(job: JobSnapshot) -> Iterator[Sample]:
    for c in job.abort_criteria:
        if c.min_executed_things is not None:
            yield (c.failure_type,), float(c.min_executed_things)


def _retry(job: JobSnapshot) -> Iterator[Sample]:
    for c in job.retry_criteria:
        if c.number_of_retries is not None:
            yield (c.failure_type,), float(c.number_of_retries)


def _end_behavior(job: JobSnapshot) -> Iterator[Sample]:
    if job.end_behavior:
        yield (job.end_behavior,), 1.0


def _window_info(job: JobSnapshot) -> Iterator[Sample]:
    for i, w in enumerate(job.maintenance_windows):
        yield (str(i), w.start_time), 1.0


def _window_start(job: JobSnapshot) -> Iterator[Sample]:
    for i, w in enumerate(job.maintenance_windows):
        if w.start_timestamp is not None:
            yield (str(i),), w.start_timestamp


def _window_duration(job: JobSnapshot) -> Iterator[Sample]:
    for i, w in enumerate(job.maintenance_windows):
        if w.duration_minutes is not None:
            yield (str(i),), w.duration_minutes * 60.0


def _window_next_start(job: JobSnapshot) -> Iterator[Sample]:
    for i, w in enumerate(job.maintenance_windows):
        start = w.next_start(job.fetched_at)
        if start is not None:
            yield (str(i),), start


def _window_open(job: JobSnapshot) -> Iterator[Sample]:
    for i, w in enumerate(job.maintenance_windows):
        is_open = w.open_at(job.fetched_at)
        if is_open is not None:
            yield (str(i),), 1.0 if is_open else 0.0


def _window_closes(job: JobSnapshot) -> Iterator[Sample]:
    for i, w in enumerate(job.maintenance_windows):
        closes = w.closes_at(job.fetched_at)
        if closes is not None:
            yield (str(i),), closes


def _scheduled_rollouts(job: JobSnapshot) -> Iterator[Sample]:
    for i, start in enumerate(job.scheduled_rollouts):
        yield (str(i),), start


def _processing_targets(job: JobSnapshot) -> float | None:
    return None if job.executions is None else job.processing_targets


def _sweep_states(job: JobSnapshot) -> Iterator[tuple[str, StateCounts]]:
    if job.sweep is not None:
        yield from job.sweep.states


def _by_age(job: JobSnapshot) -> Iterator[Sample]:
    for state, counts in _sweep_states(job):
        for le, value in zip(AGE_LE, counts.by_age, strict=True):
            yield (state, le), float(value)


def _stuck(job: JobSnapshot) -> Iterator[Sample]:
    for state, counts in _sweep_states(job):
        yield (state,), float(counts.stuck)


def _stuck_threshold(job: JobSnapshot) -> Iterator[Sample]:
    for state, counts in _sweep_states(job):
        yield (state,), counts.threshold


def _oldest(job: JobSnapshot) -> Iterator[Sample]:
    for state, counts in _sweep_states(job):
        if counts.oldest is not None:
            yield (state,), counts.oldest


def _by_retry(job: JobSnapshot) -> Iterator[Sample]:
    # Attempts up to the job's retry limit (0 without retries), or the highest seen: a
    # job without retries costs two series, not twenty-two.
    limit = max((c.number_of_retries or 0 for c in job.retry_criteria), default=0)
    states = list(_sweep_states(job))
    for _, counts in states:
        seen = [attempt for attempt, n in enumerate(counts.retries) if n]
        limit = max(limit, *seen) if seen else limit
    limit = min(limit, MAX_RETRY_ATTEMPT)
    for state, counts in states:
        for attempt in range(limit + 1):
            yield (state, str(attempt)), float(counts.retries[attempt])


def _no_samples(job: JobSnapshot) -> Iterator[Sample]:
    return iter(())


def _execution_events(job: JobSnapshot) -> Iterator[Sample]:
    for status, reason, count in job.execution_events:
        yield (status, reason), float(count)


P = "aws_iot_job_"

FAMILIES: tuple[Family, ...] = (
    Family(
        P + "info",
        "Job metadata; always 1.",
        (
            "job_arn",
            "target_selection",
            "namespace_id",
            "job_template_arn",
            "presigned_url_role_arn",
        ),
        _info,
        series="1",
        source=(
            "`jobArn`, `targetSelection`, `namespaceId`, `jobTemplateArn`, "
            "`presignedUrlConfig.roleArn`"
        ),
        doc="Always 1. Metadata; a label is empty when the field is absent.",
    ),
    Family(
        P + "target_info",
        "One series per thing or thing group the job targets; always 1.",
        ("target_arn", "target_type"),
        _target_info,
        series="per target ARN",
        source="`targets[]`",
        doc=(
            "Always 1, one series per target ARN. `target_type` is `thing`, `thinggroup`, or "
            "the ARN's resource type as is."
        ),
    ),
    Family(
        P + "destination_package_version_info",
        "One series per software package version the job installs; always 1.",
        ("package_version_arn",),
        _package_versions,
        series="per package version",
        source="`destinationPackageVersions[]`",
        doc="Always 1, one series per package version the job installs (software package catalog).",
    ),
    Family(
        P + "reason_info",
        "The reason code of the job's last cancel or update; always 1.",
        ("reason_code",),
        _reason,
        series="0 or 1",
        source="`reasonCode`",
        doc=(
            "Always 1 when the job carries a reason code (set on cancel or update; an "
            "upper-case code, not free text)."
        ),
    ),
    Family(
        P + "status",
        "Job status as a state set: 1 for the current status, 0 for the others.",
        ("status",),
        _status,
        series="5 (6 with an unknown status)",
        source="`status`",
        doc=(
            "State set: one series per known status (`IN_PROGRESS`, `CANCELED`, `COMPLETED`, "
            "`DELETION_IN_PROGRESS`, `SCHEDULED`), 1 for the current one, 0 for the others. An "
            "unknown status gets its own series with value 1."
        ),
    ),
    Family(
        P + "executions",
        "Job executions by state, from jobProcessDetails. With retries, failed and "
        "timed_out count executions, not things.",
        ("state",),
        _executions,
        reads=("executions",),
        series="up to 8: per execution state",
        source="`jobProcessDetails.numberOf*Things`",
        doc=(
            "Job executions by state: `queued` (`numberOfQueuedThings`), `in_progress` "
            "(`numberOfInProgressThings`), `succeeded` (`numberOfSucceededThings`), `failed` "
            "(`numberOfFailedThings`), `rejected` (`numberOfRejectedThings`), `canceled` "
            "(`numberOfCanceledThings`), `removed` (`numberOfRemovedThings`), `timed_out` "
            "(`numberOfTimedOutThings`). A state AWS leaves out has no series. With a retry "
            "config, `failed` and `timed_out` count executions (attempts), not things, and can "
            "exceed the number of targets; ratios must divide by terminal executions, never by "
            "targets. With `events:`, an execution's end moves these counts when its event is "
            "read (one up in its terminal state, one down in the state it left, "
            "docs/events.md); the next describe replaces them with AWS's."
        ),
    ),
    Family(
        P + "processing_targets",
        "Targets the job is still rolling out to.",
        (),
        _value(_processing_targets),
        reads=("executions",),
        series="0 or 1",
        source="`jobProcessDetails.processingTargets`",
        doc=(
            "Number of targets (things or groups) the job is still rolling out to. 0 when AWS "
            "reports the list empty or null after rollout. Only exported when "
            "`jobProcessDetails` is present."
        ),
    ),
    Family(
        P + "rollout_maximum_per_minute",
        "Configured maximum of things notified per minute.",
        (),
        _value(lambda j: j.rollout_maximum_per_minute),
        series="0 or 1",
        source="`jobExecutionsRolloutConfig.maximumPerMinute`",
        doc="Configured cap on things notified per minute.",
    ),
    Family(
        P + "rollout_exponential_base_rate_per_minute",
        "Initial rate of an exponential rollout, things per minute.",
        (),
        _value(lambda j: j.rollout_base_rate_per_minute),
        series="0 or 1",
        source="`jobExecutionsRolloutConfig.exponentialRate.baseRatePerMinute`",
        doc="Initial rollout rate of an exponential rollout.",
    ),
    Family(
        P + "rollout_exponential_increment_factor",
        "Factor an exponential rollout's rate is multiplied by at each increase.",
        (),
        _value(lambda j: j.rollout_increment_factor),
        series="0 or 1",
        source="`jobExecutionsRolloutConfig.exponentialRate.incrementFactor`",
        doc="Factor the rate is multiplied by at each increase.",
    ),
    Family(
        P + "rollout_exponential_notified_things_threshold",
        "Notified things that trigger each increase of an exponential rollout.",
        (),
        _value(lambda j: j.rollout_notified_threshold),
        series="0 or 1",
        source="`...exponentialRate.rateIncreaseCriteria.numberOfNotifiedThings`",
        doc="Notified things that trigger each rate increase.",
    ),
    Family(
        P + "rollout_exponential_succeeded_things_threshold",
        "Succeeded things that trigger each increase of an exponential rollout.",
        (),
        _value(lambda j: j.rollout_succeeded_threshold),
        series="0 or 1",
        source="`...exponentialRate.rateIncreaseCriteria.numberOfSucceededThings`",
        doc="Succeeded things that trigger each rate increase.",
    ),
    Family(
        P + "rollout_rate_limit_per_minute",
        "Rollout rate the configuration allows now, given progress, things per minute.",
        (),
        _value(JobSnapshot.rollout_rate_limit),
        reads=("executions",),
        series="0 or 1",
        source="derived from `jobExecutionsRolloutConfig` and `jobProcessDetails`",
        doc=(
            "The rollout rate the configuration allows now, given progress (see [Rollout rate "
            "limit](#rollout-rate-limit))."
        ),
    ),
    Family(
        P + "rollout_observed_rate_per_minute",
        "Executions created per minute between the last two describes.",
        (),
        _value(lambda j: j.observed_rate_per_minute),
        series="0 or 1",
        source="derived from two consecutive DescribeJob snapshots",
        doc=(
            "Executions created per minute between the last two successful describes (see "
            "[Observed rollout rate](#observed-rollout-rate)). Absent until the exporter has "
            "two snapshots of the job."
        ),
    ),
    Family(
        P + "abort_threshold_ratio",
        "Failure ratio (thresholdPercentage / 100) at which the job is aborted.",
        ("failure_type", "action"),
        _abort_threshold,
        series="up to 4: per failure type",
        source=(
            "`abortConfig.criteriaList[].thresholdPercentage`, labels from `failureType` and "
            "`action`"
        ),
        doc="Abort threshold as a ratio (percentage / 100), one series per criterion.",
    ),
    Family(
        P + "abort_min_executed_things",
        "Things that must have executed before an abort criterion applies.",
        ("failure_type",),
        _abort_min_executed,
        series="up to 4: per failure type",
        source="`abortConfig.criteriaList[].minNumberOfExecutedThings`, label from `failureType`",
        doc="Things that must have executed before the criterion can abort the job.",
    ),
    Family(
        P + "retry_max_attempts",
        "Retries allowed per failure type.",
        ("failure_type",),
        _retry,
        series="up to 3: per failure type",
        source=(
            "`jobExecutionsRetryConfig.criteriaList[].numberOfRetries`, label from `failureType`"
        ),
        doc=(
            "Retries allowed for the failure type (the number of retries, not counting the "
            "first attempt)."
        ),
    ),
    Family(
        P + "in_progress_timeout_seconds",
        "Time an execution may stay IN_PROGRESS before it times out.",
        (),
        _value(lambda j: _minutes_to_seconds(j.in_progress_timeout_minutes)),
        series="0 or 1",
        source="`timeoutConfig.inProgressTimeoutInMinutes`",
        doc="Time an execution may stay IN_PROGRESS before it is TIMED_OUT, in seconds.",
    ),
    Family(
        P + "presigned_url_expiry_seconds",
        "Validity of pre-signed S3 URLs.",
        (),
        _value(lambda j: j.presigned_url_expires_in_sec),
        series="0 or 1",
        source="`presignedUrlConfig.expiresInSec`",
        doc="Validity of pre-signed S3 URLs in the job document.",
    ),
    Family(
        P + "created_timestamp_seconds",
        "Job creation time, Unix seconds.",
        (),
        _value(lambda j: j.created_at),
        series="0 or 1",
        source="`createdAt`",
        doc="Creation time, Unix seconds.",
    ),
    Family(
        P + "last_updated_timestamp_seconds",
        "Job last update time, Unix seconds.",
        (),
        _value(lambda j: j.last_updated_at),
        series="0 or 1",
        source="`lastUpdatedAt`",
        doc="Last update time, Unix seconds.",
    ),
    Family(
        P + "completed_timestamp_seconds",
        "Job completion time, Unix seconds.",
        (),
        _value(lambda j: j.completed_at),
        series="0 or 1",
        source="`completedAt`",
        doc="Completion time, Unix seconds.",
    ),
    Family(
        P + "scheduling_start_timestamp_seconds",
        "Scheduled rollout start, Unix seconds.",
        (),
        _value(lambda j: j.scheduling_start),
        series="0 or 1",
        source="`schedulingConfig.startTime`",
        doc=(
            "Scheduled rollout start, Unix seconds (the API's `YYYY-MM-DDTHH:MM` string, read "
            "as UTC)."
        ),
    ),
    Family(
        P + "scheduling_end_timestamp_seconds",
        "Scheduled rollout end, Unix seconds.",
        (),
        _value(lambda j: j.scheduling_end),
        series="0 or 1",
        source="`schedulingConfig.endTime`",
        doc="Scheduled rollout end, Unix seconds.",
    ),
    Family(
        P + "scheduling_end_behavior",
        "What happens at the scheduled end time; always 1.",
        ("end_behavior",),
        _end_behavior,
        series="0 or 1",
        source="`schedulingConfig.endBehavior`",
        doc="Always 1; what happens at `endTime`: `STOP_ROLLOUT`, `CANCEL` or `FORCE_CANCEL`.",
    ),
    Family(
        P + "maintenance_window_info",
        "One series per maintenance window with its recurrence; always 1.",
        ("window", "start_time"),
        _window_info,
        series="per maintenance window",
        source="`schedulingConfig.maintenanceWindows[].startTime`",
        doc=(
            "Always 1, one series per maintenance window; `window` is its index in the list, "
            "`start_time` the API's recurrence expression as is (a cron expression)."
        ),
    ),
    Family(
        P + "maintenance_window_start_timestamp_seconds",
        "Start of a maintenance window given as a date-time, Unix seconds.",
        ("window",),
        _window_start,
        series="per maintenance window",
        source="`schedulingConfig.maintenanceWindows[].startTime`",
        doc=(
            "Start of the window, Unix seconds, when the API gives it as a date-time rather "
            "than a recurrence."
        ),
    ),
    Family(
        P + "maintenance_window_duration_seconds",
        "Length of a maintenance window.",
        ("window",),
        _window_duration,
        series="per maintenance window",
        source="`schedulingConfig.maintenanceWindows[].durationInMinutes`",
        doc="Length of the maintenance window, in seconds.",
    ),
    Family(
        P + "maintenance_window_next_start_timestamp_seconds",
        "Next start of a maintenance window at or after the job's last describe, Unix "
        "seconds, read from its recurrence.",
        ("window",),
        _window_next_start,
        series="per maintenance window",
        source="`schedulingConfig.maintenanceWindows[].startTime`",
        doc=(
            "Next start of the window at or after the job's last describe "
            "(`aws_iot_job_last_success_timestamp_seconds`), Unix seconds, read from its cron "
            "recurrence (UTC, AWS's dialect) or date-time. Computed when the job is described, "
            "not per scrape: `aws_iot_job_maintenance_window_next_start_timestamp_seconds - "
            "time()` is the time to the next window. A frozen (terminal) job is not described "
            "again, so its value stays as it was."
        ),
    ),
    Family(
        P + "maintenance_window_open",
        "1 when a maintenance window was open at the job's last describe, else 0.",
        ("window",),
        _window_open,
        series="per maintenance window with a duration",
        source="`schedulingConfig.maintenanceWindows[].startTime`, `durationInMinutes`",
        doc=(
            "1 when the window was open at the job's last describe (an occurrence started less "
            "than `durationInMinutes` before), else 0. The rollout-stalled alert ignores jobs "
            "with windows of which none was open throughout its window."
        ),
    ),
    Family(
        P + "maintenance_window_close_timestamp_seconds",
        "When the maintenance window open at the job's last describe closes, Unix seconds.",
        ("window",),
        _window_closes,
        series="per maintenance window open",
        source="`schedulingConfig.maintenanceWindows[].startTime`, `durationInMinutes`",
        doc=(
            "When the occurrence of the window that was open at the job's last describe "
            "closes: its start plus `durationInMinutes`, Unix seconds. Absent while the "
            "window is closed. `this - time()` is how long the rollout has before it pauses "
            "until the next window."
        ),
    ),
    Family(
        P + "scheduled_rollout_start_timestamp_seconds",
        "Start of each upcoming maintenance-window rollout, Unix seconds.",
        ("rollout",),
        _scheduled_rollouts,
        series="up to 7: per upcoming rollout",
        source="`scheduledJobRollouts[].startTime`",
        doc=(
            "Start of each of the next (up to seven) maintenance-window rollouts, Unix seconds; "
            "`rollout` is its index (0 = next)."
        ),
    ),
    Family(
        P + "force_canceled",
        "1 when the job was canceled with force.",
        (),
        _value(lambda j: j.force_canceled),
        series="0 or 1",
        source="`forceCanceled`",
        doc="1 when the job was canceled with `force`, else 0.",
    ),
    Family(
        P + "is_concurrent",
        "1 while the job is rolling out or canceling executions.",
        (),
        _value(lambda j: j.is_concurrent),
        series="0 or 1",
        source="`isConcurrent`",
        doc="1 while the job is rolling out or canceling executions, else 0.",
    ),
    Family(
        P + "executions_by_age",
        "Queued and in-progress executions of the job whose age at the last sweep is at most "
        "max_age seconds (since queuedAt when queued, startedAt when in progress); cumulative.",
        ("state", "max_age"),
        _by_age,
        reads=("sweep",),
        series="up to 14: per state and age bucket",
        source="ListJobExecutionsForJob `queuedAt`, `startedAt`",
        doc=(
            "Executions in `state` (`queued`, `in_progress`) whose age at the job's last "
            "sweep was at most `max_age` seconds (300, 900, 3600, 21600, 86400, 604800, `+Inf`); "
            'cumulative, like a histogram\'s buckets, and `max_age="+Inf"` counts them all. Those '
            'older than an hour: `{max_age="+Inf"} - ignoring(max_age) {max_age="3600"}`. Not '
            "named `le`, which Prometheus keeps for histograms. Absent until the first sweep."
        ),
    ),
    Family(
        P + "executions_stuck",
        "Executions in progress or queued longer than the job's stuck threshold at the last sweep.",
        ("state",),
        _stuck,
        reads=("sweep",),
        series="up to 2: per state",
        source="ListJobExecutionsForJob `queuedAt`, `startedAt`",
        doc=(
            "Executions in `state` for longer than "
            "`aws_iot_job_executions_stuck_threshold_seconds` at the last sweep: an in-progress "
            "device that went silent, a queued one that never connected."
        ),
    ),
    Family(
        P + "executions_stuck_threshold_seconds",
        "How long an execution may stay in the state before it counts as stuck.",
        ("state",),
        _stuck_threshold,
        reads=("sweep",),
        series="up to 2: per state",
        source="`timeoutConfig.inProgressTimeoutInMinutes`, exporter",
        doc=(
            "`in_progress`: the job's in-progress timeout when it has one, else "
            "`executions.stuck_in_progress_after` (default 1h); `queued`: "
            "`executions.stuck_queued_after` (default 24h)."
        ),
    ),
    Family(
        P + "executions_oldest_timestamp_seconds",
        "When the oldest execution in the state entered it (queuedAt, startedAt), Unix "
        "seconds, at the last sweep.",
        ("state",),
        _oldest,
        reads=("sweep",),
        series="up to 2: per state",
        source="ListJobExecutionsForJob `queuedAt`, `startedAt`",
        doc=(
            "`queuedAt` of the oldest queued, `startedAt` of the oldest in-progress execution, "
            "Unix seconds; `time() - this` is its age. Absent when the state has none."
        ),
    ),
    Family(
        P + "executions_by_retry_attempt",
        "Queued and in-progress executions by retry attempt at the last sweep.",
        ("state", "retry_attempt"),
        _by_retry,
        reads=("sweep",),
        series="up to 22: per state and retry attempt up to the job's limit",
        source="ListJobExecutionsForJob `retryAttempt`",
        doc=(
            "Executions in `state` by `retry_attempt` (`0` is the first try): devices that "
            "already failed and are trying again. From `0` to the job's largest "
            "`numberOfRetries` (or the highest attempt seen, at most `10`)."
        ),
    ),
    Family(
        P + "executions_sweep_timestamp_seconds",
        "Unix time the last complete sweep of the job's queued and in-progress executions ended.",
        (),
        _value(lambda j: j.sweep.ended_at if j.sweep is not None else None),
        reads=("sweep",),
        series="0 or 1",
        source="exporter",
        doc=(
            "When the job's last sweep (ListJobExecutionsForJob over its `QUEUED` and "
            "`IN_PROGRESS` executions) ended; `time() - this` is the age of the "
            "`aws_iot_job_executions_*` series read from it. Absent until one."
        ),
    ),
    Family(
        P + "execution_queued_duration_seconds",
        "How long finished-queueing executions of the job waited, queuedAt to startedAt.",
        (),
        _no_samples,
        histogram=lambda j: j.time_in_state.queued if j.time_in_state else None,
        reads=("time_in_state",),
        type="histogram",
        series="up to 12: buckets, sum and count",
        source="ListJobExecutionsForJob `queuedAt`, `startedAt`",
        doc=(
            "Histogram of `startedAt - queuedAt` of each execution a sweep saw in progress "
            "for the first time, since the exporter started. With OpenMetrics, each bucket "
            "carries an exemplar with the `thing_name` and `execution_number` of its last "
            "execution."
        ),
    ),
    Family(
        P + "execution_run_duration_seconds",
        "How long finished executions of the job ran, startedAt to the end.",
        (),
        _no_samples,
        histogram=lambda j: j.time_in_state.run if j.time_in_state else None,
        reads=("time_in_state",),
        type="histogram",
        series="up to 12: buckets, sum and count",
        source="ListJobExecutionsForJob `startedAt`; execution events",
        doc=(
            "Histogram of the time from `startedAt` (seen by a sweep) to the execution's end "
            "(the timestamp of its terminal execution event), since the exporter started: a "
            "target with `events:` only. Exemplars as above."
        ),
    ),
    Family(
        P + "execution_events_total",
        "Failed, rejected and timed-out execution events of the job by status and reason "
        "(the statusDetails value of events.reason_key), since the exporter started.",
        ("status", "reason"),
        _execution_events,
        reads=("execution_events",),
        type="counter",
        series="per status and reason, at most events.max_reasons_per_job",
        source="execution events' `status`, `statusDetails[events.reason_key]`",
        doc=(
            "Only for targets with `events:` (docs/events.md): execution events with status "
            "`FAILED`, `REJECTED` or `TIMED_OUT` since the exporter started, each event counted "
            "once (duplicate deliveries dropped by `eventId`). `reason` is the device-reported "
            'value of `events.reason_key` (cut to 64 printable ASCII characters; `""` when '
            "absent); at most `events.max_reasons_per_job` distinct values per job, later ones "
            "count as `other`. Never a series per thing. Restarts at 0 with the process, as "
            "counters do: use `increase()`."
        ),
    ),
    Family(
        P + "last_success_timestamp_seconds",
        "Unix time of the last successful DescribeJob of the job.",
        (),
        _value(lambda j: j.fetched_at),
        series="1",
        source="exporter",
        doc=(
            "Unix time of the last successful DescribeJob of this job. `time() - this` is the "
            "age of every other series of the job."
        ),
    ),
)

FAMILY_NAMES = tuple(f.name for f in FAMILIES)
# Prefixes of the self-metrics: the exporter's health, a fixed number of series per target,
# which the alerts rely on. They are not selectable, and a name of theirs gets its own error.
SELF_METRIC_PREFIXES = ("aws_iot_jobs_exporter_", "process_", "python_")
SELECTABLE_NAMES = FAMILY_NAMES


def selects(name: str, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> bool:
    """Whether an allow or deny list keeps the family `name`."""
    allowed = tuple(allow)
    return (not allowed or name in allowed) and name not in tuple(deny)


def family_name_problem(name: str) -> str | None:
    """Why `name` cannot be allowed or denied, or None when it names a job metric family."""
    if name in SELECTABLE_NAMES:
        return None
    # repr escapes control characters; a long name is cut so the message stays one line.
    shown = repr(name) if len(name) <= 100 else repr(name[:100]) + "..."
    if name.startswith(SELF_METRIC_PREFIXES):
        return (
            f"{shown} is one of the exporter's own metrics, which are always exported; "
            "allow and deny select job metric families (aws_iot_job_*)"
        )
    # Family names are lower case: a name typed in another case still finds its match.
    close = difflib.get_close_matches(name[:100].lower(), SELECTABLE_NAMES, n=1, cutoff=0.75)
    hint = f"did you mean {close[0]!r}? " if close else ""
    expected = ", ".join(SELECTABLE_NAMES)
    return f"{shown} is not a job metric family; {hint}expected one of {expected}"


def select_families(allow: Iterable[str] = (), deny: Iterable[str] = ()) -> tuple[Family, ...]:
    """The families to render, in table order: those allowed (all when none is), less the denied.

    Names are checked by the config and the flags (family_name_problem); an unknown one
    here selects nothing.
    """
    allowed, denied = frozenset(allow), frozenset(deny)
    return tuple(f for f in FAMILIES if (not allowed or f.name in allowed) and f.name not in denied)


OPERATIONS = ("DescribeJob", "ListJobs", "ListJobExecutionsForJob")
# The SQS calls of a target with `events:`; their series exist only for such targets.
EVENT_OPERATIONS = ("ReceiveMessage", "DeleteMessageBatch")
# The labels of the AWS call self-metrics.
API_CALL_LABELS = ("target", "operation", "outcome")
# Label names the exporter sets itself: a static label with one of these names would
# produce duplicate labels in the exposition. `job` and `instance` belong to Prometheus,
# `le` and `quantile` to histograms and summaries.
RESERVED_LABELS = frozenset(
    {
        "job",
        "instance",
        "le",
        "quantile",
        *IDENTITY_LABELS,
        *(label for family in FAMILIES for label in family.labels),
        *API_CALL_LABELS,
    }
)

__all__ = [
    "EXECUTION_STATES",
    "FAMILIES",
    "FAMILY_NAMES",
    "IDENTITY_LABELS",
    "Family",
    "family_name_problem",
    "select_families",
]
