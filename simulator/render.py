"""Fleet objects as the REST-JSON bodies of DescribeJob, ListJobs and ListJobExecutionsForJob."""

from __future__ import annotations

import json
from typing import Any

from simulator.fleet import (
    CANCELED,
    FAILED,
    IN_PROGRESS,
    JOB_CANCELED,
    JOB_IN_PROGRESS,
    QUEUED,
    REJECTED,
    REMOVED,
    SUCCEEDED,
    TIMED_OUT,
    Execution,
    Fleet,
    Job,
    arn,
    minute_string,
)
from simulator.scenario import PackageSpec, PackageVersionSpec

_COUNT_FIELDS = (
    ("numberOfCanceledThings", CANCELED),
    ("numberOfSucceededThings", SUCCEEDED),
    ("numberOfFailedThings", FAILED),
    ("numberOfRejectedThings", REJECTED),
    ("numberOfQueuedThings", QUEUED),
    ("numberOfInProgressThings", IN_PROGRESS),
    ("numberOfRemovedThings", REMOVED),
    ("numberOfTimedOutThings", TIMED_OUT),
)


def _ts(epoch: float) -> float:
    # AWS sends epoch seconds with millisecond precision.
    return round(epoch, 3)


def target_arns(fleet: Fleet, job: Job, region: str) -> list[str]:
    return [arn(region, fleet.account_id, t.kind, t.name) for t in job.spec.targets]


def describe_job(fleet: Fleet, job: Job, region: str) -> dict[str, Any]:
    """The DescribeJob response body, every field the job has populated."""
    out = _describe_job(fleet, job, region)
    if job.spec.fields is not None:
        # Passed through as the scenario wrote them; the fleet's own fields win.
        for key, value in json.loads(job.spec.fields).items():
            out["job"].setdefault(key, value)
    return out


def _describe_job(fleet: Fleet, job: Job, region: str) -> dict[str, Any]:
    spec = job.spec
    out: dict[str, Any] = {
        "jobArn": arn(region, fleet.account_id, "job", spec.job_id),
        "jobId": spec.job_id,
        "targetSelection": spec.target_selection,
        "status": job.status,
    }
    if job.status == JOB_CANCELED or job.force_canceled:
        out["forceCanceled"] = job.force_canceled
    if job.reason_code is not None:
        out["reasonCode"] = job.reason_code
    if job.comment is not None:
        out["comment"] = job.comment
    targets = target_arns(fleet, job, region)
    out["targets"] = targets
    if spec.description is not None:
        out["description"] = spec.description
    if spec.presigned_url is not None:
        out["presignedUrlConfig"] = {
            "roleArn": spec.presigned_url.role_arn,
            "expiresInSec": spec.presigned_url.expires_in_sec,
        }
    if spec.rollout is not None:
        rollout: dict[str, Any] = {}
        if spec.rollout.maximum_per_minute is not None:
            rollout["maximumPerMinute"] = spec.rollout.maximum_per_minute
        exp = spec.rollout.exponential_rate
        if exp is not None:
            crit: dict[str, int] = {}
            if exp.rate_increase_criteria.number_of_notified_things is not None:
                crit["numberOfNotifiedThings"] = (
                    exp.rate_increase_criteria.number_of_notified_things
                )
            if exp.rate_increase_criteria.number_of_succeeded_things is not None:
                crit["numberOfSucceededThings"] = (
                    exp.rate_increase_criteria.number_of_succeeded_things
                )
            rollout["exponentialRate"] = {
                "baseRatePerMinute": exp.base_rate_per_minute,
                "incrementFactor": exp.increment_factor,
                "rateIncreaseCriteria": crit,
            }
        out["jobExecutionsRolloutConfig"] = rollout
    if spec.abort:
        out["abortConfig"] = {
            "criteriaList": [
                {
                    "failureType": c.failure_type,
                    "action": c.action,
                    "thresholdPercentage": c.threshold_percentage,
                    "minNumberOfExecutedThings": c.min_number_of_executed_things,
                }
                for c in spec.abort
            ]
        }
    out["createdAt"] = _ts(job.created_at)
    out["lastUpdatedAt"] = _ts(job.last_updated_at)
    if job.completed_at is not None:
        out["completedAt"] = _ts(job.completed_at)
    details: dict[str, Any] = {
        # AWS lists the targets while it is still rolling out, and nothing afterwards.
        "processingTargets": targets if job.status == JOB_IN_PROGRESS and job.rolling_out else [],
    }
    for name, state in _COUNT_FIELDS:
        details[name] = job.counts[state]
    out["jobProcessDetails"] = details
    if spec.timeout_minutes is not None:
        out["timeoutConfig"] = {"inProgressTimeoutInMinutes": spec.timeout_minutes}
    if spec.namespace_id is not None:
        out["namespaceId"] = spec.namespace_id
    if spec.job_template_arn is not None:
        out["jobTemplateArn"] = spec.job_template_arn
    if spec.retry:
        out["jobExecutionsRetryConfig"] = {
            "criteriaList": [
                {"failureType": c.failure_type, "numberOfRetries": c.number_of_retries}
                for c in spec.retry
            ]
        }
    if spec.document_parameters:
        out["documentParameters"] = dict(spec.document_parameters)
    out["isConcurrent"] = job.is_concurrent
    sched = spec.scheduling
    if sched is not None:
        sc: dict[str, Any] = {}
        if job.scheduled_start is not None:
            sc["startTime"] = minute_string(job.scheduled_start)
        if job.scheduled_end is not None:
            sc["endTime"] = minute_string(job.scheduled_end)
        if sched.end_behavior is not None:
            sc["endBehavior"] = sched.end_behavior
        if sched.maintenance_windows:
            sc["maintenanceWindows"] = [
                {"startTime": w.start_time, "durationInMinutes": w.duration_in_minutes}
                for w in sched.maintenance_windows
            ]
            if job.status in ("SCHEDULED", JOB_IN_PROGRESS):
                out["scheduledJobRollouts"] = [
                    {"startTime": minute_string(t)} for t in fleet.window_starts(job)
                ]
        out["schedulingConfig"] = sc
    if spec.destination_package_versions:
        out["destinationPackageVersions"] = list(spec.destination_package_versions)
    body: dict[str, Any] = {}
    if spec.document_source is not None:
        body["documentSource"] = spec.document_source
    body["job"] = out
    return body


def job_summary(fleet: Fleet, job: Job, region: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "jobArn": arn(region, fleet.account_id, "job", job.job_id),
        "jobId": job.job_id,
    }
    group = next((t.name for t in job.spec.targets if t.kind == "thinggroup"), None)
    if group is not None and group in fleet.group_ids:
        out["thingGroupId"] = fleet.group_ids[group]
    out["targetSelection"] = job.spec.target_selection
    out["status"] = job.status
    out["createdAt"] = _ts(job.created_at)
    out["lastUpdatedAt"] = _ts(job.last_updated_at)
    if job.completed_at is not None:
        out["completedAt"] = _ts(job.completed_at)
    out["isConcurrent"] = job.is_concurrent
    return out


def execution_summary(fleet: Fleet, exe: Execution, region: str) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": exe.status, "queuedAt": _ts(exe.queued_at)}
    if exe.started_at is not None:
        summary["startedAt"] = _ts(exe.started_at)
    summary["lastUpdatedAt"] = _ts(exe.last_updated_at)
    summary["executionNumber"] = exe.execution_number
    summary["retryAttempt"] = exe.retry_attempt
    return {
        "thingArn": arn(region, fleet.account_id, "thing", exe.thing),
        "jobExecutionSummary": summary,
    }


def _catalog_time(fleet: Fleet, minutes: float) -> float:
    return _ts(fleet.start + minutes * 60.0)


def package_summary(fleet: Fleet, spec: PackageSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"packageName": spec.name}
    if spec.default_version is not None:
        out["defaultVersionName"] = spec.default_version
    created = _catalog_time(fleet, spec.created_minutes)
    out["creationDate"] = created
    # The latest change to the package is its newest version's creation.
    newest = max([spec.created_minutes] + [v.created_minutes for v in spec.versions])
    out["lastModifiedDate"] = _catalog_time(fleet, newest)
    return out


def package_version_summary(fleet: Fleet, package: str, spec: PackageVersionSpec) -> dict[str, Any]:
    created = _catalog_time(fleet, spec.created_minutes)
    return {
        "packageName": package,
        "versionName": spec.name,
        "status": spec.status,
        "creationDate": created,
        "lastModifiedDate": created,
    }


def package_version(
    fleet: Fleet, package: str, spec: PackageVersionSpec, region: str
) -> dict[str, Any]:
    """The GetPackageVersion body."""
    created = _catalog_time(fleet, spec.created_minutes)
    out: dict[str, Any] = {
        "packageVersionArn": arn(
            region, fleet.account_id, "package", f"{package}/version/{spec.name}"
        ),
        "packageName": package,
        "versionName": spec.name,
    }
    if spec.description is not None:
        out["description"] = spec.description
    if spec.attributes:
        out["attributes"] = dict(spec.attributes)
    out["status"] = spec.status
    out["creationDate"] = created
    out["lastModifiedDate"] = created
    return out
