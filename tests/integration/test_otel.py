"""OTLP output end to end: a real OTLP/HTTP receiver decodes what the SDK's exporters send."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
import types
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.aws import ApiError
from exporter.config import Config, Otel, Target, parse_config
from exporter.model import parse_describe_job
from exporter.otel import (
    NOOP_TRACING,
    OtelExporter,
    OtelUnavailable,
    build_metrics_data,
    build_resource,
    safe_endpoint,
)
from exporter.store import MetricsStore
from exporter.table import FAMILIES
from tests.support import ROOT, until

SECRET = "s3cret-api-key-0451"
DATA = ROOT / "tests" / "data"
CONFIG = """
targets:
  - name: prod
    region: eu-west-1
    labels: {env: production, team: fleet}
    jobs: {ids: [firmware-v2]}
  - name: lab
    region: us-east-1
    jobs: {ids: [minimal]}
otel:
  enabled: true
  interval: 100ms
  timeout: 3s
  headers: {authorization: "Bearer @SECRET@", x-tenant: acme}
  service_name: iot-jobs
  resource_attributes: {deployment.environment: test}
""".replace("@SECRET@", SECRET)

Series = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Received:
    path: str
    headers: Mapping[str, str]  # case-insensitive, as HTTP headers are
    body: Any


@dataclass
class Receiver:
    """An OTLP/HTTP endpoint that keeps every decoded request."""

    url: str
    requests: list[Received] = field(default_factory=list)
    status: int = 200
    hang: bool = False

    def of(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(url="")
    decoders: dict[str, tuple[Any, Any]] = {
        "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
        "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
    }

    async def handle(request: web.Request) -> web.Response:
        if state.hang:
            state.requests.append(Received(request.path, request.headers.copy(), None))
            await asyncio.Event().wait()
        message_type, response_type = decoders[request.path]
        # aiohttp undoes the Content-Encoding itself.
        raw = await request.read()
        message = message_type()
        message.ParseFromString(raw)
        state.requests.append(Received(request.path, request.headers.copy(), message))
        if state.status != 200:
            # Some gateways echo the request's credentials in their error pages.
            return web.Response(status=state.status, text=f"denied {SECRET}")
        return web.Response(
            body=response_type().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application(client_max_size=4 * 2**20)
    app.router.add_post("/v1/metrics", handle)
    app.router.add_post("/v1/traces", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def load_config(receiver: Receiver, **otel: Any) -> Config:
    config = parse_config(CONFIG)
    return replace(config, otel=replace(config.otel, **{"endpoint": receiver.url, **otel}))


def filled_store(config: Config) -> MetricsStore:
    store = MetricsStore()
    prod, lab = config.targets
    for target, name in ((prod, "full"), (lab, "minimal"), (lab, "unknown_status")):
        response = json.loads((DATA / f"describe_job_{name}.json").read_text())
        snapshot = parse_describe_job(response, 1_700_000_000.5)
        store.put_job(target, snapshot.job_id, snapshot)
    return store


def targets_of(config: Config) -> dict[str, Target]:
    return {t.name: t for t in config.targets}


def value_of(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def attrs(pairs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in pairs}


def otlp_series(requests: list[Received]) -> dict[Series, float]:
    """Every gauge point of the requests, keyed like a Prometheus series."""
    series: dict[Series, float] = {}
    for request in requests:
        for resource_metrics in request.body.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    assert metric.WhichOneof("data") == "gauge", metric.name
                    for point in metric.gauge.data_points:
                        key = (metric.name, frozenset(attrs(point.attributes).items()))
                        assert key not in series, f"duplicate point {key}"
                        series[key] = point.as_double
    return series


def prometheus_series(store: MetricsStore) -> dict[Series, float]:
    series: dict[Series, float] = {}
    for family in text_string_to_metric_families(store.body().decode()):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


async def test_push_carries_every_series_of_metrics_with_the_same_value(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The standard variable adds headers; the configuration wins on a conflict.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-from-env=1,x-tenant=other")
    config = load_config(receiver)
    store = filled_store(config)
    exporter = OtelExporter(config.otel, store, targets_of(config))
    exporter.start()
    try:
        await until(lambda: receiver.of("/v1/metrics"), what="a metrics push")
    finally:
        await exporter.shutdown()
    first = receiver.of("/v1/metrics")[0]

    wanted = prometheus_series(store)
    assert len(wanted) > 50  # the full job makes most families non-empty
    assert otlp_series([first]) == wanted

    metrics = {
        m.name: m
        for rm in first.body.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    helps = {f.name: f.help for f in FAMILIES}
    for name, metric in metrics.items():
        assert metric.description == helps[name]
    assert metrics["aws_iot_job_created_timestamp_seconds"].unit == "s"
    assert metrics["aws_iot_job_abort_threshold_ratio"].unit == "1"

    (resource_metrics,) = first.body.resource_metrics
    resource = attrs(resource_metrics.resource.attributes)
    assert resource["service.name"] == "iot-jobs"
    assert resource["service.version"] == __version__
    assert resource["cloud.provider"] == "aws"
    assert resource["deployment.environment"] == "test"
    assert resource["service.instance.id"]
    scope = resource_metrics.scope_metrics[0].scope
    assert (scope.name, scope.version) == ("aws-iot-jobs-exporter", __version__)

    assert first.headers["authorization"] == f"Bearer {SECRET}"
    assert first.headers["x-tenant"] == "acme"
    assert first.headers["x-from-env"] == "1"
    assert first.headers["Content-Type"] == "application/x-protobuf"
    assert first.headers["Content-Encoding"] == "gzip"


async def test_shutdown_pushes_the_last_values_once(receiver: Receiver) -> None:
    config = load_config(receiver, interval=3600.0)
    store = filled_store(config)
    exporter = OtelExporter(config.otel, store, targets_of(config))
    exporter.start()
    assert exporter.running
    store.remove(("lab", "minimal"))
    await exporter.shutdown()
    await exporter.shutdown()  # idempotent
    exporter.start()  # and final: no thread after shutdown
    assert not exporter.running
    (last,) = receiver.of("/v1/metrics")
    assert otlp_series([last]) == prometheus_series(store)


@pytest.mark.slow
async def test_push_follows_the_store_and_never_overflows(receiver: Receiver) -> None:
    """Jobs come and go for the life of the process: each push is exactly /metrics now."""
    config = load_config(receiver)
    prod = config.targets[0]
    response = json.loads((DATA / "describe_job_full.json").read_text())
    store = MetricsStore()
    exporter = OtelExporter(config.otel, store, targets_of(config))

    async def push() -> dict[Series, float]:
        before = len(receiver.requests)
        assert await asyncio.to_thread(exporter.export_once)
        return otlp_series(receiver.requests[before:])

    try:
        # Two generations of 410 jobs: 2,050 status series each, past the SDK's 2,000
        # attribute sets per instrument, and 4,100 over time.
        for generation in range(2):
            for key in store.job_keys():
                store.remove(key)
            for i in range(410):
                job_id = f"gen{generation}-job{i}"
                response["job"]["jobId"] = job_id
                store.put_job(prod, job_id, parse_describe_job(response, float(generation)))
            series = await push()
            assert series == prometheus_series(store)
            assert not any("otel.metric.overflow" in dict(labels) for _, labels in series)
        # Large pushes are split into requests of bounded size.
        assert len(receiver.of("/v1/metrics")) > 2 * 3
    finally:
        await exporter.shutdown()


async def test_push_uses_the_current_targets_and_skips_unknown_ones(receiver: Receiver) -> None:
    config = load_config(receiver)
    store = filled_store(config)
    current = {"prod": config.targets[0]}
    exporter = OtelExporter(config.otel, store, lambda: current)
    try:
        assert await asyncio.to_thread(exporter.export_once)
        pushed = otlp_series(receiver.of("/v1/metrics"))
        assert {dict(labels)["target"] for _, labels in pushed} == {"prod"}
        # A target relabelled by a reload is pushed with its new static labels.
        current["prod"] = replace(config.targets[0], labels=(("env", "staging"),))
        receiver.requests.clear()
        assert await asyncio.to_thread(exporter.export_once)
        pushed = otlp_series(receiver.of("/v1/metrics"))
        assert {dict(labels).get("env") for _, labels in pushed} == {"staging"}
        # Nothing to push sends nothing.
        current.clear()
        receiver.requests.clear()
        assert await asyncio.to_thread(exporter.export_once)
        assert receiver.requests == []
    finally:
        await exporter.shutdown()


async def test_tracing_spans_carry_operation_job_and_outcome(receiver: Receiver) -> None:
    config = load_config(receiver, tracing=True)
    exporter = OtelExporter(config.otel, MetricsStore(), targets_of(config))
    tracing = exporter.tracing

    async def describe(job_id: str, fail: ApiError | None = None, outcome: str = "") -> None:
        with tracing.api_span("prod", "DescribeJob", job_id) as span:
            await asyncio.sleep(0)
            if fail is not None:
                raise fail
            if outcome:
                span.set_outcome(outcome)

    async def cycle() -> None:
        with tracing.cycle_span("prod") as span:
            span.set_attribute("jobs", 3)
            with tracing.api_span("prod", "ListJobs"):
                await asyncio.sleep(0)
            # Tasks copy the context when created, so their spans are children of the cycle.
            async with asyncio.TaskGroup() as group:
                group.create_task(describe("job-ok"))
                group.create_task(describe("job-slow", ApiError("throttled", "DescribeJob", "x")))
                group.create_task(describe("job-gone", outcome="not_found"))

    with pytest.raises(ExceptionGroup):
        await cycle()
    with pytest.raises(RuntimeError), tracing.api_span("prod", "DescribeJob", "job-bug"):
        raise RuntimeError(SECRET)

    def spans() -> list[Span]:
        return [
            span
            for request in receiver.of("/v1/traces")
            for rs in request.body.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    try:
        await until(lambda: len(spans()) >= 6, what="six spans")
    finally:
        await exporter.shutdown()
    by_job = {attrs(s.attributes).get("job_id", s.name): s for s in spans()}
    root = by_job["collection cycle"]
    assert attrs(root.attributes) == {
        "target": "prod",
        "region": "eu-west-1",
        "cloud.region": "eu-west-1",
        "outcome": "error",
        "jobs": 3,
    }
    for job_id, outcome in (
        ("job-ok", "ok"),
        ("job-slow", "throttled"),
        ("job-gone", "not_found"),
        ("job-bug", "error"),
    ):
        span = by_job[job_id]
        got = attrs(span.attributes)
        assert span.name == "IoT/DescribeJob"
        assert span.kind == Span.SPAN_KIND_CLIENT
        assert (got["operation"], got["job_id"], got["outcome"]) == ("DescribeJob", job_id, outcome)
        assert (got["target"], got["region"], got["rpc.method"]) == (
            "prod",
            "eu-west-1",
            "DescribeJob",
        )
        wanted = Status.STATUS_CODE_UNSET if outcome == "ok" else Status.STATUS_CODE_ERROR
        assert span.status.code == wanted
        assert not span.events  # exceptions are not recorded: their text is not ours to send
        if job_id != "job-bug":
            assert span.parent_span_id == root.span_id
    list_jobs = by_job["IoT/ListJobs"]
    assert attrs(list_jobs.attributes)["outcome"] == "ok"
    assert list_jobs.parent_span_id == root.span_id
    assert SECRET not in str([s.SerializeToString() for s in spans()])
    request = receiver.of("/v1/traces")[0]
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    resource = attrs(request.body.resource_spans[0].resource.attributes)
    assert resource["service.name"] == "iot-jobs"


async def test_disabled_sends_nothing(receiver: Receiver) -> None:
    config = load_config(receiver)
    store = filled_store(config)
    off = replace(config.otel, enabled=False, tracing=True, service_name="disabled")
    disabled = OtelExporter(off, store, targets_of(config))
    assert disabled.tracing is NOOP_TRACING
    with disabled.tracing.cycle_span("prod") as span:
        span.set_outcome("ok")
    disabled.start()
    assert not disabled.running
    # An enabled exporter to the same receiver is the clock: three of its pushes are
    # time for many of the disabled one's, had it been pushing.
    enabled = OtelExporter(config.otel, store, targets_of(config))
    enabled.start()
    try:
        await until(lambda: len(receiver.requests) >= 3, what="three pushes")
    finally:
        await enabled.shutdown()
        await disabled.shutdown()
    names = {
        value_of(kv.value)
        for r in receiver.requests
        for rm in r.body.resource_metrics
        for kv in rm.resource.attributes
        if kv.key == "service.name"
    }
    assert names == {"iot-jobs"}


async def test_failed_pushes_never_log_the_headers(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # Credentials in the endpoint's user info are as secret as the headers.
    endpoint = receiver.url.replace("http://", f"http://user:{SECRET}@")
    config = load_config(receiver, endpoint=endpoint, timeout=1.0)
    receiver.status = 400
    exporter = OtelExporter(config.otel, filled_store(config), targets_of(config))
    exporter.start()
    try:
        await until(lambda: exporter.failures >= 2, what="two failed pushes")
        assert exporter.last_success is None
        receiver.status = 200
        await until(lambda: exporter.last_success is not None, what="a successful push")
    finally:
        await exporter.shutdown()
    assert "otel push failing" in caplog.text
    assert "otel push recovered" in caplog.text
    assert SECRET not in caplog.text


def test_logged_endpoints_lose_credentials() -> None:
    assert (
        safe_endpoint(f"https://user:{SECRET}@otlp.example.com:4318/base?token={SECRET}#x")
        == "https://otlp.example.com:4318/base"
    )
    assert safe_endpoint("http://[::1]:4318") == "http://[::1]:4318"


async def test_shutdown_is_bounded_when_the_endpoint_hangs(receiver: Receiver) -> None:
    config = load_config(receiver, tracing=True, timeout=3.0)
    receiver.hang = True
    exporter = OtelExporter(config.otel, filled_store(config), targets_of(config))
    exporter.start()
    with exporter.tracing.cycle_span("prod"):
        pass
    await until(lambda: receiver.requests, what="a push that hangs")
    # The contract the process's 5 s SIGTERM budget relies on; generous for a slow machine.
    async with asyncio.timeout(4.0):
        await exporter.shutdown(grace=1.0)


def test_grpc_without_its_package_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(CONFIG).otel
    # None in sys.modules makes the import fail whether or not the package is installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.metric_exporter", None)
    with pytest.raises(OtelUnavailable) as failure:
        OtelExporter(replace(config, protocol="grpc"), MetricsStore(), {})
    message = str(failure.value)
    assert "otel.protocol" in message
    assert "opentelemetry-exporter-otlp-proto-grpc" in message
    assert SECRET not in message


def test_grpc_exporters_get_the_endpoint_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, dict[str, Any]] = {}

    class FakeMetricExporter(ConsoleMetricExporter):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            made["metrics"] = kwargs

    class FakeSpanExporter(ConsoleSpanExporter):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            made["traces"] = kwargs

    base = "opentelemetry.exporter.otlp.proto.grpc"
    metric_module = types.ModuleType(f"{base}.metric_exporter")
    metric_module.OTLPMetricExporter = FakeMetricExporter  # type: ignore[attr-defined]
    trace_module = types.ModuleType(f"{base}.trace_exporter")
    trace_module.OTLPSpanExporter = FakeSpanExporter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, metric_module.__name__, metric_module)
    monkeypatch.setitem(sys.modules, trace_module.__name__, trace_module)
    config = replace(
        parse_config(CONFIG).otel, protocol="grpc", endpoint="http://collector:4317", tracing=True
    )
    exporter = OtelExporter(config, MetricsStore(), {})
    exporter.shutdown_blocking()
    for signal in ("metrics", "traces"):
        assert made[signal]["endpoint"] == "http://collector:4317"
        assert made[signal]["headers"]["authorization"] == f"Bearer {SECRET}"
        assert made[signal]["timeout"] == 3.0


def test_resource_service_name_wins_and_env_attributes_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.cluster.name=edge,service.name=env")
    config = Otel(
        enabled=True,
        service_name="configured",
        resource_attributes=(("service.name", "free-form"), ("service.instance.id", "replica-3")),
    )
    resource = build_resource(config).attributes
    assert resource["service.name"] == "configured"
    assert resource["service.instance.id"] == "replica-3"
    assert resource["k8s.cluster.name"] == "edge"


def test_empty_store_builds_nothing() -> None:
    resource = build_resource(Otel(enabled=True))
    assert build_metrics_data(MetricsStore(), {}, resource, 0) is None


def test_without_the_sdk_disabled_works_and_enabled_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules blocks every opentelemetry import, as if it were not installed;
    # the module is imported afresh so its top level is tested too.
    for name in [n for n in sys.modules if n.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "exporter.otel")
    otel = importlib.import_module("exporter.otel")
    config = parse_config(CONFIG).otel
    disabled = otel.OtelExporter(replace(config, enabled=False), MetricsStore(), {})
    assert disabled.tracing is otel.NOOP_TRACING
    with pytest.raises(otel.OtelUnavailable, match=r"otel\.enabled.*\[otel\]"):
        otel.OtelExporter(config, MetricsStore(), {})


def test_documentation_covers_the_configuration_and_its_example_is_valid() -> None:
    doc = (ROOT / "docs" / "opentelemetry.md").read_text()
    for key in Otel.__dataclass_fields__:
        assert f"| `{key}` |" in doc, f"otel.{key} missing from docs/opentelemetry.md"
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, "docs/opentelemetry.md").otel
    assert config.enabled and config.tracing
    for attribute in ("operation", "job_id", "outcome", "rpc.method", "cloud.region"):
        assert f"`{attribute}`" in doc
