"""The exporter's own metrics (prometheus_client), fed through telemetry.py's protocols.

Declared as a table, as the job metrics are (`exporter.table`): one `SelfFamily` per
metric, with its row of docs/metrics.md (docs/generate_metrics.py writes that table from
these rows). A scrape reads them rendered: `SelfMetrics.render` renders the registry
again only when a value changed, and at most every REFRESH_SECONDS for what changes on
its own (process CPU and memory, the values read from the collector).
"""

from __future__ import annotations

import itertools
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter import __version__
from exporter.events import EVENT_NAMES
from exporter.packages import PACKAGE_OPERATIONS
from exporter.table import API_CALL_LABELS, EVENT_OPERATIONS, OPERATIONS
from exporter.telemetry import DROP_REASONS, MARK_CLASSES, OUTCOMES, TRACKED_STATES

# `_created` series double the self-metrics for no use: Prometheus ignores them in the
# text format. The setting is process-wide, which is what the exporter wants.
disable_created_metrics()  # type: ignore[no-untyped-call]

# How old a scrape's process and runtime metrics (CPU, memory, GC), and the values read
# from the collector (events_driven, sweep_oldest_age_seconds), may be: the registry is
# rendered again when a value the exporter sets changes, else at most this often.
REFRESH_SECONDS = 1.0

# When a family's series are made, at 0 for every label value known then:
PROCESS = "process"  # at start-up (no target label)
TARGET = "target"  # init_target, for every target
DISCOVERY = "discovery"  # init_target, for a target with jobs.discover
EVENTS = "events"  # init_events, for a target with events:
OTEL = "otel"  # watch_otel_push, with otel.enabled
PACKAGES = "packages"  # package_availability, for a target with packages:, its first round


@dataclass(frozen=True, slots=True)
class SelfFamily:
    """A row of the self-metrics table, with its row of docs/metrics.md (Markdown)."""

    # The SelfMetrics attribute holding it ("" for the OTLP push's, read at render).
    attr: str
    # As exposed: a counter's name ends in `_total`.
    name: str
    type: str
    labels: tuple[str, ...]
    help: str
    # What the value means, for the docs' Meaning column.
    doc: str
    scopes: tuple[str, ...] = (TARGET,)
    buckets: tuple[float, ...] = ()


NS = "aws_iot_jobs_exporter_"
_T = ("target",)

SELF_FAMILIES: tuple[SelfFamily, ...] = (
    SelfFamily(
        "build_info",
        NS + "build_info",
        "gauge",
        ("version", "python_version"),
        "Build information; always 1.",
        "Always 1.",
        (PROCESS,),
    ),
    SelfFamily(
        "api_requests",
        NS + "api_requests_total",
        "counter",
        API_CALL_LABELS,
        "AWS API call attempts by operation and outcome.",
        "AWS API calls by attempt (botocore retries count each attempt). `operation`: "
        "`DescribeJob`, `ListJobs`, `ListJobExecutionsForJob` (execution sweeps), for "
        "targets with `events:` the SQS calls `ReceiveMessage`, `DeleteMessageBatch`, and "
        "for targets with `packages:` `GetBucketsAggregation`, `GetStatistics`, "
        "`ListPackages`. "
        "`outcome`: `ok`, `throttled` (ThrottlingException, HTTP 429), `not_found` "
        "(ResourceNotFoundException), `denied` (AccessDenied, expired or invalid "
        "credentials), `unavailable` (ServiceUnavailableException, HTTP 5xx), `malformed` "
        "(a response the exporter could not read, or larger than `events.max_receive_bytes`), "
        "`invalid` (AWS refused the request itself: InvalidRequestException, "
        "ValidationException), `network` (connection errors and timeouts), `error` "
        "(anything else). Every combination exists from start-up at 0.",
        (TARGET, EVENTS, PACKAGES),
    ),
    SelfFamily(
        "api_duration",
        NS + "api_request_duration_seconds",
        "histogram",
        API_CALL_LABELS[:2],
        "Duration of AWS API calls, retries included.",
        "Duration of an API call, retries included.",
        (TARGET, EVENTS, PACKAGES),
        (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    ),
    SelfFamily(
        "collection_duration",
        NS + "collection_duration_seconds",
        "gauge",
        _T,
        "Wall time of the last collection cycle.",
        "Wall time of the last collection cycle of the target. Known jobs are described "
        "evenly spread over the interval, so a healthy cycle takes about one `interval`; the "
        "first cycle describes everything at once.",
    ),
    SelfFamily(
        "collection_success",
        NS + "collection_success",
        "gauge",
        _T,
        "1 when the last collection cycle had no failed call, else 0.",
        "1 when the last cycle described every job it meant to, 0 when any call failed; "
        "after a failed ListJobs discovery, 0 on every cycle until a discovery succeeds.",
    ),
    SelfFamily(
        "collection_stretched",
        NS + "collection_stretched",
        "gauge",
        _T,
        "1 when the API budget cannot describe every active job within one interval.",
        "1 when the active jobs need more DescribeJob calls than `requests_per_second` "
        "allows in one `interval`: cycles then take longer than the interval (a warning is "
        "logged when this starts). Raise the quota with AWS and `requests_per_second`, "
        "lengthen `interval`, or shard.",
    ),
    SelfFamily(
        "last_collection_success",
        NS + "last_collection_success_timestamp_seconds",
        "gauge",
        _T,
        "Unix time of the last collection cycle with no failed call.",
        "Unix time of the last cycle with no failed call.",
    ),
    SelfFamily(
        "discovery_last_success",
        NS + "discovery_last_success_timestamp_seconds",
        "gauge",
        _T,
        "Unix time of the last complete ListJobs discovery.",
        "Unix time of the last complete ListJobs discovery; 0 until the first one. Only for "
        "targets with `jobs.discover`.",
        (DISCOVERY,),
    ),
    SelfFamily(
        "jobs_tracked",
        NS + "jobs_tracked",
        "gauge",
        ("target", "state"),
        "Jobs the exporter follows, by state.",
        "Jobs the exporter follows: `active` (described every interval), `frozen` "
        "(terminal, described once, exported until retention ends), `pending` (known but "
        "not yet described).",
    ),
    SelfFamily(
        "jobs_missing",
        NS + "jobs_missing",
        "gauge",
        _T,
        "Jobs listed in jobs.ids that AWS does not know.",
        "Jobs listed in `jobs.ids` that AWS does not know (ResourceNotFoundException).",
    ),
    SelfFamily(
        "jobs_dropped_total",
        NS + "jobs_dropped_total",
        "counter",
        ("target", "reason"),
        "Job ids the exporter stopped following or never followed, by reason: "
        "unknown_limit (an event named one while events.max_unknown_jobs waited), "
        "invalid (AWS refused the id as invalid).",
        "Job ids the exporter stopped following or never followed. `reason`: "
        "`unknown_limit` (an event named a job id discovery has not seen while "
        "`events.max_unknown_jobs` such ids already awaited their first describe), "
        "`invalid` (DescribeJob refused the id as invalid; it is not asked for again). Both "
        "exist from start-up at 0.",
    ),
    SelfFamily(
        "events_received",
        NS + "events_received_total",
        "counter",
        ("target", "event"),
        "Messages read from a target's event queue, by event (malformed: not an event).",
        "Messages read from the target's event queue (only with `events:`). `event`: "
        "`job_completed`, `job_canceled`, `job_deleted`, `job_cancellation_in_progress`, "
        "`job_deletion_in_progress`, `execution_succeeded`, `execution_failed`, "
        "`execution_rejected`, `execution_canceled`, `execution_timed_out`, "
        "`execution_removed`, `execution_deleted`, `unknown` (an event name AWS added "
        "later), `malformed` (not a job event; deleted from the queue). Duplicates are "
        "included.",
        (EVENTS,),
    ),
    SelfFamily(
        "events_duplicates",
        NS + "events_duplicates_total",
        "counter",
        _T,
        "Events dropped because their eventId was applied already (SQS redelivery).",
        "Events dropped because their `eventId` was applied already (SQS delivers at least once).",
        (EVENTS,),
    ),
    SelfFamily(
        "events_describes",
        NS + "events_describes_total",
        "counter",
        _T,
        "DescribeJob calls made because an event marked the job changed.",
        "DescribeJob calls made because an event marked the job changed. They spend from "
        "the same budget as the other calls.",
        (EVENTS,),
    ),
    SelfFamily(
        "events_lag",
        NS + "events_lag_seconds",
        "histogram",
        _T,
        "Time from AWS publishing an event to the exporter reading it.",
        "Time from AWS publishing an event (its `timestamp`) to the exporter reading it.",
        (EVENTS,),
        (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
    ),
    SelfFamily(
        "events_describe_wait",
        NS + "events_describe_wait_seconds",
        "histogram",
        ("target", "class"),
        "Time from an event marking a job to the answer of the describe it asked for, "
        "by the mark's class: job (a job-level event), execution (an execution's end not "
        "counted yet), confirm (an execution's end already counted), unknown (a job id "
        "only events named).",
        "Time from an event marking a job to the answer of the describe it asked for (only "
        "with `events:`): the event path's queue. `class`: `job` (a job-level event: "
        "completed, canceled, cancellation or deletion in progress; what it says is in "
        "/metrics at once, this describe confirms it), `execution` (an execution's end "
        "the exporter could not count at once, or counted while a describe of its job was "
        "in flight), `confirm` (an execution's end already "
        "counted in /metrics, this describe confirms it), `unknown` (a job id only events "
        "named). Within a class, oldest data first.",
        (EVENTS,),
        (0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
    ),
    SelfFamily(
        "events_consumer_errors",
        NS + "events_consumer_errors_total",
        "counter",
        _T,
        "Failed calls of a target's event queue consumer.",
        "Failed ReceiveMessage or DeleteMessageBatch calls of the target's consumer (after "
        "botocore's retries), plus one per message a DeleteMessageBatch answer lists as not "
        "deleted, and one per restart of a crashed event path.",
        (EVENTS,),
    ),
    SelfFamily(
        "events_unknown_jobs",
        NS + "events_unknown_jobs",
        "gauge",
        _T,
        "Job ids only events have named (not yet seen by discovery) awaiting the "
        "describe that says whether they exist; at most events.max_unknown_jobs.",
        "Job ids only events have named (discovery has not listed them yet) awaiting the "
        "describe that says whether they exist; at most `events.max_unknown_jobs`.",
        (EVENTS,),
    ),
    SelfFamily(
        "events_driven_gauge",
        NS + "events_driven",
        "gauge",
        _T,
        "1 while the target's active jobs are refreshed by events (and reconciled "
        "every events.reconcile_interval), 0 while they are polled every interval.",
        "1 while events refresh the target's jobs (active jobs then reconciled every "
        "`events.reconcile_interval`), 0 while they are polled every `interval`: the "
        "consumer is failing, or the queue has been silent for `events.silence_timeout` "
        "while jobs are active.",
        (EVENTS,),
    ),
    SelfFamily(
        "packages_available",
        NS + "packages_available",
        "gauge",
        _T,
        "1 while fleet indexing and the package catalog answer the target's package "
        "counts, 0 once they said they cannot (not enabled, not ready, denied).",
        "1 while fleet indexing and the package catalog answer the target's package counts; "
        "0 once they said they cannot (index off, not ready or rebuilding, the version field "
        "not indexed, access denied), until a later try succeeds. Only for targets with "
        "`packages:`, from their first round. With it, `api_requests_total` has the "
        "`operation` values `GetBucketsAggregation`, `GetStatistics` and `ListPackages`, at "
        "0 from then.",
        (PACKAGES,),
    ),
    SelfFamily(
        "sweep_pages",
        NS + "sweep_pages_total",
        "counter",
        _T,
        "ListJobExecutionsForJob pages read by execution sweeps.",
        "ListJobExecutionsForJob pages read by execution sweeps (each one call of the "
        "`executions.requests_per_second` budget; failed calls are in `api_requests_total`).",
    ),
    SelfFamily(
        "sweep_executions",
        NS + "sweep_executions_total",
        "counter",
        _T,
        "Queued and in-progress execution summaries read by execution sweeps.",
        "Queued and in-progress execution summaries read by sweeps. Divided by 250 it is "
        "the fewest pages that could have read them.",
    ),
    SelfFamily(
        "sweep_truncated_total",
        NS + "sweep_truncated_total",
        "counter",
        _T,
        "Sweeps that stopped at executions.max_executions_per_job: their job's counts "
        "are a lower bound.",
        "Sweeps that stopped reading a state of a job at `executions.max_executions_per_job` "
        "entries or `max_executions_per_job / 250 + 1` pages: that job's counts are a lower "
        "bound until a sweep reads it whole.",
    ),
    SelfFamily(
        "sweep_date_ignored_total",
        NS + "sweep_date_ignored_total",
        "counter",
        _T,
        "ListJobExecutionsForJob answers whose Date was farther than "
        "executions.max_clock_skew from the host's clock: ages were measured on the "
        "host's clock instead.",
        "ListJobExecutionsForJob answers whose `Date` was farther than "
        "`executions.max_clock_skew` (default 15m) from the host's clock: that sweep's ages "
        "were measured on the host's clock instead.",
    ),
    SelfFamily(
        "sweep_oldest_age",
        NS + "sweep_oldest_age_seconds",
        "gauge",
        _T,
        "Age of the oldest last sweep among the jobs with queued or in-progress "
        "executions (a job never swept counts from when it was first described); 0 "
        "when none waits.",
        "Seconds since the oldest last sweep among the jobs with queued or in-progress "
        "executions (a job never swept counts from its first describe); 0 when none waits. "
        "How far behind the stuck counts can be: above a few times `interval`, the budget "
        "cannot keep up (docs/performance.md).",
    ),
    SelfFamily(
        "",
        NS + "otel_push_failures_total",
        "counter",
        (),
        "OTLP metric pushes that failed.",
        "OTLP metric pushes that failed (only with `otel.enabled`).",
        (OTEL,),
    ),
    SelfFamily(
        "",
        NS + "otel_last_push_success_timestamp_seconds",
        "gauge",
        (),
        "Unix time of the last successful OTLP metric push.",
        "Unix time of the last successful OTLP metric push (only with `otel.enabled`, after "
        "the first success).",
        (OTEL,),
    ),
    SelfFamily(
        "config_reload_ok",
        NS + "config_last_reload_successful",
        "gauge",
        (),
        "1 when the last configuration load succeeded.",
        "1 when the last configuration load succeeded.",
        (PROCESS,),
    ),
    SelfFamily(
        "config_reload_time",
        NS + "config_last_reload_success_timestamp_seconds",
        "gauge",
        (),
        "Unix time of the last successful configuration load.",
        "Unix time of the last successful configuration load.",
        (PROCESS,),
    ),
)

_OTEL_FAILURES, _OTEL_LAST = (f for f in SELF_FAMILIES if OTEL in f.scopes)

# The known values of each label beyond `target`, per scope (operations differ).
_VALUES: dict[str, tuple[str, ...]] = {
    "outcome": OUTCOMES,
    "state": TRACKED_STATES,
    "reason": DROP_REASONS,
    "event": EVENT_NAMES,
    "class": MARK_CLASSES,
}
_OPERATIONS = {TARGET: OPERATIONS, EVENTS: EVENT_OPERATIONS, PACKAGES: PACKAGE_OPERATIONS}


def label_values(family: SelfFamily, scope: str) -> Iterator[tuple[str, ...]]:
    """Every known combination of the family's labels after `target`, in a scope."""
    known = [
        _OPERATIONS[scope] if label == "operation" else _VALUES[label]
        for label in family.labels[1:]
    ]
    return itertools.product(*known)


# (failures so far, time of the last successful push or None) of the OTLP push.
PushHealth = Callable[[], tuple[int, float | None]]


class _OtelPush:
    """The OTLP push's own health, read at render time from the pushing thread's results.

    Registered only when the push is enabled: no series for a feature that is off.
    """

    def __init__(self, read: PushHealth) -> None:
        self._read = read

    def describe(self) -> list[Metric]:
        return list(self._metrics(0, None))

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics(*self._read())

    @staticmethod
    def _metrics(failures: int, last_success: float | None) -> Iterator[Metric]:
        counter = CounterMetricFamily(_OTEL_FAILURES.name, _OTEL_FAILURES.help)
        counter.add_metric([], failures)
        yield counter
        if last_success is not None:
            last = GaugeMetricFamily(_OTEL_LAST.name, _OTEL_LAST.help)
            last.add_metric([], last_success)
            yield last


class _Collects(Protocol):
    def collect(self) -> Iterable[Metric]: ...


_RUNTIME, _OTEL = "_runtime", "_otel"


class _Runtime:
    """The process, platform and GC collectors, rendered as one part."""

    def __init__(self, collectors: tuple[_Collects, ...]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


def _metric(family: SelfFamily, registry: CollectorRegistry) -> MetricWrapperBase:
    if family.type == "histogram":
        return Histogram(
            family.name, family.help, family.labels, registry=registry, buckets=family.buckets
        )
    kind = Counter if family.type == "counter" else Gauge
    return kind(family.name, family.help, family.labels, registry=registry)


class SelfMetrics:
    """The exporter's own metrics, in a registry of their own so they never mix with job rows."""

    # One attribute per row of SELF_FAMILIES with an `attr`, made from the row.
    build_info: Gauge
    api_requests: Counter
    api_duration: Histogram
    collection_duration: Gauge
    collection_success: Gauge
    collection_stretched: Gauge
    last_collection_success: Gauge
    discovery_last_success: Gauge
    jobs_tracked: Gauge
    jobs_missing: Gauge
    jobs_dropped_total: Counter
    events_received: Counter
    events_duplicates: Counter
    events_describes: Counter
    events_lag: Histogram
    events_consumer_errors: Counter
    events_unknown_jobs: Gauge
    events_driven_gauge: Gauge
    packages_available: Gauge
    sweep_pages: Counter
    sweep_executions: Counter
    sweep_truncated_total: Counter
    sweep_date_ignored_total: Counter
    events_describe_wait: Histogram
    sweep_oldest_age: Gauge
    config_reload_ok: Gauge
    config_reload_time: Gauge

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The process and runtime metrics every Prometheus client exposes by default:
        # memory, CPU, open files, GC, which operators alert on for any exporter.
        self._runtime = _Runtime(
            (
                ProcessCollector(registry=self.registry),
                PlatformCollector(registry=self.registry),
                GCCollector(registry=self.registry),
            )
        )
        # What render() writes, in the registry's order: the runtime, then each row.
        self._parts: list[tuple[str, _Collects]] = [(_RUNTIME, self._runtime)]
        for family in SELF_FAMILIES:
            if family.attr:
                metric = _metric(family, self.registry)
                setattr(self, family.attr, metric)
                self._parts.append((family.attr, metric))
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._event_targets: set[str] = set()
        self._package_targets: set[str] = set()
        # Per target: attempts, throttled ones and failed ones (anything but ok).
        self._api_totals: dict[str, tuple[int, int, int]] = {}
        # Readers of values that change without telling (the collector's), per target,
        # called at most every REFRESH_SECONDS, when the registry is rendered.
        self._sweep_reads: dict[str, tuple[Callable[[], float], list[float]]] = {}
        self._driven_reads: dict[str, tuple[Callable[[], bool], list[float]]] = {}
        # Bumped by every change of a value, and per part: a render reuses the bytes of
        # the parts that did not change, and a scrape the whole render of a version.
        self.version = 0
        self._versions: dict[str, int] = {key: 0 for key, _ in self._parts}
        self._texts: dict[tuple[bool, str], tuple[int, bytes]] = {}
        self._rendered: dict[bool, tuple[int, bytes]] = {}
        # When the values that change on their own were last read (monotonic).
        self._refreshed = -math.inf
        self._otel: _OtelPush | None = None

    def _changed(self, *keys: str) -> None:
        """Values of the parts `keys` changed (no keys: of any part)."""
        self.version += 1
        for key in keys or self._versions:
            self._versions[key] = self._versions.get(key, 0) + 1

    def render(self, openmetrics: bool = False) -> bytes:
        """The registry in the text format (or OpenMetrics, `# EOF` included).

        Per scrape a dictionary lookup: rendered again when a value changed since the
        last render (only the families that changed), and every REFRESH_SECONDS for the
        process metrics and the values read from the collector, which are that old at
        most. prometheus_client renders the self-metrics in about 1 ms.
        """
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_SECONDS:
            self._refreshed = now
            self._read_watched(now)
            self._changed(_RUNTIME, "sweep_oldest_age", _OTEL)
        cached = self._rendered.get(openmetrics)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        version = self.version
        texts = []
        for key, collects in self._parts:
            texts.append(self._text(openmetrics, key, collects))
        if self._otel is not None:
            texts.append(self._text(openmetrics, _OTEL, self._otel))
        if openmetrics:
            texts.append(b"# EOF\n")
        body = b"".join(texts)
        self._rendered[openmetrics] = (version, body)
        return body

    def _text(self, openmetrics: bool, key: str, collects: _Collects) -> bytes:
        version = self._versions.get(key, 0)
        cached = self._texts.get((openmetrics, key))
        if cached is not None and cached[0] == version:
            return cached[1]
        if openmetrics:
            text: bytes = generate_openmetrics(collects)  # type: ignore[no-untyped-call]
            text = text.removesuffix(b"# EOF\n")
        else:
            text = generate_latest(collects)
        self._texts[(openmetrics, key)] = (version, text)
        return text

    def _read_watched(self, now: float) -> None:
        for target, (read_age, at) in list(self._sweep_reads.items()):
            if now - at[0] >= REFRESH_SECONDS:
                at[0] = now
                self._set_sweep_age(target, read_age(), time.time())
        for target, (read_driven, at) in list(self._driven_reads.items()):
            if now - at[0] >= REFRESH_SECONDS:
                at[0] = now
                self.events_driven_gauge.labels(target).set(1 if read_driven() else 0)
                self._changed("events_driven_gauge")

    def config_loaded(self, ok: bool, at: float) -> None:
        """A configuration load (start-up or reload) ended at `at`; ok: it is in use."""
        self.config_reload_ok.set(1 if ok else 0)
        if ok:
            self.config_reload_time.set(at)
        self._changed("config_reload_ok", "config_reload_time")

    def watch_otel_push(self, read: PushHealth) -> None:
        """Export the OTLP push's failures and last success from `read`."""
        self._otel = _OtelPush(read)
        self.registry.register(self._otel)
        self._changed("_otel")

    # SweepTelemetry (telemetry.py): what the execution sweeps report.
    def sweep_page(self, target: str, executions: int) -> None:
        self.sweep_pages.labels(target).inc()
        self.sweep_executions.labels(target).inc(executions)
        self._changed("sweep_pages", "sweep_executions")

    def sweep_truncated(self, target: str) -> None:
        self.sweep_truncated_total.labels(target).inc()
        self._changed("sweep_truncated_total")

    def sweep_date_ignored(self, target: str) -> None:
        self.sweep_date_ignored_total.labels(target).inc()
        self._changed("sweep_date_ignored_total")

    def sweep_age(self, target: str, age: float, at: float) -> None:
        """The oldest sweep of the target's waiting jobs was `age` seconds old at Unix time
        `at` (0: none waits). The gauge grows from it, as an age does, until the next call;
        a target that calls this is no longer read through watch_sweep_age."""
        self._sweep_reads.pop(target, None)
        self._set_sweep_age(target, age, at)

    def _set_sweep_age(self, target: str, age: float, at: float) -> None:
        # A function of the clock, not a value: an age grows between two readings. Set
        # this way always, since a gauge's set() does not undo its set_function().
        since = at - age
        child = self.sweep_oldest_age.labels(target)
        child.set_function((lambda: 0.0) if age <= 0 else (lambda: time.time() - since))
        self._changed("sweep_oldest_age")

    def watch_sweep_age(self, target: str, read: Callable[[], float]) -> None:
        """Read the target's oldest sweep age from `read` (a pass over its jobs) at most
        every REFRESH_SECONDS, never per scrape; the gauge grows from each reading."""
        self._sweep_reads[target] = (read, [-math.inf])
        self._refreshed = -math.inf  # read at the next render, not a second later
        self._changed()

    # EventTelemetry (telemetry.py): what the event consumer reports.
    def event_received(self, target: str, event: str) -> None:
        self.events_received.labels(target, event).inc()
        self._changed("events_received")

    def event_duplicate(self, target: str) -> None:
        self.events_duplicates.labels(target).inc()
        self._changed("events_duplicates")

    def event_lag(self, target: str, seconds: float) -> None:
        self.events_lag.labels(target).observe(seconds)
        self._changed("events_lag")

    def event_describe_waited(self, target: str, kind: str, seconds: float) -> None:
        self.events_describe_wait.labels(target, kind).observe(seconds)
        self._changed("events_describe_wait")

    def event_consumer_error(self, target: str) -> None:
        self.events_consumer_errors.labels(target).inc()
        self._changed("events_consumer_errors")

    # SourceTelemetry (telemetry.py): what the AWS source reports.
    def api_call(self, target: str, operation: str, outcome: str) -> None:
        self.api_requests.labels(target, operation, outcome).inc()
        total, throttled, failed = self._api_totals.get(target, (0, 0, 0))
        self._api_totals[target] = (
            total + 1,
            throttled + (outcome == "throttled"),
            failed + (outcome != "ok"),
        )
        self._changed("api_requests")

    def api_latency(self, target: str, operation: str, seconds: float) -> None:
        self.api_duration.labels(target, operation).observe(seconds)
        self._changed("api_duration")

    # SchedulerTelemetry (telemetry.py): what the collector reports.
    def discovery_succeeded(self, target: str, at: float) -> None:
        self.discovery_last_success.labels(target).set(at)
        self._changed("discovery_last_success")

    def cycle_done(self, target: str, seconds: float, success: bool, at: float) -> None:
        self.collection_duration.labels(target).set(seconds)
        self.collection_success.labels(target).set(1 if success else 0)
        if success:
            self.last_collection_success.labels(target).set(at)
        self._changed("collection_duration", "collection_success", "last_collection_success")

    def cycle_failed(self, target: str) -> None:
        self.collection_success.labels(target).set(0)
        self._changed("collection_success")

    def cycle_stretched(self, target: str, stretched: bool) -> None:
        self.collection_stretched.labels(target).set(1 if stretched else 0)
        self._changed("collection_stretched")

    def tracked_jobs(self, target: str, states: Mapping[str, int], missing: int) -> None:
        for state, count in states.items():
            self.jobs_tracked.labels(target, state).set(count)
        self.jobs_missing.labels(target).set(missing)
        self._changed("jobs_tracked", "jobs_missing")

    def event_describe(self, target: str) -> None:
        self.events_describes.labels(target).inc()
        self._changed("events_describes")

    def unknown_jobs(self, target: str, count: int) -> None:
        self.events_unknown_jobs.labels(target).set(count)
        self._changed("events_unknown_jobs")

    def jobs_dropped(self, target: str, reason: str) -> None:
        self.jobs_dropped_total.labels(target, reason).inc()
        self._changed("jobs_dropped_total")

    def events_driven(self, target: str, driven: bool) -> None:
        """Events refresh the target's jobs now (else they are polled); a target that calls
        this is no longer read through watch_events_driven."""
        self._driven_reads.pop(target, None)
        self.events_driven_gauge.labels(target).set(1 if driven else 0)
        self._changed("events_driven_gauge")

    def watch_events_driven(self, target: str, read: Callable[[], bool]) -> None:
        """Read whether events drive the target from `read` at most every REFRESH_SECONDS,
        never per scrape: the consumer's health changes between cycles."""
        self._driven_reads[target] = (read, [-math.inf])
        self._refreshed = -math.inf  # read at the next render, not a second later
        self._changed()

    def api_totals(self, target: str) -> tuple[int, int, int]:
        # Plain counts kept beside the registry: reading a registry back is for tests only
        # (client_python), and the status page asks for these on every request.
        total, throttled, failed = self._api_totals.get(target, (0, 0, 0))
        return total, throttled, failed

    def _series(self, scope: str) -> Iterable[tuple[MetricWrapperBase, tuple[str, ...]]]:
        """Each family of a scope with every known combination of its other labels."""
        for family in SELF_FAMILIES:
            if family.attr and scope in family.scopes:
                metric: MetricWrapperBase = getattr(self, family.attr)
                for values in label_values(family, scope):
                    yield metric, values

    def init_events(self, target: str) -> None:
        """The event series of a target with `events:`, at 0."""
        self._event_targets.add(target)
        for metric, values in self._series(EVENTS):
            metric.labels(target, *values)
        self._changed()

    def package_availability(self, target: str, available: bool) -> None:
        """Whether the target's index and catalog answer (collect/versions.py); the target's
        package series are made at 0 on its first round."""
        if target not in self._package_targets:
            self._package_targets.add(target)
            for metric, values in self._series(PACKAGES):
                metric.labels(target, *values)
        self.packages_available.labels(target).set(1 if available else 0)
        self._changed("packages_available", "api_requests", "api_duration")

    def drop_events(self, target: str) -> None:
        if target not in self._event_targets:
            return
        self._event_targets.discard(target)
        self._driven_reads.pop(target, None)
        for metric, values in self._series(EVENTS):
            metric.remove(target, *values)
        self._changed()

    def init_target(self, target: str, discovery: bool = True) -> None:
        """Create every series of a target at 0, so rate() and alerts work before any event.

        Series that exist already keep their values: a reload re-initialises targets.
        Without discovery (explicit job ids only) there is no ListJobs, so no discovery
        timestamp: a series at 0 would read as a discovery that never succeeded and page
        for a target that cannot have one.
        """
        for metric, values in self._series(TARGET):
            metric.labels(target, *values)
        for metric, values in self._series(DISCOVERY):
            if discovery:
                metric.labels(target, *values)
            else:
                metric.remove(target, *values)
        self._changed()

    def drop_target(self, target: str) -> None:
        self._api_totals.pop(target, None)
        self._sweep_reads.pop(target, None)
        for scope in (TARGET, DISCOVERY):
            for metric, values in self._series(scope):
                metric.remove(target, *values)
        self.drop_events(target)
        if target in self._package_targets:
            self._package_targets.discard(target)
            for metric, values in self._series(PACKAGES):
                metric.remove(target, *values)
        self._changed()


__all__ = ["SELF_FAMILIES", "PushHealth", "SelfFamily", "SelfMetrics", "label_values"]
