"""The exporter's own metrics (prometheus_client), fed through telemetry.py's protocols."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator, Mapping

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
from prometheus_client.metrics_core import Metric

from exporter import __version__
from exporter.events import EVENT_NAMES
from exporter.packages import PACKAGE_OPERATIONS
from exporter.table import (
    API_CALL_LABELS,
    EVENT_OPERATIONS,
    OPERATIONS,
)
from exporter.telemetry import DROP_REASONS, OUTCOMES, TRACKED_STATES

# `_created` series double the self-metrics for no use: Prometheus ignores them in the
# text format. The setting is process-wide, which is what the exporter wants.
disable_created_metrics()  # type: ignore[no-untyped-call]


# (failures so far, time of the last successful push or None) of the OTLP push.
PushHealth = Callable[[], tuple[int, float | None]]


class _OtelPush:
    """The OTLP push's own health, read at scrape time from the pushing thread's results.

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
        counter = CounterMetricFamily(
            "aws_iot_jobs_exporter_otel_push_failures", "OTLP metric pushes that failed."
        )
        counter.add_metric([], failures)
        yield counter
        if last_success is not None:
            last = GaugeMetricFamily(
                "aws_iot_jobs_exporter_otel_last_push_success_timestamp_seconds",
                "Unix time of the last successful OTLP metric push.",
            )
            last.add_metric([], last_success)
            yield last


class SelfMetrics:
    """The exporter's own metrics, in a registry of their own so they never mix with job rows."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # The process and runtime metrics every Prometheus client exposes by default:
        # memory, CPU, open files, GC, which operators alert on for any exporter.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        ns = "aws_iot_jobs_exporter"
        r = self.registry
        self._packages_available: Gauge | None = None
        self.build_info = Gauge(
            f"{ns}_build_info",
            "Build information; always 1.",
            ("version", "python_version"),
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.api_requests = Counter(
            f"{ns}_api_requests",
            "AWS API call attempts by operation and outcome.",
            API_CALL_LABELS,
            registry=r,
        )
        self.api_duration = Histogram(
            f"{ns}_api_request_duration_seconds",
            "Duration of AWS API calls, retries included.",
            API_CALL_LABELS[:2],
            registry=r,
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.collection_duration = Gauge(
            f"{ns}_collection_duration_seconds",
            "Wall time of the last collection cycle.",
            ("target",),
            registry=r,
        )
        self.collection_success = Gauge(
            f"{ns}_collection_success",
            "1 when the last collection cycle had no failed call, else 0.",
            ("target",),
            registry=r,
        )
        self.collection_stretched = Gauge(
            f"{ns}_collection_stretched",
            "1 when the API budget cannot describe every active job within one interval.",
            ("target",),
            registry=r,
        )
        self.last_collection_success = Gauge(
            f"{ns}_last_collection_success_timestamp_seconds",
            "Unix time of the last collection cycle with no failed call.",
            ("target",),
            registry=r,
        )
        self.discovery_last_success = Gauge(
            f"{ns}_discovery_last_success_timestamp_seconds",
            "Unix time of the last complete ListJobs discovery.",
            ("target",),
            registry=r,
        )
        self.jobs_tracked = Gauge(
            f"{ns}_jobs_tracked",
            "Jobs the exporter follows, by state.",
            ("target", "state"),
            registry=r,
        )
        self.jobs_missing = Gauge(
            f"{ns}_jobs_missing",
            "Jobs listed in jobs.ids that AWS does not know.",
            ("target",),
            registry=r,
        )
        self.events_received = Counter(
            f"{ns}_events_received",
            "Messages read from a target's event queue, by event (malformed: not an event).",
            ("target", "event"),
            registry=r,
        )
        self.events_duplicates = Counter(
            f"{ns}_events_duplicates",
            "Events dropped because their eventId was applied already (SQS redelivery).",
            ("target",),
            registry=r,
        )
        self.events_describes = Counter(
            f"{ns}_events_describes",
            "DescribeJob calls made because an event marked the job changed.",
            ("target",),
            registry=r,
        )
        self.events_lag = Histogram(
            f"{ns}_events_lag_seconds",
            "Time from AWS publishing an event to the exporter reading it.",
            ("target",),
            registry=r,
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
        )
        self.events_consumer_errors = Counter(
            f"{ns}_events_consumer_errors",
            "Failed calls of a target's event queue consumer.",
            ("target",),
            registry=r,
        )
        self.events_driven = Gauge(
            f"{ns}_events_driven",
            "1 while the target's active jobs are refreshed by events (and reconciled "
            "every events.reconcile_interval), 0 while they are polled every interval.",
            ("target",),
            registry=r,
        )
        self.events_unknown_jobs = Gauge(
            f"{ns}_events_unknown_jobs",
            "Job ids only events have named (not yet seen by discovery) awaiting the "
            "describe that says whether they exist; at most events.max_unknown_jobs.",
            ("target",),
            registry=r,
        )
        self.jobs_dropped_total = Counter(
            f"{ns}_jobs_dropped",
            "Job ids the exporter stopped following or never followed, by reason: "
            "unknown_limit (an event named one while events.max_unknown_jobs waited), "
            "invalid (AWS refused the id as invalid).",
            ("target", "reason"),
            registry=r,
        )
        self._event_targets: set[str] = set()
        # Per target: attempts, throttled ones and failed ones (anything but ok).
        self._api_totals: dict[str, tuple[int, int, int]] = {}
        self.sweep_pages = Counter(
            f"{ns}_sweep_pages",
            "ListJobExecutionsForJob pages read by execution sweeps.",
            ["target"],
            registry=r,
        )
        self.sweep_executions = Counter(
            f"{ns}_sweep_executions",
            "Queued and in-progress execution summaries read by execution sweeps.",
            ["target"],
            registry=r,
        )
        self.sweep_truncated_total = Counter(
            f"{ns}_sweep_truncated",
            "Sweeps that stopped at executions.max_executions_per_job: their job's counts "
            "are a lower bound.",
            ["target"],
            registry=r,
        )
        self.sweep_oldest_age = Gauge(
            f"{ns}_sweep_oldest_age_seconds",
            "Age of the oldest last sweep among the jobs with queued or in-progress "
            "executions (a job never swept counts from when it was first described); 0 "
            "when none waits.",
            ["target"],
            registry=r,
        )
        self.config_reload_ok = Gauge(
            f"{ns}_config_last_reload_successful",
            "1 when the last configuration load succeeded.",
            registry=r,
        )
        self.config_reload_time = Gauge(
            f"{ns}_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            registry=r,
        )

    # Package counts (versions.py): whether a target's index and catalog answer, and its
    # package calls at 0 from the start. Created on a target's first count, so a target
    # without `packages:` has no such series.
    def package_availability(self, target: str, available: bool) -> None:
        if self._packages_available is None:
            self._packages_available = Gauge(
                "aws_iot_jobs_exporter_packages_available",
                "1 while fleet indexing and the package catalog answer the target's package "
                "counts, 0 once they said they cannot (not enabled, not ready, denied).",
                ("target",),
                registry=self.registry,
            )
            for operation in PACKAGE_OPERATIONS:
                for outcome in OUTCOMES:
                    self.api_requests.labels(target, operation, outcome)
        self._packages_available.labels(target).set(1 if available else 0)

    def watch_otel_push(self, read: PushHealth) -> None:
        """Export the OTLP push's failures and last success from `read`."""
        self.registry.register(_OtelPush(read))

    # SweepTelemetry (telemetry.py): what the execution sweeps report.
    def sweep_page(self, target: str, executions: int) -> None:
        self.sweep_pages.labels(target).inc()
        self.sweep_executions.labels(target).inc(executions)

    def sweep_truncated(self, target: str) -> None:
        self.sweep_truncated_total.labels(target).inc()

    def watch_sweep_age(self, target: str, read: Callable[[], float]) -> None:
        self.sweep_oldest_age.labels(target).set_function(read)

    # EventTelemetry (events.py): what the event consumer reports.
    def event_received(self, target: str, event: str) -> None:
        self.events_received.labels(target, event).inc()

    def event_duplicate(self, target: str) -> None:
        self.events_duplicates.labels(target).inc()

    def event_lag(self, target: str, seconds: float) -> None:
        self.events_lag.labels(target).observe(seconds)

    def event_consumer_error(self, target: str) -> None:
        self.events_consumer_errors.labels(target).inc()

    # SourceTelemetry (telemetry.py): what the AWS source reports.
    def api_call(self, target: str, operation: str, outcome: str) -> None:
        self.api_requests.labels(target, operation, outcome).inc()
        total, throttled, failed = self._api_totals.get(target, (0, 0, 0))
        self._api_totals[target] = (
            total + 1,
            throttled + (outcome == "throttled"),
            failed + (outcome != "ok"),
        )

    def api_latency(self, target: str, operation: str, seconds: float) -> None:
        self.api_duration.labels(target, operation).observe(seconds)

    # SchedulerTelemetry (telemetry.py): what the collector reports.
    def discovery_succeeded(self, target: str, at: float) -> None:
        self.discovery_last_success.labels(target).set(at)

    def cycle_done(self, target: str, seconds: float, success: bool, at: float) -> None:
        self.collection_duration.labels(target).set(seconds)
        self.collection_success.labels(target).set(1 if success else 0)
        if success:
            self.last_collection_success.labels(target).set(at)

    def cycle_failed(self, target: str) -> None:
        self.collection_success.labels(target).set(0)

    def cycle_stretched(self, target: str, stretched: bool) -> None:
        self.collection_stretched.labels(target).set(1 if stretched else 0)

    def tracked_jobs(self, target: str, states: Mapping[str, int], missing: int) -> None:
        for state, count in states.items():
            self.jobs_tracked.labels(target, state).set(count)
        self.jobs_missing.labels(target).set(missing)

    def event_describe(self, target: str) -> None:
        self.events_describes.labels(target).inc()

    def unknown_jobs(self, target: str, count: int) -> None:
        self.events_unknown_jobs.labels(target).set(count)

    def jobs_dropped(self, target: str, reason: str) -> None:
        self.jobs_dropped_total.labels(target, reason).inc()

    def watch_events_driven(self, target: str, read: Callable[[], bool]) -> None:
        # Read at scrape time: the consumer's health changes between cycles.
        self.events_driven.labels(target).set_function(lambda: 1.0 if read() else 0.0)

    def api_totals(self, target: str) -> tuple[int, int, int]:
        # Plain counts kept beside the registry: reading a registry back is for tests only
        # (client_python), and the status page asks for these on every request.
        total, throttled, failed = self._api_totals.get(target, (0, 0, 0))
        return total, throttled, failed

    def init_events(self, target: str) -> None:
        """The event series of a target with `events:`, at 0."""
        self._event_targets.add(target)
        for operation in EVENT_OPERATIONS:
            for outcome in OUTCOMES:
                self.api_requests.labels(target, operation, outcome)
            self.api_duration.labels(target, operation)
        for event in EVENT_NAMES:
            self.events_received.labels(target, event)
        for metric in self._event_metrics():
            metric.labels(target)

    def _event_metrics(self) -> tuple[Counter | Gauge | Histogram, ...]:
        return (
            self.events_duplicates,
            self.events_describes,
            self.events_lag,
            self.events_consumer_errors,
            self.events_driven,
            self.events_unknown_jobs,
        )

    def drop_events(self, target: str) -> None:
        if target not in self._event_targets:
            return
        self._event_targets.discard(target)
        for operation in EVENT_OPERATIONS:
            for outcome in OUTCOMES:
                self.api_requests.remove(target, operation, outcome)
            self.api_duration.remove(target, operation)
        for event in EVENT_NAMES:
            self.events_received.remove(target, event)
        for metric in self._event_metrics():
            metric.remove(target)

    def init_target(self, target: str, discovery: bool = True) -> None:
        """Create every series of a target at 0, so rate() and alerts work before any event.

        Series that exist already keep their values: a reload re-initialises targets.
        Without discovery (explicit job ids only) there is no ListJobs, so no discovery
        timestamp: a series at 0 would read as a discovery that never succeeded and page
        for a target that cannot have one.
        """
        for operation in OPERATIONS:
            for outcome in OUTCOMES:
                self.api_requests.labels(target, operation, outcome)
            self.api_duration.labels(target, operation)
        for state in TRACKED_STATES:
            self.jobs_tracked.labels(target, state)
        for reason in DROP_REASONS:
            self.jobs_dropped_total.labels(target, reason)
        for gauge in self._target_gauges():
            gauge.labels(target)
        if not discovery:
            with contextlib.suppress(KeyError):
                self.discovery_last_success.remove(target)

    def _target_gauges(self) -> tuple[Counter | Gauge, ...]:
        return (
            self.sweep_pages,
            self.sweep_executions,
            self.sweep_truncated_total,
            self.sweep_oldest_age,
            self.collection_success,
            self.collection_stretched,
            self.jobs_missing,
            self.collection_duration,
            self.last_collection_success,
            self.discovery_last_success,
        )

    def drop_target(self, target: str) -> None:
        self._api_totals.pop(target, None)
        if self._packages_available is not None:
            with contextlib.suppress(KeyError):
                self._packages_available.remove(target)
            for operation in PACKAGE_OPERATIONS:
                for outcome in OUTCOMES:
                    with contextlib.suppress(KeyError):
                        self.api_requests.remove(target, operation, outcome)
        for operation in OPERATIONS:
            for outcome in OUTCOMES:
                self.api_requests.remove(target, operation, outcome)
            self.api_duration.remove(target, operation)
        for state in TRACKED_STATES:
            self.jobs_tracked.remove(target, state)
        for reason in DROP_REASONS:
            self.jobs_dropped_total.remove(target, reason)
        for gauge in self._target_gauges():
            gauge.remove(target)
        self.drop_events(target)


__all__ = ["PushHealth", "SelfMetrics"]
