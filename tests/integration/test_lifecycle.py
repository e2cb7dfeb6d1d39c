"""Life cycle: reload (SIGHUP, POST /-/reload), OpenMetrics, request limits, paced polling."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from exporter.aws import JobSource
from exporter.collect.poller import TargetPoller
from exporter.collect.supervisor import Supervisor
from exporter.config import parse_config
from exporter.model import parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app, limit_in_flight, wants_gzip, wants_openmetrics
from exporter.store import MetricsStore
from tests.iot_endpoint import IotEndpoint
from tests.support import ROOT, free_port, http_get, started, stop, until, wait

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())


def target_yaml(name: str, url: str, job_id: str, labels: str = "{}") -> str:
    return (
        f"  - name: {name}\n    region: us-east-1\n    endpoint_url: {url}\n"
        f"    labels: {labels}\n    jobs: {{ids: [{job_id}]}}\n"
    )


def metric_lines(url: str) -> str:
    return http_get(url).decode()


@pytest.fixture
def two_jobs(moto_url: str) -> tuple[str, str]:
    iot = boto3.client("iot", region_name="us-east-1", endpoint_url=moto_url)
    ids = []
    for _ in range(2):
        job_id = f"rl-{uuid.uuid4().hex[:8]}"
        thing = iot.create_thing(thingName=f"{job_id}-thing")["thingArn"]
        iot.create_job(jobId=job_id, targets=[thing], document="{}")
        ids.append(job_id)
    return ids[0], ids[1]


def test_reload_by_sighup_and_http_keeps_running_config_on_errors(
    moto_url: str, tmp_path: Path, two_jobs: tuple[str, str]
) -> None:
    job_a, job_b = two_jobs
    config = tmp_path / "config.yaml"
    header = "collector: {interval: 500ms}\ntargets:\n"
    config.write_text(header + target_yaml("a", moto_url, job_a))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with started(
        [sys.executable, "-m", "exporter", "--config.file", str(config),
         "--web.listen-address", f"127.0.0.1:{port}", "--web.enable-lifecycle"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        http_get(f"{base}/readyz")
        assert f'job_id="{job_a}"' in metric_lines(f"{base}/metrics")

        # A valid new config: target b appears, target a keeps being exported.
        config.write_text(
            header + target_yaml("a", moto_url, job_a) + target_yaml("b", moto_url, job_b)
        )
        process.send_signal(signal.SIGHUP)
        wait(lambda: f'job_id="{job_b}"' in metric_lines(f"{base}/metrics"), what="job b")
        body = metric_lines(f"{base}/metrics")
        assert f'job_id="{job_a}"' in body
        assert "aws_iot_jobs_exporter_config_last_reload_successful 1.0" in body

        # An invalid one is refused; the old config keeps running and the gauge says so.
        config.write_text(header + "  - name: a\n    region: nowhere\n    jobs: {ids: [x]}\n")
        process.send_signal(signal.SIGHUP)
        wait(
            lambda: (
                "aws_iot_jobs_exporter_config_last_reload_successful 0.0"
                in metric_lines(f"{base}/metrics")
            ),
            what="the failed reload",
        )
        body = metric_lines(f"{base}/metrics")
        assert f'job_id="{job_a}"' in body and f'job_id="{job_b}"' in body

        # The same path over HTTP: the error names the file and the field.
        request = urllib.request.Request(f"{base}/-/reload", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 500
        assert "targets[0].region: 'nowhere' is not an AWS region" in info.value.read().decode()

        # Fixed again: the gauge recovers, target b is dropped.
        config.write_text(header + target_yaml("a", moto_url, job_a))
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        body = metric_lines(f"{base}/metrics")
        assert "aws_iot_jobs_exporter_config_last_reload_successful 1.0" in body
        assert f'job_id="{job_b}"' not in body and 'target="b"' not in body
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    assert "reload failed, keeping the running config" in err
    assert "Traceback" not in err


def test_reload_endpoint_is_off_without_lifecycle_flag(moto_url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("targets:\n" + target_yaml("a", moto_url, "nothing-here"))
    port = free_port()
    with started(
        [sys.executable, "-m", "exporter", "--config.file", str(config),
         "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as process:  # fmt: skip
        http_get(f"http://127.0.0.1:{port}/healthz")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code in (404, 405)
        stop(process)


async def test_apply_keeps_unchanged_targets_and_their_snapshots(
    moto_url: str, two_jobs: tuple[str, str]
) -> None:
    job_a, job_b = two_jobs
    text = "collector: {interval: 300ms}\ntargets:\n"
    first = parse_config(
        text + target_yaml("a", moto_url, job_a) + target_yaml("b", moto_url, job_b)
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(first, store, telemetry)
    await collector.start()
    try:
        await until(lambda: collector.ready, what="ready")
        a_before = collector.targets["a"]
        # b's labels change, a does not: a keeps its poller, b is re-rendered.
        second = parse_config(
            text + target_yaml("a", moto_url, job_a)
            + target_yaml("b", moto_url, job_b, "{team: fleet}")
        )  # fmt: skip
        await collector.apply(second)
        assert collector.targets["a"] is a_before
        assert store.get(("a", job_a)) is not None
        await until(lambda: b'team="fleet"' in store.body(), what="b re-rendered")
        # Collector settings change: every poller restarts, but snapshots stay exported.
        third = parse_config(
            "collector: {interval: 400ms}\ntargets:\n" + target_yaml("a", moto_url, job_a)
        )
        snapshot = store.get(("a", job_a))
        assert telemetry.collection_success.labels("a")._value.get() == 1
        await collector.apply(third)
        # The restarted poller does not reset the target's health to "failing".
        assert telemetry.collection_success.labels("a")._value.get() == 1
        assert collector.targets["a"] is not a_before
        # The same snapshot, or a newer one the restarted poller (a describe, a sweep)
        # stored meanwhile: never none, never an older one.
        kept = store.get(("a", job_a))
        assert snapshot is not None and kept is not None
        assert kept.fetched_at >= snapshot.fetched_at
        assert store.get(("b", job_b)) is None
        assert collector.targets["a"].jobs[job_a] is kept
    finally:
        await collector.stop()


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", False),
        ("text/plain", False),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
        ("application/openmetrics-text; version=0.0.1; q=0.75, text/plain; version=0.0.4; "
         "q=0.5, */*; q=0.1", True),
        ("text/plain;q=1,application/openmetrics-text;q=0.2", False),
        ("application/openmetrics-text;q=0", False),
    ],
)  # fmt: skip
def test_openmetrics_negotiation(accept: str, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected


@pytest.mark.parametrize(
    ("accept_encoding", "expected"),
    [("gzip", True), ("", False), ("identity", False), ("gzip;q=0, identity", False),
     ("deflate, gzip;q=0.5", True), ("*", True), ("*;q=0", False), ("*, gzip;q=0", False)],
)  # fmt: skip
def test_gzip_negotiation(accept_encoding: str, expected: bool) -> None:
    assert wants_gzip(accept_encoding) is expected


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    store, telemetry = MetricsStore(), SelfMetrics()
    telemetry.init_target("fleet")
    target = parse_config("targets: [{name: fleet, region: eu-west-1, jobs: {ids: [x]}}]").targets
    store.put_job(target[0], "firmware-v2", parse_describe_job(FULL, 1.0))
    server = TestServer(build_app(store, telemetry, lambda: True), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_openmetrics_response_parses(server_url: str) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server_url}/metrics", headers={"Accept": accept}) as r,
    ):
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await r.text()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["aws_iot_job_executions"].type == "gauge"
    assert families["aws_iot_jobs_exporter_api_requests"].type == "counter"


async def test_concurrent_requests_beyond_the_limit_get_503() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[limit_in_flight(2, frozenset({"/healthz"}))])
    app.router.add_get("/slow", slow)
    app.router.add_get("/healthz", healthz)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            url = str(server.make_url("/slow"))
            first = [asyncio.create_task(http.get(url)) for _ in range(2)]
            await asyncio.sleep(0.2)
            async with http.get(url) as third:
                assert third.status == 503
            # Probes are served whatever the load.
            async with http.get(str(server.make_url("/healthz"))) as probe:
                assert probe.status == 200
            release.set()
            for task in first:
                response = await task
                assert response.status == 200
                response.release()
    finally:
        await server.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[IotEndpoint]:
    ep = IotEndpoint()
    for i in range(5):
        body = json.loads(json.dumps(FULL))
        body["job"]["jobId"] = f"job-{i}"
        ep.jobs[f"job-{i}"] = body
    await ep.start()
    yield ep
    await ep.close()


async def test_known_jobs_are_spread_over_the_interval(endpoint: IotEndpoint) -> None:
    config = parse_config(
        f"targets: [{{name: ep, region: eu-west-1, endpoint_url: '{endpoint.url}', "
        "jobs: {ids: [job-0, job-1, job-2, job-3, job-4]}}]"
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(target, config.collector, source, store, telemetry)
        await collector.collect_once()  # first cycle: every new job at once
        endpoint.times.clear()
        await collector.collect_once(spread=1.0)
    starts = sorted(t for t, _ in endpoint.times)
    assert len(starts) == 5
    # Five calls spread over one second start 0.2 s apart: the span covers most of it.
    assert starts[-1] - starts[0] >= 0.6
    assert telemetry.collection_stretched.labels("ep")._value.get() == 0


async def test_cycle_stretches_when_the_budget_is_short(
    endpoint: IotEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(
        "collector: {interval: 1s, requests_per_second: 2}\n"
        f"targets: [{{name: ep, region: eu-west-1, endpoint_url: '{endpoint.url}', "
        "jobs: {ids: [job-0, job-1, job-2, job-3, job-4]}}]"
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(target, config.collector, source, store, telemetry)
        started = time.monotonic()
        await collector.collect_once()
        elapsed = time.monotonic() - started
    assert telemetry.collection_stretched.labels("ep")._value.get() == 1
    assert "collection stretched target=ep due_jobs=5" in caplog.text
    # The budget, not a burst: after the bucket's two tokens, three more calls at 2 per
    # second take at least 1.5 s.
    assert elapsed >= 1.45


async def test_reload_refuses_otel_changes_it_cannot_apply(tmp_path: Path) -> None:
    from exporter.cli.lifecycle import Reloader

    text = "targets: [{name: a, region: us-east-1, jobs: {ids: [x]}}]\n"
    path = tmp_path / "config.yaml"
    path.write_text(text)
    telemetry, store = SelfMetrics(), MetricsStore()
    collector = Supervisor(parse_config(text), store, telemetry)
    reloader = Reloader(str(path), collector, store, telemetry)
    reloader.loaded()
    path.write_text(text + "otel: {enabled: true}\n")
    error = await reloader.reload()
    assert error is not None and "otel: changes need a restart" in error
    assert telemetry.config_reload_ok._value.get() == 0
    assert not collector.config.otel.enabled
