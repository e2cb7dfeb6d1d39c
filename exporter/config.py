"""YAML configuration into frozen dataclasses; errors name the file, field path and expectation."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.model import JOB_ID, JOB_STATUSES
from exporter.reader import LocatedError, Reader, field_name, kind, load_yaml, read_file, shown
from exporter.table import RESERVED_LABELS, family_name_problem

TARGET_SELECTIONS = ("CONTINUOUS", "SNAPSHOT")
OTLP_PROTOCOLS = ("http/protobuf", "grpc")

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_TARGET_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


class ConfigError(LocatedError):
    """A configuration problem, located by file and field path."""


@dataclass(frozen=True, slots=True)
class Discover:
    status: str | None = None
    target_selection: str | None = None
    thing_group_name: str | None = None
    thing_group_id: str | None = None
    namespace_id: str | None = None
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()

    def list_jobs_params(self) -> dict[str, str]:
        """The server-side ListJobs filters, in botocore's parameter names."""
        params = {
            "status": self.status,
            "targetSelection": self.target_selection,
            "thingGroupName": self.thing_group_name,
            "thingGroupId": self.thing_group_id,
            "namespaceId": self.namespace_id,
        }
        return {k: v for k, v in params.items() if v is not None}

    def matches(self, job_id: str) -> bool:
        if self.include and not any(p.search(job_id) for p in self.include):
            return False
        return not any(p.search(job_id) for p in self.exclude)


@dataclass(frozen=True, slots=True)
class Jobs:
    ids: tuple[str, ...] = ()
    discover: Discover | None = None


@dataclass(frozen=True, slots=True)
class Events:
    """Job events read from an SQS queue (docs/events.md); polling remains the safety net."""

    sqs_queue_url: str
    # SQS endpoint; by default AWS's, or the queue URL's host when that is not AWS's.
    endpoint_url: str | None = None
    # The statusDetails key whose value says why an execution failed.
    reason_key: str | None = None
    max_reasons_per_job: int = 10
    # Active jobs are described this often while events flow (instead of every interval).
    reconcile_interval: float = 300.0
    # A job is described because of events at most this often.
    min_describe_interval: float = 5.0
    # No message for this long while jobs are active: events are taken as lost.
    silence_timeout: float = 900.0
    dedup_capacity: int = 100_000
    # Job ids only events have named (not yet seen by discovery) awaiting their first
    # describe; more are dropped and counted: anyone who can write to the queue can name
    # any number of them.
    max_unknown_jobs: int = 100
    # The largest ReceiveMessage answer read; a larger one is refused and the next receive
    # asks for one message (AWS's own bound is 10 messages of 256 KiB).
    max_receive_bytes: int = 4 * 1024 * 1024

    @property
    def sqs_endpoint(self) -> str | None:
        if self.endpoint_url is not None:
            return self.endpoint_url
        match = re.match(r"^(https?://[^/]+)/", self.sqs_queue_url)
        if match and not re.search(r"\.amazonaws\.com(\.cn)?(:\d+)?$", match.group(1)):
            return match.group(1)
        return None


@dataclass(frozen=True, slots=True)
class TargetPackages:
    """The Software Package Catalog packages whose versions are counted (docs/metrics.md)."""

    # Packages counted whatever the catalog lists.
    names: tuple[str, ...] = ()
    # Also every package ListPackages lists, filtered by include/exclude (regular
    # expressions on the package name, as for jobs).
    discover: bool = False
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()

    def matches(self, name: str) -> bool:
        if self.include and not any(p.search(name) for p in self.include):
            return False
        return not any(p.search(name) for p in self.exclude)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    region: str
    jobs: Jobs
    role_arn: str | None = None
    # External ids are shared secrets of cross-account trust: kept out of repr and logs.
    external_id: str | None = field(default=None, repr=False)
    session_name: str = "aws-iot-jobs-exporter"
    profile: str | None = None
    endpoint_url: str | None = None
    sts_endpoint_url: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    events: Events | None = None
    packages: TargetPackages | None = None


# The largest stuck_list_size: 50 jobs of 100 rows is a status page of about 2 MB of JSON.
MAX_STUCK_LIST_SIZE = 100


@dataclass(frozen=True, slots=True)
class Executions:
    """Sweeps of ListJobExecutionsForJob over the QUEUED and IN_PROGRESS executions of the
    active jobs: ages, stuck counts and retry attempts (docs/metrics.md)."""

    # Calls per second per account and region, shared by its targets, divided by
    # --total-shards; 0 turns sweeps off. AWS allows 10 by default, shared with every
    # other tool of the account.
    requests_per_second: float = 2.0
    # In progress this long counts as stuck when the job has no in-progress timeout.
    stuck_in_progress_after: float = 3600.0
    # Queued this long counts as stuck: the device has not connected.
    stuck_queued_after: float = 86400.0
    # A sweep reads at most this many summaries of one job per state (400 pages of 250).
    max_executions_per_job: int = 100_000
    # The oldest stuck executions per job the status page lists by name (at most
    # MAX_STUCK_LIST_SIZE: the page lists up to 50 jobs, and is rendered whole).
    stuck_list_size: int = 10
    # Started executions remembered per target, to time their run when their terminal
    # event comes: (thing, startedAt) pairs, about 200 bytes each.
    max_tracked_executions: int = 100_000
    # An answer whose Date header is farther than this from the host's clock is not
    # believed: ages are then measured on the host's clock (AWS refuses requests signed
    # more than 15 minutes from its own clock, so a real answer is never that far).
    max_clock_skew: float = 900.0


@dataclass(frozen=True, slots=True)
class PackageSettings:
    """Devices per package version and each rollout's adoption, from fleet indexing
    (GetBucketsAggregation, GetStatistics) and the Software Package Catalog."""

    # Calls per second per operation, shared by the targets of one account and region and
    # divided by --total-shards: a budget of its own. 0 turns the package metrics off.
    requests_per_second: float = 1.0
    # How often every package is counted again. The index itself trails the devices by
    # seconds to minutes, so a shorter interval shows little more.
    interval: float = 300.0
    # Versions exported per package, the largest first; the rest are summed as "other".
    max_versions_per_package: int = 10
    # Thing groups of a job counted for its adoption and per-group progress.
    max_groups_per_job: int = 10
    # Things a job targets directly counted for its adoption, THINGS_PER_QUERY a call.
    max_things_per_job: int = 100
    # Packages counted per target, configured and discovered together.
    max_packages: int = 100


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    interval: float = 60.0
    discovery_interval: float = 300.0
    request_timeout: float = 10.0
    concurrency: int = 10
    terminal_job_retention: float = 86400.0
    max_attempts: int = 3
    # Half of AWS's default quota (10/s per account and region): the rest is left to
    # the customer's own tools, which share the quota (docs/events.md has the arithmetic).
    requests_per_second: float = 5.0
    # Bounds on what a hostile or broken endpoint can make us do (docs/security.md).
    attempt_timeout: float = 30.0
    discovery_max_pages: int = 1000
    discovery_max_jobs: int = 100_000
    executions: Executions = Executions()
    packages: PackageSettings = PackageSettings()


@dataclass(frozen=True, slots=True)
class Otel:
    """OTLP push of the same job metrics (and optional traces of collection cycles)."""

    enabled: bool = False
    # A URL may carry user-info credentials: kept out of repr like the headers.
    endpoint: str = field(default="http://localhost:4318", repr=False)
    protocol: str = "http/protobuf"
    interval: float = 60.0
    timeout: float = 10.0
    # Often carry API keys of a vendor: kept out of repr and logs.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    service_name: str = "aws-iot-jobs-exporter"
    resource_attributes: tuple[tuple[str, str], ...] = ()
    tracing: bool = False


@dataclass(frozen=True, slots=True)
class Metrics:
    """Which job metric families are exported: all of `allow` (every family when empty),
    or every family but `deny`. Setting both is refused, as kube-state-metrics does."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    targets: tuple[Target, ...]
    collector: CollectorSettings = CollectorSettings()
    otel: Otel = Otel()
    metrics: Metrics = Metrics()


def _read_section(
    r: Reader, value: Any, path: str, readers: dict[str, Callable[[Any, str], Any]]
) -> dict[str, Any]:
    """The keys of a section that are set, each read by its reader; the rest keep defaults."""
    data = r.mapping(value, path, tuple(readers))
    read = {key: r.opt(data, key, path, reader) for key, reader in readers.items()}
    return {key: item for key, item in read.items() if item is not None}


def _read_collector(r: Reader, value: Any) -> CollectorSettings:
    readers: dict[str, Callable[[Any, str], Any]] = {
        "interval": r.duration,
        "discovery_interval": r.duration,
        "request_timeout": r.duration,
        "concurrency": lambda v, p: r.integer(v, p, 1, 256),
        "terminal_job_retention": r.duration,
        "max_attempts": lambda v, p: r.integer(v, p, 1, 10),
        "requests_per_second": lambda v, p: r.number(v, p, 0.1),
        "attempt_timeout": r.duration,
        "discovery_max_pages": lambda v, p: r.integer(v, p, 1, 1_000_000),
        "discovery_max_jobs": lambda v, p: r.integer(v, p, 1, 100_000_000),
        "executions": lambda v, p: _read_executions(r, v, p),
        "packages": lambda v, p: _read_package_settings(r, v, p),
    }
    return CollectorSettings(**_read_section(r, value, "collector", readers))


# Package names as the catalog allows them (botocore's PackageName shape).
_PACKAGE_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
# Labels of the package families: a static label by one of these names is refused.
PACKAGE_LABELS = frozenset({"package", "version", "status", "thing_group"})


def _read_package_settings(r: Reader, value: Any, path: str) -> PackageSettings:
    readers: dict[str, Callable[[Any, str], Any]] = {
        "requests_per_second": lambda v, p: r.number(v, p, 0.0),
        "interval": lambda v, p: _at_least(r, r.duration(v, p), p, 1.0),
        "max_versions_per_package": lambda v, p: r.integer(v, p, 1, 1000),
        "max_groups_per_job": lambda v, p: r.integer(v, p, 0, 100),
        "max_things_per_job": lambda v, p: r.integer(v, p, 0, 1000),
        "max_packages": lambda v, p: r.integer(v, p, 1, 10_000),
    }
    return PackageSettings(**_read_section(r, value, path, readers))


def _at_least(r: Reader, seconds: float, path: str, low: float) -> float:
    if seconds < low:
        raise r.fail(path, f"expected a duration of at least {low:g}s, got {seconds:g}s")
    return seconds


def _read_target_packages(r: Reader, value: Any, path: str) -> TargetPackages:
    data = r.mapping(value, path, ("names", "discover", "include", "exclude"))
    names: list[str] = []
    for i, item in enumerate(r.seq(data.get("names"), f"{path}.names")):
        where = f"{path}.names[{i}]"
        name = r.string(item, where, _PACKAGE_NAME, "a package name (1-128 of a-z A-Z 0-9 _ . -)")
        if name in names:
            raise r.fail(where, f"{shown(name)} is listed twice")
        names.append(name)
    discover = r.opt(data, "discover", path, r.boolean) or False
    if not names and not discover:
        raise r.fail(path, "expected names, discover: true, or both")
    return TargetPackages(
        names=tuple(names),
        discover=discover,
        include=r.opt(data, "include", path, r.regexes) or (),
        exclude=r.opt(data, "exclude", path, r.regexes) or (),
    )


def _read_executions(r: Reader, value: Any, path: str) -> Executions:
    readers: dict[str, Callable[[Any, str], Any]] = {
        "requests_per_second": lambda v, p: r.number(v, p, 0.0),
        "stuck_in_progress_after": r.duration,
        "stuck_queued_after": r.duration,
        "max_executions_per_job": lambda v, p: r.integer(v, p, 1, 10_000_000),
        "stuck_list_size": lambda v, p: r.integer(v, p, 0, MAX_STUCK_LIST_SIZE),
        "max_tracked_executions": lambda v, p: r.integer(v, p, 0, 10_000_000),
        "max_clock_skew": r.duration,
    }
    return Executions(**_read_section(r, value, path, readers))


def _read_string_map(
    r: Reader, value: Any, path: str, secret: bool = False
) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise r.fail(path, f"expected a mapping of names to string values, got {kind(value)}")
    out = []
    for key, item in value.items():
        where = f"{path}.{field_name(key)}"
        if not isinstance(key, str) or not key:
            raise r.fail(path, "keys must be non-empty strings")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            shown = "a value of another type" if secret else kind(item)
            raise r.fail(where, f"expected a string value, got {shown}")
        out.append((key, str(item)))
    return tuple(sorted(out))


def _read_otel(r: Reader, value: Any) -> Otel:
    readers: dict[str, Callable[[Any, str], Any]] = {
        "enabled": r.boolean,
        "endpoint": lambda v, p: r.string(v, p, _URL, "an http(s) URL"),
        "protocol": lambda v, p: r.choice(v, p, OTLP_PROTOCOLS),
        "interval": r.duration,
        "timeout": r.duration,
        "headers": lambda v, p: _read_string_map(r, v, p, secret=True),
        "service_name": r.string,
        "resource_attributes": lambda v, p: _read_string_map(r, v, p),
        "tracing": r.boolean,
    }
    return Otel(**_read_section(r, value, "otel", readers))


_SQS_QUEUE_URL = re.compile(r"^https?://[^\s/]+/\d{12}/[a-zA-Z0-9_-]{1,80}(\.fifo)?$")
_REASON_KEY = re.compile(r"^[^\x00-\x1f]{1,128}$")


def _read_events(r: Reader, value: Any, path: str) -> Events:
    data = r.mapping(
        value,
        path,
        (
            "sqs_queue_url",
            "endpoint_url",
            "reason_key",
            "max_reasons_per_job",
            "reconcile_interval",
            "min_describe_interval",
            "silence_timeout",
            "dedup_capacity",
            "max_unknown_jobs",
            "max_receive_bytes",
        ),
    )
    if "sqs_queue_url" not in data:
        raise r.fail(f"{path}.sqs_queue_url", "is required when events is set")
    readers: dict[str, Callable[[Any, str], Any]] = {
        "endpoint_url": lambda v, p: r.string(v, p, _URL, "an http(s) URL"),
        "reason_key": lambda v, p: r.string(v, p, _REASON_KEY, "a statusDetails key"),
        "max_reasons_per_job": lambda v, p: r.integer(v, p, 1, 100),
        "reconcile_interval": r.duration,
        "min_describe_interval": r.duration,
        "silence_timeout": r.duration,
        "dedup_capacity": lambda v, p: r.integer(v, p, 1000, 10_000_000),
        "max_unknown_jobs": lambda v, p: r.integer(v, p, 0, 100_000),
        # At least two of SQS's largest messages (1 MiB): one alone must always fit.
        "max_receive_bytes": lambda v, p: r.integer(v, p, 2 * 1024 * 1024, 64 * 1024 * 1024),
    }
    read = {key: r.opt(data, key, path, reader) for key, reader in readers.items()}
    return Events(
        sqs_queue_url=r.string(
            data["sqs_queue_url"],
            f"{path}.sqs_queue_url",
            _SQS_QUEUE_URL,
            "an SQS queue URL like https://sqs.us-east-1.amazonaws.com/123456789012/name",
        ),
        **{key: item for key, item in read.items() if item is not None},
    )


def _read_family_names(r: Reader, value: Any, path: str) -> tuple[str, ...]:
    """A list of job metric family names (or one name), each checked against the table."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise r.fail(path, f"expected a list of metric family names, got {kind(value)}")
    names: list[str] = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        name = r.string(item, where)
        problem = family_name_problem(name)
        if problem is not None:
            raise r.fail(where, problem)
        if name in names:
            raise r.fail(where, f"{name!r} is listed twice")
        names.append(name)
    return tuple(names)


def _read_metrics(r: Reader, value: Any) -> Metrics:
    readers: dict[str, Callable[[Any, str], Any]] = {
        "allow": lambda v, p: _read_family_names(r, v, p),
        "deny": lambda v, p: _read_family_names(r, v, p),
    }
    metrics = Metrics(**_read_section(r, value, "metrics", readers))
    if metrics.allow and metrics.deny:
        raise r.fail(
            "metrics.deny",
            "set either allow or deny, not both: allow keeps only the families it lists, "
            "deny drops the ones it lists",
        )
    return metrics


def _read_discover(r: Reader, value: Any, path: str) -> Discover:
    keys = (
        "status",
        "target_selection",
        "thing_group_name",
        "thing_group_id",
        "namespace_id",
        "include",
        "exclude",
    )
    data = r.mapping(value, path, keys)
    status = r.opt(data, "status", path, lambda v, p: r.choice(v, p, JOB_STATUSES))
    selection = r.opt(
        data, "target_selection", path, lambda v, p: r.choice(v, p, TARGET_SELECTIONS)
    )
    group_name = r.opt(data, "thing_group_name", path, r.string)
    group_id = r.opt(data, "thing_group_id", path, r.string)
    if group_name is not None and group_id is not None:
        raise r.fail(
            f"{path}.thing_group_id", "set either thing_group_name or thing_group_id, not both"
        )
    return Discover(
        status=status,
        target_selection=selection,
        thing_group_name=group_name,
        thing_group_id=group_id,
        namespace_id=r.opt(data, "namespace_id", path, r.string),
        include=r.opt(data, "include", path, r.regexes) or (),
        exclude=r.opt(data, "exclude", path, r.regexes) or (),
    )


def _read_jobs(r: Reader, value: Any, path: str) -> Jobs:
    if value is None:
        raise r.fail(path, "expected a mapping with ids and/or discover")
    data = r.mapping(value, path, ("ids", "discover"))
    ids: list[str] = []
    # A set beside the list: 60,000 ids checked against a list took 20 s, and a reload
    # that slow holds SIGTERM past its deadline.
    seen: set[str] = set()
    if data.get("ids") is not None:
        raw = data["ids"]
        if not isinstance(raw, list):
            raise r.fail(f"{path}.ids", f"expected a list of job ids, got {kind(raw)}")
        for i, item in enumerate(raw):
            job_id = r.string(
                item, f"{path}.ids[{i}]", JOB_ID, "a job id (1-64 letters, digits, '-' or '_')"
            )
            if job_id in seen:
                raise r.fail(f"{path}.ids[{i}]", f"{shown(job_id)} is listed twice")
            seen.add(job_id)
            ids.append(job_id)
    discover = None
    if "discover" in data:
        discover = _read_discover(r, data["discover"], f"{path}.discover")
    if not ids and discover is None:
        raise r.fail(path, "expected ids, discover, or both")
    return Jobs(ids=tuple(ids), discover=discover)


def _read_labels(r: Reader, value: Any, path: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise r.fail(path, f"expected a mapping of label names to values, got {kind(value)}")
    out = []
    for label, label_value in value.items():
        where = f"{path}.{field_name(label)}"
        if not isinstance(label, str) or not _LABEL_NAME.match(label) or label.startswith("__"):
            raise r.fail(where, "is not a valid Prometheus label name")
        if label in RESERVED_LABELS or label in PACKAGE_LABELS:
            raise r.fail(where, "is a label name the exporter sets itself; choose another")
        if isinstance(label_value, bool) or not isinstance(label_value, str | int | float):
            raise r.fail(where, f"expected a string value, got {kind(label_value)}")
        out.append((label, str(label_value)))
    return tuple(sorted(out))


def _read_target(r: Reader, value: Any, path: str) -> Target:
    keys = (
        "name",
        "region",
        "role_arn",
        "external_id",
        "session_name",
        "profile",
        "endpoint_url",
        "sts_endpoint_url",
        "labels",
        "jobs",
        "events",
        "packages",
    )
    data = r.mapping(value, path, keys)
    for required in ("name", "region", "jobs"):
        if required not in data:
            raise r.fail(f"{path}.{required}", "is required")
    name = r.string(
        data["name"],
        f"{path}.name",
        _TARGET_NAME,
        "a name of letters, digits, '.', '-' or '_' (at most 63)",
    )
    region = r.string(data["region"], f"{path}.region", _REGION, "an AWS region like us-east-1")
    role_arn = r.opt(
        data,
        "role_arn",
        path,
        lambda v, p: r.string(
            v, p, _ROLE_ARN, "an IAM role ARN like arn:aws:iam::123456789012:role/name"
        ),
    )
    external_id = r.opt(data, "external_id", path, lambda v, p: r.string(v, p, secret=True))
    if external_id is not None and role_arn is None:
        raise r.fail(f"{path}.external_id", "needs role_arn")
    session_name = r.opt(
        data,
        "session_name",
        path,
        lambda v, p: r.string(
            v, p, re.compile(r"^[\w+=,.@-]{2,64}$"), "a role session name (2-64 characters)"
        ),
    )
    return Target(
        name=name,
        region=region,
        jobs=_read_jobs(r, data["jobs"], f"{path}.jobs"),
        role_arn=role_arn,
        external_id=external_id,
        session_name=session_name or "aws-iot-jobs-exporter",
        profile=r.opt(data, "profile", path, r.string),
        endpoint_url=r.opt(
            data, "endpoint_url", path, lambda v, p: r.string(v, p, _URL, "an http(s) URL")
        ),
        sts_endpoint_url=r.opt(
            data, "sts_endpoint_url", path, lambda v, p: r.string(v, p, _URL, "an http(s) URL")
        ),
        labels=_read_labels(r, data["labels"], f"{path}.labels") if data.get("labels") else (),
        events=_read_events(r, data["events"], f"{path}.events") if "events" in data else None,
        packages=(
            _read_target_packages(r, data["packages"], f"{path}.packages")
            if "packages" in data
            else None
        ),
    )


def parse_config(text: str, file: str = "config.yaml") -> Config:
    """Parse and validate configuration text; raises ConfigError."""
    r = Reader(file, ConfigError)
    raw = load_yaml(text, file, ConfigError)
    data = r.mapping(raw, "", ("targets", "collector", "otel", "metrics"))
    if not data:
        raise r.fail("targets", "is required: a list of AWS accounts/regions to read from")
    collector = _read_collector(r, data.get("collector"))
    raw_targets = data.get("targets")
    if not isinstance(raw_targets, list) or not raw_targets:
        raise r.fail("targets", f"expected a non-empty list of targets, got {kind(raw_targets)}")
    targets: list[Target] = []
    names: set[str] = set()
    for i, item in enumerate(raw_targets):
        target = _read_target(r, item, f"targets[{i}]")
        if target.name in names:
            raise r.fail(f"targets[{i}].name", f"{shown(target.name)} is used by another target")
        names.add(target.name)
        targets.append(target)
    otel = _read_otel(r, data.get("otel"))
    metrics = _read_metrics(r, data.get("metrics"))
    return Config(targets=tuple(targets), collector=collector, otel=otel, metrics=metrics)


def load_config(path: str | Path) -> Config:
    """Read and validate a configuration file; raises ConfigError."""
    name = str(path)
    text = read_file(path, ConfigError)
    return parse_config(text, name)
