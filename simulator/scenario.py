"""Simulator scenario files: strict YAML into frozen dataclasses, errors located by field path."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from simulator.cron import Cron, CronError
from simulator.reader import LocatedError, Reader, join, load_yaml, read_file
from simulator.service import describe_job_fields

TARGET_SELECTIONS = ("CONTINUOUS", "SNAPSHOT")
ABORT_FAILURE_TYPES = ("FAILED", "REJECTED", "TIMED_OUT", "ALL")
RETRY_FAILURE_TYPES = ("FAILED", "TIMED_OUT", "ALL")
END_BEHAVIORS = ("STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL")
JOB_OPERATIONS = ("DescribeJob", "ListJobs", "ListJobExecutionsForJob")
# Fleet indexing's aggregation calls, answered from the `$package` shadows as indexed.
INDEX_OPERATIONS = ("GetBucketsAggregation", "GetStatistics", "GetCardinality")
# The software package catalog.
CATALOG_OPERATIONS = ("ListPackages", "ListPackageVersions", "GetPackageVersion")
OPERATIONS = JOB_OPERATIONS + INDEX_OPERATIONS + CATALOG_OPERATIONS
PACKAGE_VERSION_STATUSES = ("DRAFT", "PUBLISHED", "DEPRECATED")
INDEX_STATUSES = ("ACTIVE", "BUILDING", "REBUILDING", "OFF")

_JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_ACCOUNT = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_NAMESPACE = re.compile(r"^[a-zA-Z0-9_-]+$")
_REASON = re.compile(r"^[A-Z0-9_]{1,128}$")
# botocore's PackageName and VersionName patterns and lengths.
PACKAGE_NAME = re.compile(r"^[a-zA-Z0-9-_.]{1,128}$")
VERSION_NAME = re.compile(r"^[a-zA-Z0-9-_.]{1,64}$")
_START_TIME = "%Y-%m-%dT%H:%M"


class ScenarioError(LocatedError):
    """A scenario problem, located by file and field path."""


# --- the model --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """A uniform range of simulated minutes."""

    low: float
    high: float


@dataclass(frozen=True, slots=True)
class Devices:
    """How things behave once notified; per scenario, overridable per job."""

    queued_minutes: Span = Span(0.1, 1.0)
    in_progress_minutes: Span = Span(0.5, 3.0)
    reject_probability: float = 0.0
    failure_probability: float = 0.0
    # A stuck device goes silent once it has started: it never reports back, so its
    # execution is TIMED_OUT with a timeoutConfig, else IN_PROGRESS forever.
    stuck_probability: float = 0.0
    # An offline device never connects: its execution stays QUEUED forever (AWS's
    # in-progress timeout does not apply to queued executions).
    offline_probability: float = 0.0
    # Things that are stuck or offline whatever the probabilities draw (first attempts).
    stuck_things: frozenset[str] = frozenset()
    offline_things: frozenset[str] = frozenset()
    # What a device reports in statusDetails["reason"] when its execution fails, is
    # rejected or times out: (reason, weight) pairs; empty: no statusDetails.
    failure_reasons: tuple[tuple[str, float], ...] = ()
    # A device whose execution succeeds but whose `$package` shadow is not updated (the
    # version report is lost): "succeeded" without "on the version".
    unreported_probability: float = 0.0


@dataclass(frozen=True, slots=True)
class RateIncreaseCriteria:
    number_of_notified_things: int | None = None
    number_of_succeeded_things: int | None = None


@dataclass(frozen=True, slots=True)
class ExponentialRate:
    base_rate_per_minute: int
    increment_factor: float
    rate_increase_criteria: RateIncreaseCriteria


@dataclass(frozen=True, slots=True)
class Rollout:
    maximum_per_minute: int | None = None
    exponential_rate: ExponentialRate | None = None


@dataclass(frozen=True, slots=True)
class AbortCriterion:
    failure_type: str
    threshold_percentage: float
    min_number_of_executed_things: int
    action: str = "CANCEL"


@dataclass(frozen=True, slots=True)
class RetryCriterion:
    failure_type: str
    number_of_retries: int


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    start_time: str  # AWS cron expression, e.g. 'cron(0 2 ? * SUN *)'
    duration_in_minutes: int
    cron: Cron = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Scheduling:
    start_minutes: int | None = None  # relative to the scenario start
    end_minutes: int | None = None
    end_behavior: str | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()


@dataclass(frozen=True, slots=True)
class PresignedUrl:
    role_arn: str
    expires_in_sec: int = 3600


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # "thing" or "thinggroup", as in the ARN
    name: str


@dataclass(frozen=True, slots=True)
class Precomputed:
    """A terminal job whose counts are given rather than simulated (cheap at scale)."""

    status: str
    completed_minutes: float
    counts: tuple[tuple[str, int], ...]
    force_canceled: bool = False


@dataclass(frozen=True, slots=True)
class JobSpec:
    job_id: str
    targets: tuple[Target, ...]
    target_selection: str = "SNAPSHOT"
    created_minutes: float = 0.0
    description: str | None = None
    document_source: str | None = None
    namespace_id: str | None = None
    job_template_arn: str | None = None
    document_parameters: tuple[tuple[str, str], ...] = ()
    destination_package_versions: tuple[str, ...] = ()
    presigned_url: PresignedUrl | None = None
    rollout: Rollout | None = None
    abort: tuple[AbortCriterion, ...] = ()
    timeout_minutes: int | None = None
    retry: tuple[RetryCriterion, ...] = ()
    scheduling: Scheduling | None = None
    devices: Devices = Devices()
    precomputed: Precomputed | None = None
    # A job created again every so many minutes (a nightly push, a config sync): the
    # copies are `{id}-0001`, `{id}-0002`, ... so that a long-running fleet keeps getting
    # new jobs. Their scheduling minutes count from each copy's creation.
    every_minutes: float | None = None
    # DescribeJob `job` fields passed through as written, in botocore's shape (camelCase):
    # a field the simulator has no model for still reaches the exporter, so a new field is
    # exercised by one value here (CONTRIBUTING.md). JSON text, so the spec stays hashable.
    fields: str | None = None


# DescribeJob fields the fleet itself computes: a scenario cannot override them.
COMPUTED_FIELDS = frozenset(
    {
        "jobArn",
        "jobId",
        "status",
        "targets",
        "targetSelection",
        "createdAt",
        "lastUpdatedAt",
        "completedAt",
        "jobProcessDetails",
        "isConcurrent",
        "forceCanceled",
        "reasonCode",
        "comment",
        "scheduledJobRollouts",
    }
)


# Room for the `-NNNN` suffix of a repeated job within AWS's 64 characters.
REPEATED_ID_MAX = 59


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    things: int


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """Something that happens to the fleet at a simulated minute."""

    at_minutes: float
    action: str  # add_things | remove_things | cancel_job | delete_job | report_version
    group: str | None = None
    count: int = 0
    job_id: str | None = None
    force: bool = False
    reason_code: str | None = None
    comment: str | None = None
    # add_things, remove_things and report_version can repeat.
    every_minutes: float | None = None
    # report_version: things of `group` report this version of `package` without a job.
    package: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Generate:
    """Bulk jobs for scale tests: mostly terminal (precomputed), a fraction simulated."""

    jobs: int = 1000
    groups: int = 100
    things_per_group: int = 20
    active_ratio: float = 0.1
    canceled_ratio: float = 0.15
    maximum_per_minute: int = 10
    # Packages in the catalog (scale-package-0000, ...), each with versions 1.0.0, 1.1.0,
    # ... (the newest PUBLISHED, the others DEPRECATED) installed over every generated
    # group, for the cost of the version metrics at scale.
    packages: int = 0
    versions_per_package: int = 3


def generated_packages(gen: Generate) -> tuple[PackageSpec, ...]:
    groups = [f"scale-group-{g:04d}" for g in range(gen.groups)]
    k = gen.versions_per_package
    out = []
    for i in range(gen.packages):
        versions = tuple(
            PackageVersionSpec(
                name=f"1.{j}.0",
                status="PUBLISHED" if j == k - 1 else "DEPRECATED",
                created_minutes=-43200.0 + j * 1440.0,
            )
            for j in range(k)
        )
        # 90% of each group report a version, spread evenly over the versions.
        share = tuple((v.name, 0.9 / k) for v in versions)
        out.append(
            PackageSpec(
                name=f"scale-package-{i:04d}",
                versions=versions,
                default_version=versions[-1].name,
                installed=tuple(Installed(g, share) for g in groups),
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class FaultRule:
    """Apply a fault to a ratio of matching requests; empty scopes match everything."""

    ratio: float = 0.0
    operations: frozenset[str] = frozenset()
    job_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Latency:
    fixed_ms: float = 0.0
    jitter_ms: float = 0.0
    operations: frozenset[str] = frozenset()
    job_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Faults:
    latency: Latency = Latency()
    unavailable: FaultRule = FaultRule()
    unavailable_status: int = 503
    malformed: FaultRule = FaultRule()
    truncated: FaultRule = FaultRule()
    reset: FaultRule = FaultRule()
    missing_field: FaultRule = FaultRule()
    wrong_type: FaultRule = FaultRule()
    unknown_enum: FaultRule = FaultRule()
    denied: FaultRule = FaultRule()
    not_found: FaultRule = FaultRule()
    # Fleet indexing calls only: IndexNotReadyException, as while the index rebuilds.
    not_ready: FaultRule = FaultRule()
    # Fleet indexing calls only: hostile answers (huge bucket lists, versions with every
    # bad byte, counts that are negative, NaN, huge or not numbers).
    hostile_index: FaultRule = FaultRule()


# AWS's published rates where docs/simulator.md cites one (GetStatistics, GetCardinality:
# 15 per second); GetBucketsAggregation and the catalog's are not published there, and
# default lower so that a client that stays inside them stays inside AWS's too.
DEFAULT_RATES = {"GetBucketsAggregation": 5.0, "GetStatistics": 15.0, "GetCardinality": 15.0}


@dataclass(frozen=True, slots=True)
class Quotas:
    """Requests per second per operation (token bucket, burst = one second's worth)."""

    rates: tuple[tuple[str, float], ...] = tuple(
        (op, DEFAULT_RATES.get(op, 10.0)) for op in OPERATIONS
    )
    enabled: bool = True
    throttle_status: int = 429

    def rate(self, operation: str) -> float:
        return dict(self.rates).get(operation, DEFAULT_RATES.get(operation, 10.0))


@dataclass(frozen=True, slots=True)
class PackageVersionSpec:
    name: str
    status: str = "PUBLISHED"
    created_minutes: float = -43200.0
    description: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Installed:
    """What the things of a group report in `$package` at the start: version → fraction.

    Each thing draws one version by these fractions; what they leave up to 1 reports none.
    """

    group: str
    versions: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class PackageSpec:
    name: str
    versions: tuple[PackageVersionSpec, ...]
    description: str | None = None
    default_version: str | None = None
    created_minutes: float = -43200.0
    installed: tuple[Installed, ...] = ()


@dataclass(frozen=True, slots=True)
class Indexing:
    """Fleet indexing of the things and their `$package` shadows."""

    # ACTIVE answers; BUILDING and REBUILDING answer IndexNotReadyException; OFF (thing
    # indexing off) answers ResourceNotFoundException for the AWS_Things index.
    status: str = "ACTIVE"
    # The `$package` named shadow is a data source of the index.
    package_shadow: bool = True
    # A custom field is defined for every package's version field (needed to aggregate).
    version_fields: bool = True
    # The index answers from the shadows as they were this many simulated seconds ago.
    lag_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Scenario:
    file: str
    seed: int = 1
    speed: float = 1.0  # simulated minutes per real second
    account_id: str = "123456789012"
    region: str = "us-east-1"  # when a request carries no SigV4 credential scope
    start_time: datetime | None = None  # None: the wall clock at start, floored to the minute
    deletion_minutes: float = 10.0
    cancel_minutes: float = 1.0
    devices: Devices = Devices()
    groups: tuple[Group, ...] = ()
    jobs: tuple[JobSpec, ...] = ()
    timeline: tuple[TimelineEvent, ...] = ()
    generate: Generate | None = None
    quotas: Quotas = Quotas()
    faults: Faults = Faults()
    packages: tuple[PackageSpec, ...] = ()
    fleet_indexing: Indexing = Indexing()
    # UpdatePackageConfiguration's versionUpdateByJobsConfig: a job that names
    # destinationPackageVersions updates a thing's `$package` shadow when it succeeds there.
    version_update_by_jobs: bool = True


# --- the reader -------------------------------------------------------------------------


# --- sections ---------------------------------------------------------------------------

_SCENARIO_KEYS = (
    "seed",
    "speed",
    "account_id",
    "region",
    "start_time",
    "deletion_minutes",
    "cancel_minutes",
    "devices",
    "groups",
    "jobs",
    "timeline",
    "generate",
    "quotas",
    "faults",
    "packages",
    "fleet_indexing",
    "version_update_by_jobs",
)
_DEVICE_KEYS = (
    "queued_minutes",
    "in_progress_minutes",
    "reject_probability",
    "failure_probability",
    "stuck_probability",
    "offline_probability",
    "stuck_things",
    "offline_things",
    "failure_reasons",
    "unreported_probability",
)
_JOB_KEYS = (
    "id",
    "targets",
    "target_selection",
    "created_minutes",
    "description",
    "document_source",
    "namespace_id",
    "job_template_arn",
    "document_parameters",
    "destination_package_versions",
    "presigned_url",
    "rollout",
    "abort",
    "timeout_minutes",
    "retry",
    "scheduling",
    "devices",
    "precomputed",
    "every_minutes",
    "fields",
)
_EXECUTION_STATES = (
    "queued",
    "in_progress",
    "succeeded",
    "failed",
    "rejected",
    "canceled",
    "removed",
    "timed_out",
)


def _span(r: Reader, value: Any, path: str) -> Span:
    items = r.seq(value, path)
    if len(items) != 2:
        raise r.fail(path, f"expected [low, high] in minutes, got {value!r}")
    low = r.number(items[0], join(path, 0), 0.0)
    high = r.number(items[1], join(path, 1), low)
    return Span(low, high)


def _devices(r: Reader, value: Any, path: str, base: Devices) -> Devices:
    data = r.mapping(value, path, _DEVICE_KEYS)
    out = base
    if "queued_minutes" in data:
        out = replace(
            out, queued_minutes=_span(r, data["queued_minutes"], join(path, "queued_minutes"))
        )
    if "in_progress_minutes" in data:
        span = _span(r, data["in_progress_minutes"], join(path, "in_progress_minutes"))
        out = replace(out, in_progress_minutes=span)

    def probability(key: str) -> float:
        return r.probability(data.get(key, getattr(base, key)), join(path, key))

    def things(key: str) -> frozenset[str]:
        if key not in data:
            return frozenset(getattr(base, key))
        where = join(path, key)
        items = r.seq(data[key], where)
        return frozenset(r.string(v, join(where, i), _NAME) for i, v in enumerate(items))

    if "failure_reasons" in data:
        out = replace(out, failure_reasons=_reasons(r, data["failure_reasons"], path))
    stuck, offline = things("stuck_things"), things("offline_things")
    if stuck & offline:
        shown = ", ".join(sorted(stuck & offline)[:3])
        raise r.fail(
            join(path, "offline_things"), f"a thing cannot be both stuck and offline: {shown}"
        )
    return replace(
        out,
        reject_probability=probability("reject_probability"),
        failure_probability=probability("failure_probability"),
        stuck_probability=probability("stuck_probability"),
        offline_probability=probability("offline_probability"),
        unreported_probability=probability("unreported_probability"),
        stuck_things=stuck,
        offline_things=offline,
    )


def _reasons(r: Reader, value: Any, path: str) -> tuple[tuple[str, float], ...]:
    where = join(path, "failure_reasons")
    if not isinstance(value, Mapping):
        raise r.fail(where, "expected a mapping of reasons to weights")
    data = value
    out = []
    for reason, weight in data.items():
        if not isinstance(reason, str) or not 0 < len(reason) <= 128:
            raise r.fail(where, "keys must be reasons of 1-128 characters")
        out.append((reason, r.number(weight, join(where, reason), 0.0)))
    if out and not any(weight > 0 for _, weight in out):
        raise r.fail(where, "expected at least one reason with a weight above 0")
    return tuple(out)


def _target(r: Reader, value: Any, path: str) -> Target:
    text = r.string(value, path)
    kind, _, name = text.partition(":")
    if kind not in ("thing", "group") or not _NAME.match(name):
        raise r.fail(path, f"expected 'group:NAME' or 'thing:NAME', got {text!r}")
    return Target("thinggroup" if kind == "group" else "thing", name)


def _rollout(r: Reader, value: Any, path: str) -> Rollout:
    data = r.mapping(value, path, ("maximum_per_minute", "exponential_rate"))
    maximum = r.opt(data, "maximum_per_minute", path, lambda v, p: r.integer(v, p, 1, 1000))
    exp: ExponentialRate | None = None
    if data.get("exponential_rate") is not None:
        ep = join(path, "exponential_rate")
        e = r.mapping(
            data["exponential_rate"],
            ep,
            ("base_rate_per_minute", "increment_factor", "rate_increase_criteria"),
        )
        for key in ("base_rate_per_minute", "increment_factor", "rate_increase_criteria"):
            if key not in e:
                raise r.fail(join(ep, key), "required")
        cp = join(ep, "rate_increase_criteria")
        c = r.mapping(
            e["rate_increase_criteria"],
            cp,
            ("number_of_notified_things", "number_of_succeeded_things"),
        )
        notified = r.opt(c, "number_of_notified_things", cp, lambda v, p: r.integer(v, p, 1))
        succeeded = r.opt(c, "number_of_succeeded_things", cp, lambda v, p: r.integer(v, p, 1))
        if (notified is None) == (succeeded is None):
            raise r.fail(
                cp, "expected exactly one of number_of_notified_things, number_of_succeeded_things"
            )
        exp = ExponentialRate(
            r.integer(e["base_rate_per_minute"], join(ep, "base_rate_per_minute"), 1, 1000),
            r.number(e["increment_factor"], join(ep, "increment_factor"), 1.1, 5.0),
            RateIncreaseCriteria(notified, succeeded),
        )
    return Rollout(maximum, exp)


def _abort(r: Reader, value: Any, path: str) -> tuple[AbortCriterion, ...]:
    out = []
    keys = ("failure_type", "threshold_percentage", "min_number_of_executed_things", "action")
    for i, item in enumerate(r.seq(value, path)):
        p = join(path, i)
        d = r.mapping(item, p, keys)
        for key in keys[:3]:
            if key not in d:
                raise r.fail(join(p, key), "required")
        out.append(
            AbortCriterion(
                r.choice(d["failure_type"], join(p, "failure_type"), ABORT_FAILURE_TYPES),
                r.number(d["threshold_percentage"], join(p, "threshold_percentage"), 0.0, 100.0),
                r.integer(
                    d["min_number_of_executed_things"], join(p, "min_number_of_executed_things"), 1
                ),
                r.choice(d.get("action", "CANCEL"), join(p, "action"), ("CANCEL",)),
            )
        )
    return tuple(out)


def _retry(r: Reader, value: Any, path: str) -> tuple[RetryCriterion, ...]:
    out = []
    items = r.seq(value, path)
    if len(items) > 2:
        raise r.fail(path, "expected at most 2 criteria")
    for i, item in enumerate(items):
        p = join(path, i)
        d = r.mapping(item, p, ("failure_type", "number_of_retries"))
        for key in ("failure_type", "number_of_retries"):
            if key not in d:
                raise r.fail(join(p, key), "required")
        out.append(
            RetryCriterion(
                r.choice(d["failure_type"], join(p, "failure_type"), RETRY_FAILURE_TYPES),
                r.integer(d["number_of_retries"], join(p, "number_of_retries"), 0, 10),
            )
        )
    return tuple(out)


def _scheduling(r: Reader, value: Any, path: str) -> Scheduling:
    keys = ("start_minutes", "end_minutes", "end_behavior", "maintenance_windows")
    d = r.mapping(value, path, keys)
    start = r.opt(d, "start_minutes", path, lambda v, p: r.integer(v, p))
    end = r.opt(d, "end_minutes", path, lambda v, p: r.integer(v, p))
    if start is not None and end is not None and end <= start:
        raise r.fail(join(path, "end_minutes"), "expected a value after start_minutes")
    behavior = r.opt(d, "end_behavior", path, lambda v, p: r.choice(v, p, END_BEHAVIORS))
    windows = []
    wp = join(path, "maintenance_windows")
    for i, item in enumerate(r.seq(d.get("maintenance_windows"), wp)):
        p = join(wp, i)
        w = r.mapping(item, p, ("start_time", "duration_in_minutes"))
        for key in ("start_time", "duration_in_minutes"):
            if key not in w:
                raise r.fail(join(p, key), "required")
        expr = r.string(w["start_time"], join(p, "start_time"))
        try:
            cron = Cron.parse(expr)
        except CronError as e:
            raise r.fail(
                join(p, "start_time"), f"expected 'cron(m h dom mon dow year)': {e}"
            ) from None
        duration = r.integer(w["duration_in_minutes"], join(p, "duration_in_minutes"), 1, 1430)
        windows.append(MaintenanceWindow(expr, duration, cron))
    return Scheduling(start, end, behavior, tuple(windows))


def _precomputed(r: Reader, value: Any, path: str) -> Precomputed:
    d = r.mapping(value, path, ("status", "completed_minutes", "counts", "force_canceled"))
    status = r.choice(d.get("status"), join(path, "status"), ("COMPLETED", "CANCELED"))
    completed = r.number(d.get("completed_minutes", 0.0), join(path, "completed_minutes"))
    cp = join(path, "counts")
    c = r.mapping(d.get("counts"), cp, _EXECUTION_STATES)
    counts = tuple(
        (state, r.integer(c.get(state, 0), join(cp, state), 0)) for state in _EXECUTION_STATES
    )
    if any(state in ("queued", "in_progress") and n for state, n in counts):
        raise r.fail(cp, "a terminal job has no queued or in_progress executions")
    force = r.boolean(d.get("force_canceled", False), join(path, "force_canceled"))
    return Precomputed(status, completed, counts, force)


def _job(r: Reader, value: Any, path: str, devices: Devices) -> JobSpec:
    d = r.mapping(value, path, _JOB_KEYS)
    if "id" not in d:
        raise r.fail(join(path, "id"), "required")
    job_id = r.string(d["id"], join(path, "id"), _JOB_ID)
    tp = join(path, "targets")
    targets = tuple(_target(r, v, join(tp, i)) for i, v in enumerate(r.seq(d.get("targets"), tp)))
    if not targets:
        raise r.fail(tp, "expected at least one target ('group:NAME' or 'thing:NAME')")
    params: list[tuple[str, str]] = []
    pp = join(path, "document_parameters")
    for key, val in r.mapping(
        d.get("document_parameters"), pp, tuple(d.get("document_parameters") or ())
    ).items():
        params.append((str(key), r.string(val, join(pp, str(key)))))
    vp = join(path, "destination_package_versions")
    versions = tuple(
        r.string(v, join(vp, i)) for i, v in enumerate(r.seq(d.get(vp.rsplit(".", 1)[-1]), vp))
    )
    presigned = None
    if d.get("presigned_url") is not None:
        pu = join(path, "presigned_url")
        p = r.mapping(d["presigned_url"], pu, ("role_arn", "expires_in_sec"))
        presigned = PresignedUrl(
            r.string(p.get("role_arn"), join(pu, "role_arn")),
            r.integer(p.get("expires_in_sec", 3600), join(pu, "expires_in_sec"), 60, 3600),
        )

    def text(key: str, pattern: re.Pattern[str] | None = None) -> str | None:
        return r.opt(d, key, path, lambda v, p: r.string(v, p, pattern))

    every = r.opt(d, "every_minutes", path, lambda v, p: r.number(v, p, 1.0))
    if every is not None:
        if len(job_id) > REPEATED_ID_MAX:
            raise r.fail(
                join(path, "id"),
                f"expected at most {REPEATED_ID_MAX} characters for a repeated job "
                "(copies are named ID-0001, ID-0002, ...)",
            )
        if d.get("precomputed") is not None:
            raise r.fail(join(path, "every_minutes"), "a precomputed job cannot repeat")

    return JobSpec(
        job_id=job_id,
        targets=targets,
        target_selection=r.choice(
            d.get("target_selection", "SNAPSHOT"),
            join(path, "target_selection"),
            TARGET_SELECTIONS,
        ),
        created_minutes=r.number(d.get("created_minutes", 0.0), join(path, "created_minutes")),
        description=text("description"),
        document_source=text("document_source"),
        namespace_id=text("namespace_id", _NAMESPACE),
        job_template_arn=text("job_template_arn"),
        document_parameters=tuple(params),
        destination_package_versions=versions,
        presigned_url=presigned,
        rollout=r.opt(d, "rollout", path, lambda v, p: _rollout(r, v, p)),
        abort=_abort(r, d.get("abort"), join(path, "abort")),
        timeout_minutes=r.opt(d, "timeout_minutes", path, lambda v, p: r.integer(v, p, 1, 10080)),
        retry=_retry(r, d.get("retry"), join(path, "retry")),
        scheduling=r.opt(d, "scheduling", path, lambda v, p: _scheduling(r, v, p)),
        devices=_devices(r, d.get("devices"), join(path, "devices"), devices),
        precomputed=r.opt(d, "precomputed", path, lambda v, p: _precomputed(r, v, p)),
        every_minutes=every,
        fields=r.opt(d, "fields", path, lambda v, p: _fields(r, v, p)),
    )


def _fields(r: Reader, value: Any, path: str) -> str:
    if not isinstance(value, Mapping) or not value:
        raise r.fail(path, "expected a mapping of DescribeJob job fields to values")
    known = describe_job_fields()
    for key in value:
        where = join(path, str(key))
        if key not in known:
            raise r.fail(
                where, f"not a DescribeJob job field; expected one of {', '.join(sorted(known))}"
            )
        if key in COMPUTED_FIELDS:
            raise r.fail(where, "the simulator computes this field from the fleet")
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        raise r.fail(path, "expected JSON values (strings, numbers, lists, mappings)") from None


_TIMELINE_ACTIONS = ("add_things", "remove_things", "cancel_job", "delete_job", "report_version")


def _timeline_event(r: Reader, value: Any, path: str) -> TimelineEvent:
    keys = (
        "at_minutes",
        "action",
        "group",
        "count",
        "job",
        "force",
        "reason_code",
        "comment",
        "every_minutes",
        "package",
        "version",
    )
    d = r.mapping(value, path, keys)
    action = r.choice(d.get("action"), join(path, "action"), _TIMELINE_ACTIONS)
    at = r.number(d.get("at_minutes"), join(path, "at_minutes"))
    if action == "report_version":
        return TimelineEvent(
            at,
            action,
            group=r.string(d.get("group"), join(path, "group"), _NAME),
            count=r.integer(d.get("count"), join(path, "count"), 1),
            every_minutes=r.opt(d, "every_minutes", path, lambda v, p: r.number(v, p, 1.0)),
            package=r.string(d.get("package"), join(path, "package"), PACKAGE_NAME),
            version=r.string(d.get("version"), join(path, "version"), VERSION_NAME),
        )
    for key in ("package", "version"):
        if d.get(key) is not None:
            raise r.fail(join(path, key), "only report_version names a package version")
    if action in ("add_things", "remove_things"):
        return TimelineEvent(
            at,
            action,
            group=r.string(d.get("group"), join(path, "group"), _NAME),
            count=r.integer(d.get("count"), join(path, "count"), 1),
            every_minutes=r.opt(d, "every_minutes", path, lambda v, p: r.number(v, p, 1.0)),
        )
    if d.get("every_minutes") is not None:
        raise r.fail(
            join(path, "every_minutes"),
            "only add_things, remove_things and report_version can repeat",
        )
    return TimelineEvent(
        at,
        action,
        job_id=r.string(d.get("job"), join(path, "job"), _JOB_ID),
        force=r.boolean(d.get("force", False), join(path, "force")),
        reason_code=r.opt(d, "reason_code", path, lambda v, p: r.string(v, p, _REASON)),
        comment=r.opt(d, "comment", path, lambda v, p: r.string(v, p)),
    )


def _generate(r: Reader, value: Any, path: str) -> Generate:
    keys = (
        "jobs",
        "groups",
        "things_per_group",
        "active_ratio",
        "canceled_ratio",
        "maximum_per_minute",
        "packages",
        "versions_per_package",
    )
    d = r.mapping(value, path, keys)
    g = Generate()
    return Generate(
        jobs=r.integer(d.get("jobs", g.jobs), join(path, "jobs"), 0, 100_000),
        groups=r.integer(d.get("groups", g.groups), join(path, "groups"), 1),
        things_per_group=r.integer(
            d.get("things_per_group", g.things_per_group), join(path, "things_per_group"), 1
        ),
        active_ratio=r.probability(
            d.get("active_ratio", g.active_ratio), join(path, "active_ratio")
        ),
        canceled_ratio=r.probability(
            d.get("canceled_ratio", g.canceled_ratio), join(path, "canceled_ratio")
        ),
        maximum_per_minute=r.integer(
            d.get("maximum_per_minute", g.maximum_per_minute),
            join(path, "maximum_per_minute"),
            1,
            1000,
        ),
        packages=r.integer(d.get("packages", g.packages), join(path, "packages"), 0, 10_000),
        versions_per_package=r.integer(
            d.get("versions_per_package", g.versions_per_package),
            join(path, "versions_per_package"),
            1,
            1000,
        ),
    )


def _scope(r: Reader, d: Mapping[str, Any], path: str) -> tuple[frozenset[str], frozenset[str]]:
    op_path = join(path, "operations")
    ops = frozenset(
        r.choice(v, join(op_path, i), OPERATIONS)
        for i, v in enumerate(r.seq(d.get("operations"), op_path))
    )
    id_path = join(path, "job_ids")
    ids = frozenset(
        r.string(v, join(id_path, i), _JOB_ID)
        for i, v in enumerate(r.seq(d.get("job_ids"), id_path))
    )
    return ops, ids


def _rule(r: Reader, value: Any, path: str) -> FaultRule:
    d = r.mapping(value, path, ("ratio", "operations", "job_ids"))
    ops, ids = _scope(r, d, path)
    return FaultRule(r.probability(d.get("ratio", 0.0), join(path, "ratio")), ops, ids)


# The keys of `faults:`, and the names of the ratio rules among them, as the fields of Faults.
_FAULT_KEYS = tuple(f.name for f in fields(Faults))
FAULT_RULES = tuple(f.name for f in fields(Faults) if f.type == "FaultRule")


def parse_faults(r: Reader, value: Any, path: str, base: Faults = Faults()) -> Faults:
    """Faults as a partial update of `base`: keys not given keep their current value."""
    d = r.mapping(value, path, _FAULT_KEYS)
    out = base
    rules: dict[str, Any] = {}
    for key, item in d.items():
        p = join(path, key)
        if key == "latency":
            lat = r.mapping(item, p, ("fixed_ms", "jitter_ms", "operations", "job_ids"))
            ops, ids = _scope(r, lat, p)
            out = replace(
                out,
                latency=Latency(
                    r.number(lat.get("fixed_ms", 0.0), join(p, "fixed_ms"), 0.0, 600_000.0),
                    r.number(lat.get("jitter_ms", 0.0), join(p, "jitter_ms"), 0.0, 600_000.0),
                    ops,
                    ids,
                ),
            )
        elif key == "unavailable_status":
            out = replace(out, unavailable_status=int(r.choice(item, p, (500, 503))))
        else:
            rules[key] = _rule(r, item, p)
    return replace(out, **rules)


def parse_quotas(r: Reader, value: Any, path: str, base: Quotas = Quotas()) -> Quotas:
    """Quotas as a partial update of `base`."""
    d = r.mapping(value, path, (*OPERATIONS, "enabled", "throttle_status"))
    rates = dict(base.rates)
    for op in OPERATIONS:
        if op in d:
            rates[op] = r.number(d[op], join(path, op), 0.01, 100_000.0)
    enabled = r.boolean(d.get("enabled", base.enabled), join(path, "enabled"))
    status = d.get("throttle_status", base.throttle_status)
    if status not in (400, 429):
        raise r.fail(join(path, "throttle_status"), f"expected 400 or 429, got {status!r}")
    return Quotas(tuple(rates.items()), enabled, int(status))


def _attributes(r: Reader, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise r.fail(path, "expected a mapping of attribute names to strings")
    return tuple((r.string(k, path), r.string(v, join(path, str(k)))) for k, v in value.items())


def _package(r: Reader, value: Any, path: str, groups: set[str]) -> PackageSpec:
    keys = ("name", "description", "default_version", "created_minutes", "versions", "installed")
    d = r.mapping(value, path, keys)
    name = r.string(d.get("name"), join(path, "name"), PACKAGE_NAME)
    versions: list[PackageVersionSpec] = []
    vp = join(path, "versions")
    items = r.seq(d.get("versions"), vp)
    if not items:
        raise r.fail(vp, "expected at least one version")
    for i, item in enumerate(items):
        p = join(vp, i)
        v = r.mapping(item, p, ("name", "status", "created_minutes", "description", "attributes"))
        version = r.string(v.get("name"), join(p, "name"), VERSION_NAME)
        if any(x.name == version for x in versions):
            raise r.fail(join(p, "name"), f"duplicate version {version!r}")
        versions.append(
            PackageVersionSpec(
                name=version,
                status=r.choice(
                    v.get("status", "PUBLISHED"), join(p, "status"), PACKAGE_VERSION_STATUSES
                ),
                created_minutes=r.number(
                    v.get("created_minutes", -43200.0), join(p, "created_minutes")
                ),
                description=r.opt(v, "description", p, lambda x, q: r.string(x, q)),
                attributes=_attributes(r, v.get("attributes"), join(p, "attributes")),
            )
        )
    names = {v.name for v in versions}
    default = r.opt(d, "default_version", path, lambda x, q: r.string(x, q, VERSION_NAME))
    if default is not None:
        if default not in names:
            raise r.fail(join(path, "default_version"), f"not one of the versions: {default!r}")
        if dict((v.name, v.status) for v in versions)[default] == "DRAFT":
            raise r.fail(join(path, "default_version"), "a DRAFT version cannot be the default")
    installed = []
    ip = join(path, "installed")
    for i, item in enumerate(r.seq(d.get("installed"), ip)):
        p = join(ip, i)
        g = r.mapping(item, p, ("group", "versions"))
        group = r.string(g.get("group"), join(p, "group"), _NAME)
        if group not in groups:
            raise r.fail(join(p, "group"), f"unknown group {group!r}")
        wp = join(p, "versions")
        raw = g.get("versions")
        if not isinstance(raw, Mapping) or not raw:
            raise r.fail(wp, "expected a mapping of versions to fractions of the group")
        fractions = []
        for version, fraction in raw.items():
            if version not in names:
                raise r.fail(join(wp, str(version)), f"not one of the versions: {version!r}")
            fractions.append((str(version), r.probability(fraction, join(wp, str(version)))))
        if sum(f for _, f in fractions) > 1.0 + 1e-9:
            raise r.fail(wp, "the fractions add up to more than 1")
        installed.append(Installed(group, tuple(fractions)))
    return PackageSpec(
        name=name,
        versions=tuple(versions),
        description=r.opt(d, "description", path, lambda x, q: r.string(x, q)),
        default_version=default,
        created_minutes=r.number(d.get("created_minutes", -43200.0), join(path, "created_minutes")),
        installed=tuple(installed),
    )


def parse_indexing(r: Reader, value: Any, path: str, base: Indexing = Indexing()) -> Indexing:
    """Fleet indexing as a partial update of `base`."""
    d = r.mapping(value, path, ("status", "package_shadow", "version_fields", "lag_seconds"))
    return Indexing(
        status=r.choice(d.get("status", base.status), join(path, "status"), INDEX_STATUSES),
        package_shadow=r.boolean(
            d.get("package_shadow", base.package_shadow), join(path, "package_shadow")
        ),
        version_fields=r.boolean(
            d.get("version_fields", base.version_fields), join(path, "version_fields")
        ),
        lag_seconds=r.number(
            d.get("lag_seconds", base.lag_seconds), join(path, "lag_seconds"), 0.0, 86400.0
        ),
    )


def indexing_from_json(data: Any, base: Indexing) -> Indexing:
    """Parse a run-time fleet indexing update (POST /_sim/indexing)."""
    return parse_indexing(Reader("/_sim/indexing", ScenarioError), data, "fleet_indexing", base)


def parse_scenario(data: Any, file: str) -> Scenario:
    r = Reader(file, ScenarioError)
    d = r.mapping(data, "", _SCENARIO_KEYS)
    start = None
    if d.get("start_time") is not None:
        raw = d["start_time"]
        try:
            start = datetime.strptime(str(raw), _START_TIME).replace(tzinfo=UTC)
        except ValueError:
            raise r.fail("start_time", f"expected 'YYYY-MM-DDTHH:MM' (UTC), got {raw!r}") from None
    devices = _devices(r, d.get("devices"), "devices", Devices())
    groups = []
    names: set[str] = set()
    for i, item in enumerate(r.seq(d.get("groups"), "groups")):
        p = join("groups", i)
        g = r.mapping(item, p, ("name", "things"))
        name = r.string(g.get("name"), join(p, "name"), _NAME)
        if name in names:
            raise r.fail(join(p, "name"), f"duplicate group {name!r}")
        names.add(name)
        groups.append(Group(name, r.integer(g.get("things", 0), join(p, "things"), 0, 1_000_000)))
    jobs = []
    ids: set[str] = set()
    for i, item in enumerate(r.seq(d.get("jobs"), "jobs")):
        p = join("jobs", i)
        job = _job(r, item, p, devices)
        if job.job_id in ids:
            raise r.fail(join(p, "id"), f"duplicate job id {job.job_id!r}")
        ids.add(job.job_id)
        for j, t in enumerate(job.targets):
            if t.kind == "thinggroup" and t.name not in names:
                raise r.fail(join(join(p, "targets"), j), f"unknown group {t.name!r}")
        jobs.append(job)
    timeline = []
    for i, item in enumerate(r.seq(d.get("timeline"), "timeline")):
        p = join("timeline", i)
        ev = _timeline_event(r, item, p)
        if ev.group is not None and ev.group not in names:
            raise r.fail(join(p, "group"), f"unknown group {ev.group!r}")
        if ev.job_id is not None and ev.job_id not in ids:
            raise r.fail(join(p, "job"), f"unknown job {ev.job_id!r}")
        timeline.append(ev)
    packages: list[PackageSpec] = []
    for i, item in enumerate(r.seq(d.get("packages"), "packages")):
        p = join("packages", i)
        package = _package(r, item, p, names)
        if any(x.name == package.name for x in packages):
            raise r.fail(join(p, "name"), f"duplicate package {package.name!r}")
        packages.append(package)
    generate = r.opt(d, "generate", "", lambda v, p: _generate(r, v, p))
    if generate is not None:
        packages += generated_packages(generate)
    catalog = {p.name: {v.name for v in p.versions} for p in packages}
    for i, ev in enumerate(timeline):
        if ev.action == "report_version" and ev.version not in catalog.get(ev.package or "", ()):
            raise r.fail(
                join(join("timeline", i), "version"),
                f"{ev.package}/{ev.version} is not a version in packages",
            )
    return Scenario(
        file=file,
        seed=r.integer(d.get("seed", 1), "seed"),
        speed=r.number(d.get("speed", 1.0), "speed", 0.0, 100_000.0),
        account_id=r.string(str(d.get("account_id", "123456789012")), "account_id", _ACCOUNT),
        region=r.string(d.get("region", "us-east-1"), "region", _REGION),
        start_time=start,
        deletion_minutes=r.number(d.get("deletion_minutes", 10.0), "deletion_minutes", 0.0),
        cancel_minutes=r.number(d.get("cancel_minutes", 1.0), "cancel_minutes", 0.0),
        devices=devices,
        groups=tuple(groups),
        jobs=tuple(jobs),
        timeline=tuple(sorted(timeline, key=lambda e: e.at_minutes)),
        generate=generate,
        quotas=parse_quotas(r, d.get("quotas"), "quotas"),
        faults=parse_faults(r, d.get("faults"), "faults"),
        packages=tuple(packages),
        fleet_indexing=parse_indexing(r, d.get("fleet_indexing"), "fleet_indexing"),
        version_update_by_jobs=r.boolean(
            d.get("version_update_by_jobs", True), "version_update_by_jobs"
        ),
    )


def bundled_scenarios() -> tuple[str, ...]:
    """Names of the scenarios shipped inside the package (`--scenario demo`)."""
    folder = resources.files("simulator") / "scenarios"
    return tuple(
        sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))
    )


def bundled_scenario(name: str) -> Traversable | None:
    """The packaged scenario called `name`, so that an installed wheel needs no checkout.

    Only bare names count (`demo`, not `demo.yaml` or a path); callers let an existing file of
    the same name win.
    """
    if name not in bundled_scenarios():
        return None
    return resources.files("simulator") / "scenarios" / f"{name}.yaml"


def load_scenario(
    path: str | os.PathLike[str],
    *,
    jobs: int | None = None,
    no_quotas: bool = False,
    seed: int | None = None,
    speed: float | None = None,
) -> Scenario:
    """Read and validate a scenario file (or a bundled one by name), then apply overrides."""
    file = os.fspath(path)
    bundled = None if Path(file).exists() else bundled_scenario(file)
    if bundled is not None:
        file, text = str(bundled), bundled.read_text(encoding="utf-8")
    elif not Path(file).exists():
        names = ", ".join(bundled_scenarios())
        raise ScenarioError(
            file, "", f"cannot read: no such file, nor a bundled scenario ({names})"
        )
    else:
        text = read_file(file, ScenarioError)
    data = load_yaml(text, file, ScenarioError)
    scenario = parse_scenario(data, file)
    if jobs is not None:
        if jobs < 0:
            raise ScenarioError(file, "generate.jobs", f"expected a value ≥ 0, got {jobs}")
        scenario = replace(scenario, generate=replace(scenario.generate or Generate(), jobs=jobs))
    if seed is not None:
        scenario = replace(scenario, seed=seed)
    if speed is not None:
        if not math.isfinite(speed) or speed < 0:
            raise ScenarioError(file, "speed", f"expected a number ≥ 0, got {speed}")
        scenario = replace(scenario, speed=speed)
    if no_quotas:
        scenario = replace(scenario, quotas=replace(scenario.quotas, enabled=False))
    return scenario


def faults_from_json(data: Any, base: Faults) -> Faults:
    """Parse a run-time faults update (POST /_sim/faults)."""
    return parse_faults(Reader("/_sim/faults", ScenarioError), data, "faults", base)


def quotas_from_json(data: Any, base: Quotas) -> Quotas:
    return parse_quotas(Reader("/_sim/faults", ScenarioError), data, "quotas", base)


def job_from_json(data: Any, devices: Devices, groups: set[str]) -> JobSpec:
    """Parse a job created at run time (POST /_sim/jobs), in the scenario's job format."""
    r = Reader("/_sim/jobs", ScenarioError)
    job = _job(r, data, "job", devices)
    for j, t in enumerate(job.targets):
        if t.kind == "thinggroup" and t.name not in groups:
            raise r.fail(f"job.targets[{j}]", f"unknown group {t.name!r}")
    return job


def reason_from_json(value: Any, path: str) -> str | None:
    if value is None:
        return None
    return Reader("/_sim", ScenarioError).string(value, path, _REASON)


__all__ = [
    "OPERATIONS",
    "AbortCriterion",
    "Devices",
    "ExponentialRate",
    "FaultRule",
    "Faults",
    "Generate",
    "Group",
    "Indexing",
    "Installed",
    "JobSpec",
    "Latency",
    "MaintenanceWindow",
    "PackageSpec",
    "PackageVersionSpec",
    "Precomputed",
    "Quotas",
    "RetryCriterion",
    "Rollout",
    "Scenario",
    "ScenarioError",
    "Scheduling",
    "Target",
    "TimelineEvent",
    "load_scenario",
]
