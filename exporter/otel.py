"""OTLP push of the job metrics, and optional traces of collection, via the OpenTelemetry SDK."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from exporter import __version__
from exporter.config import Otel, Target
from exporter.executions import DURATION_BOUNDS
from exporter.store import MetricsStore
from exporter.table import FAMILIES, IDENTITY_LABELS, Family
from exporter.tracing import NOOP_TRACING, AttributeValue, SpanHandle, Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricsData
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

# The process has 5 s from SIGTERM to exit (cli.SHUTDOWN_DEADLINE is 4 s for everything);
# a last push that cannot finish in this time is abandoned rather than delaying exit.
SHUTDOWN_TIMEOUT = 2.0
# Spans wait at most this long in the batch queue (the SDK's default), or one push interval
# when that is shorter, so a short interval also means prompt traces.
MAX_SPAN_DELAY = 5.0
SCOPE = "aws-iot-jobs-exporter"
# Data points per OTLP request. 1,000 jobs make about 48,000 points, 7 MB of protobuf: one
# request that size passes the SDK's 64 MiB cap but not the OpenTelemetry Collector's 4 MiB
# gRPC default, nor the 1 MiB body limit common in proxies and small receivers. 5,000 points
# are about 0.8 MB before compression.
MAX_POINTS_PER_REQUEST = 5_000
_MISSING_SDK = (
    "otel.enabled: true needs the opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http "
    "packages: pip install '.[otel]' in a clone of the repository (no release is published)"
)
_MISSING_GRPC = (
    "otel.protocol: grpc needs the opentelemetry-exporter-otlp-proto-grpc package: "
    "pip install it, or set otel.protocol to http/protobuf"
)

Targets = Mapping[str, Target] | Callable[[], Mapping[str, Target]]


class OtelUnavailable(Exception):
    """OTLP output is configured but the packages it needs are not installed."""


class _SpanHandle:
    def __init__(self, span: Span) -> None:
        self._span = span
        self.outcome: str | None = None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_outcome(self, outcome: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.outcome = outcome
        self._span.set_attribute("outcome", outcome)
        if outcome != "ok":
            # The outcome class only: exception messages can echo request details.
            self._span.set_status(Status(StatusCode.ERROR, outcome))


class _OtelTracing:
    """Spans through an SDK tracer; attribute names match the self-metrics' labels."""

    def __init__(self, tracer: Tracer, region_of: Callable[[str], str | None]) -> None:
        self._tracer = tracer
        self._region_of = region_of

    def _attributes(self, target: str) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {"target": target}
        region = self._region_of(target)
        if region:
            attributes["region"] = region
            attributes["cloud.region"] = region
        return attributes

    @contextlib.contextmanager
    def _span(
        self, name: str, kind: Any, attributes: dict[str, AttributeValue]
    ) -> Iterator[SpanHandle]:
        # Exceptions are not recorded on the span: their messages and stack traces are not
        # ours to publish. The outcome class says what happened.
        with self._tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            handle = _SpanHandle(span)
            try:
                yield handle
            except (asyncio.CancelledError, GeneratorExit):
                # Shutting down is not a failure of the call; the span just ends.
                raise
            except BaseException as exc:
                if handle.outcome is None:
                    # aws.ApiError carries its class; anything else is a plain error.
                    outcome = getattr(exc, "outcome", None)
                    handle.set_outcome(outcome if isinstance(outcome, str) else "error")
                raise
            if handle.outcome is None:
                handle.set_outcome("ok")

    def cycle_span(self, target: str) -> AbstractContextManager[SpanHandle]:
        from opentelemetry.trace import SpanKind

        return self._span("collection cycle", SpanKind.INTERNAL, self._attributes(target))

    def api_span(
        self, target: str, operation: str, job_id: str | None = None
    ) -> AbstractContextManager[SpanHandle]:
        from opentelemetry.trace import SpanKind

        attributes = self._attributes(target)
        attributes["operation"] = operation
        if job_id is not None:
            attributes["job_id"] = job_id
        # OpenTelemetry's conventions for AWS SDK calls, so tracing backends group them.
        attributes.update({"rpc.system": "aws-api", "rpc.service": "IoT", "rpc.method": operation})
        return self._span(f"IoT/{operation}", SpanKind.CLIENT, attributes)


def safe_endpoint(endpoint: str) -> str:
    """The endpoint without user info, query or fragment, fit for logs."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _signal_url(config: Otel, signal: str) -> str:
    return f"{config.endpoint.rstrip('/')}/v1/{signal}"


def _import(module: str, missing: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OtelUnavailable(missing) from None


def _require_sdk(config: Otel) -> None:
    modules = ["opentelemetry.sdk.metrics.export", "opentelemetry.sdk.resources"]
    if config.protocol != "grpc":
        modules.append("opentelemetry.exporter.otlp.proto.http.metric_exporter")
    for module in modules:
        _import(module, _MISSING_SDK)


def check_packages(config: Otel) -> None:
    """Raises OtelUnavailable when the config needs a package that is not installed."""
    if not config.enabled:
        return
    _require_sdk(config)
    if config.protocol == "grpc":
        _import("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", _MISSING_GRPC)


def build_resource(config: Otel) -> Resource:
    """service.*, cloud.provider and the configured attributes; OTEL_RESOURCE_ATTRIBUTES too."""
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, AttributeValue] = {
        "service.version": __version__,
        # In Kubernetes the host name is the pod's, which tells replicas and shards apart.
        "service.instance.id": socket.gethostname(),
        "cloud.provider": "aws",
    }
    attributes.update(config.resource_attributes)
    # The dedicated key wins over a service.name among the free-form attributes.
    attributes["service.name"] = config.service_name
    return Resource.create(attributes)


def _metric_exporter(config: Otel) -> MetricExporter:
    headers = dict(config.headers)
    if config.protocol == "grpc":
        module = _import(
            "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
            _MISSING_GRPC,
        )
        exporter: MetricExporter = module.OTLPMetricExporter(
            endpoint=config.endpoint,
            headers=headers,
            timeout=config.timeout,
            max_export_batch_size=MAX_POINTS_PER_REQUEST,
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(
        endpoint=_signal_url(config, "metrics"),
        headers=headers,
        timeout=config.timeout,
        # Every series of every job, with repeated attributes: gzip makes it 40 times smaller.
        compression=Compression.Gzip,
        max_export_batch_size=MAX_POINTS_PER_REQUEST,
    )


def _span_exporter(config: Otel) -> SpanExporter:
    headers = dict(config.headers)
    if config.protocol == "grpc":
        module = _import(
            "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
            _MISSING_GRPC,
        )
        exporter: SpanExporter = module.OTLPSpanExporter(
            endpoint=config.endpoint, headers=headers, timeout=config.timeout
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=_signal_url(config, "traces"),
        headers=headers,
        timeout=config.timeout,
        compression=Compression.Gzip,
    )


def _unit(name: str) -> str:
    # UCUM units for the suffixes that carry one; OTLP-to-Prometheus translation then keeps
    # the name as it is, since the suffix is already there.
    if name.endswith("_seconds"):
        return "s"
    if name.endswith("_ratio"):
        return "1"
    return ""


def build_metrics_data(
    store: MetricsStore,
    targets: Mapping[str, Target],
    resource: Resource,
    time_unix_nano: int,
    families: tuple[Family, ...] = FAMILIES,
    start_unix_nano: int = 0,
) -> MetricsData | None:
    """One OTLP metric per family with a point per /metrics series; None when there are none.

    Gauges are gauges; the counter is a cumulative monotonic sum and the histograms
    cumulative histograms, both counted since `start_unix_nano` (the exporter's start).

    Runs in the push thread while the event loop updates the store: job_keys() copies the
    keys in one C call and get() is one dict lookup, both atomic under the GIL, and a
    snapshot is immutable, so a push sees each job either before or after an update.
    """
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.metrics.export import Histogram as OtlpHistogram
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    for family in families:
        if family.type not in ("gauge", "counter", "histogram"):
            # Refuse to send a new kind of row as something it is not.
            raise ValueError(f"{family.name}: no OTLP mapping for metric type {family.type}")
    points: list[list[Any]] = [[] for _ in families]
    for key in sorted(store.job_keys()):
        snapshot = store.get(key)
        target = targets.get(key[0])
        if snapshot is None or target is None:
            continue
        identity = dict(
            zip(
                IDENTITY_LABELS,
                (target.name, target.region, snapshot.account_id, key[1]),
                strict=True,
            )
        )
        identity.update(target.labels)
        for family, family_points in zip(families, points, strict=True):
            if family.histogram is not None:
                histogram = family.histogram(snapshot)
                if histogram is not None and histogram.count:
                    family_points.append(
                        HistogramDataPoint(
                            dict(identity),
                            start_unix_nano,
                            time_unix_nano,
                            histogram.count,
                            histogram.total,
                            list(histogram.counts),
                            list(DURATION_BOUNDS),
                            histogram.low,
                            histogram.high,
                        )
                    )
                continue
            # Gauges have no start time; 0 leaves the field unset on the wire.
            start = start_unix_nano if family.type == "counter" else 0
            for label_values, value in family.samples(snapshot):
                attributes = dict(identity)
                attributes.update(zip(family.labels, label_values, strict=True))
                family_points.append(NumberDataPoint(attributes, start, time_unix_nano, value))
    cumulative = AggregationTemporality.CUMULATIVE

    def data(family: Family, family_points: list[Any]) -> Any:
        if family.type == "counter":
            return Sum(family_points, cumulative, is_monotonic=True)
        if family.type == "histogram":
            return OtlpHistogram(family_points, cumulative)
        return Gauge(family_points)

    metrics = [
        # OTLP names a counter without the `_total` Prometheus adds.
        Metric(
            family.name.removesuffix("_total") if family.type == "counter" else family.name,
            family.help,
            _unit(family.name),
            data(family, family_points),
        )
        for family, family_points in zip(families, points, strict=True)
        if family_points
    ]
    if not metrics:
        return None
    scope = ScopeMetrics(InstrumentationScope(SCOPE, __version__), metrics, "")
    return MetricsData([ResourceMetrics(resource, [scope], "")])


class OtelExporter:
    """Pushes the store's job metrics over OTLP every interval; traces collection if asked.

    Construct it before the collector so `tracing` can be handed over; `start()` begins the
    pushes (synchronous, returns at once); `await shutdown()` makes a last push and flushes
    spans, returning within SHUTDOWN_TIMEOUT whatever the endpoint does. With
    `enabled: false` every method is a no-op and `tracing` is NOOP_TRACING.

    The SDK's observable gauges are not used for job metrics: an asynchronous instrument
    keeps every attribute set it ever saw for the life of the process, and past 2,000 per
    instrument (400 jobs of aws_iot_job_status) all new series collapse into one
    `otel.metric.overflow` point. Jobs come and go, so the push is built fresh from the
    store each time and sent with the SDK's OTLP exporter, as the SDK's periodic reader
    would, in a daemon thread of the same kind.
    """

    def __init__(self, config: Otel, store: MetricsStore, targets: Targets) -> None:
        self.config = config
        self.tracing: Tracing = NOOP_TRACING
        self.last_success: float | None = None
        self.failures = 0
        self._store = store
        # The start of the counter's and the histograms' cumulative counts.
        self._started = time.time_ns()
        self._targets: Callable[[], Mapping[str, Target]] = (
            targets if callable(targets) else lambda: targets
        )
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._exporter: MetricExporter | None = None
        self._tracer_provider: TracerProvider | None = None
        self._resource: Resource | None = None
        self._failing = False
        if not config.enabled:
            return
        _require_sdk(config)
        self._exporter = _metric_exporter(config)
        self._resource = build_resource(config)
        if config.tracing:
            self._tracer_provider = self._build_tracer_provider(self._resource)
            tracer = self._tracer_provider.get_tracer(SCOPE, __version__)
            self.tracing = _OtelTracing(tracer, self._region_of)

    def _build_tracer_provider(self, resource: Resource) -> TracerProvider:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # Not the global provider: the exporter's spans are its own, and the life cycle is
        # ours (shutdown_on_exit would add an unbounded flush at interpreter exit).
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        delay = min(MAX_SPAN_DELAY, self.config.interval)
        provider.add_span_processor(
            BatchSpanProcessor(
                _span_exporter(self.config),
                schedule_delay_millis=delay * 1000,
                export_timeout_millis=self.config.timeout * 1000,
            )
        )
        return provider

    def _region_of(self, target: str) -> str | None:
        found = self._targets().get(target)
        return found.region if found is not None else None

    @property
    def running(self) -> bool:
        """Whether the pushing thread is alive: False before start(), when disabled, and
        once shutdown has stopped it for good."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start pushing every interval; the first push comes one interval from now."""
        if self._exporter is None or self._thread is not None or self._stop.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="otel-metrics", daemon=True)
        self._thread.start()
        log.info(
            "otel push started endpoint=%s protocol=%s interval=%gs tracing=%s headers=%d",
            safe_endpoint(self.config.endpoint),
            self.config.protocol,
            self.config.interval,
            str(self.config.tracing).lower(),
            len(self.config.headers),
        )

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval):
            self.export_once()
        # One last push, so the values at shutdown reach the backend.
        self.export_once()

    def export_once(self) -> bool:
        """Build and send one push now; False when it failed. Never raises."""
        if self._exporter is None or self._resource is None:
            return False
        from opentelemetry.sdk.metrics.export import MetricExportResult

        with self._lock:
            try:
                data = build_metrics_data(
                    self._store,
                    self._targets(),
                    self._resource,
                    time.time_ns(),
                    self._store.families,
                    self._started,
                )
                if data is None:
                    return True
                result = self._exporter.export(data, timeout_millis=self.config.timeout * 1000)
            except Exception as exc:
                # The SDK's exporter reports HTTP failures itself; this is anything else.
                # Only the type: the message could carry the endpoint's credentials.
                log.error("otel push crashed error=%s", type(exc).__name__)
                result = None
            ok = result is MetricExportResult.SUCCESS
            self._record(ok)
            return ok

    def _record(self, ok: bool) -> None:
        if ok:
            self.last_success = time.time()
            if self._failing:
                log.info("otel push recovered endpoint=%s", safe_endpoint(self.config.endpoint))
            self._failing = False
            return
        self.failures += 1
        if not self._failing:
            # Once per outage: the SDK's exporter already logs each failed attempt.
            log.warning("otel push failing endpoint=%s", safe_endpoint(self.config.endpoint))
        self._failing = True

    def shutdown_blocking(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop pushing, make the last push and flush spans, in about `timeout` at most.

        Idempotent. Whatever has not finished by then is left to daemon threads, which
        end with the process.
        """
        deadline = time.monotonic() + timeout

        def remaining_ms() -> int:
            return max(0, int((deadline - time.monotonic()) * 1000))

        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(remaining_ms() / 1000)
        if self._exporter is not None:
            # Closes the HTTP session and interrupts a retry back-off still under way.
            self._exporter.shutdown(timeout_millis=remaining_ms())
        if self._tracer_provider is not None:
            self._tracer_provider.force_flush(remaining_ms())
            # TracerProvider.shutdown takes no timeout and waits up to 30 s for an export
            # under way; past the deadline it is left to finish in its daemon thread.
            closer = threading.Thread(
                target=self._tracer_provider.shutdown, name="otel-traces-shutdown", daemon=True
            )
            closer.start()
            closer.join(remaining_ms() / 1000)

    async def shutdown(self, grace: float = SHUTDOWN_TIMEOUT) -> None:
        """shutdown_blocking off the event loop, abandoned (daemon thread) past `grace`."""
        if self._exporter is None and self._tracer_provider is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def finished() -> None:
            if not done.done():
                done.set_result(None)

        def work() -> None:
            try:
                self.shutdown_blocking(grace)
            except Exception as exc:
                log.error("otel shutdown failed error=%s", type(exc).__name__)
            finally:
                # The loop may be gone if the caller gave up and exited.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(finished)

        # Not asyncio.to_thread: asyncio.run waits for the default executor's threads at
        # exit, which would undo the bound when the endpoint hangs.
        threading.Thread(target=work, name="otel-shutdown", daemon=True).start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace + 0.5):
                await done
