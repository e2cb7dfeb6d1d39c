"""Faults from a real HTTP endpoint: retried, classified, counted; last good values kept."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exporter.aws import ApiError, JobSource
from exporter.collect.poller import TargetPoller
from exporter.config import Config, parse_config
from exporter.selfmetrics import OUTCOMES, SelfMetrics
from exporter.store import MetricsStore
from tests.iot_endpoint import IotEndpoint
from tests.support import ROOT, WallClock, free_port

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())


def job(job_id: str, status: str = "IN_PROGRESS", **extra: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(FULL))
    body["job"].update(jobId=job_id, jobArn=f"arn:aws:iot:eu-west-1:123456789012:job/{job_id}")
    body["job"]["status"] = status
    body["job"].update(extra)
    return body


@pytest.fixture
async def endpoint() -> AsyncIterator[IotEndpoint]:
    ep = IotEndpoint()
    ep.jobs = {"a": job("a"), "b": job("b")}
    await ep.start()
    yield ep
    await ep.close()


def cfg(endpoint: IotEndpoint, jobs: str = "ids: [a, b]", collector: str = "") -> Config:
    return parse_config(
        f"collector: {{max_attempts: 2, request_timeout: 2s, {collector}}}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {endpoint.url}\n"
        f"    jobs: {{{jobs}}}\n"
    )


def count(telemetry: SelfMetrics, operation: str, outcome: str) -> float:
    return telemetry.api_requests.labels("ep", operation, outcome)._value.get()


async def test_throttling_is_retried_and_counted(endpoint: IotEndpoint) -> None:
    endpoint.error("a", 429, "ThrottlingException")
    config, telemetry = cfg(endpoint), SelfMetrics()
    telemetry.init_target("ep")
    async with JobSource(config.targets[0], config.collector, telemetry) as source:
        snapshot = await source.describe_job("a")
    assert snapshot.job_id == "a"
    assert count(telemetry, "DescribeJob", "throttled") == 1
    assert count(telemetry, "DescribeJob", "ok") == 1
    assert endpoint.calls["DescribeJob:a"] == 2


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        (503, "ServiceUnavailableException", "unavailable"),
        (500, "InternalFailureException", "unavailable"),
        (403, "AccessDeniedException", "denied"),
        (400, "InvalidRequestException", "invalid"),
        (429, "ThrottlingException", "throttled"),
    ],
)
async def test_failures_are_classified(
    endpoint: IotEndpoint, status: int, code: str, outcome: str
) -> None:
    endpoint.error("a", status, code, times=5)
    config, telemetry = cfg(endpoint), SelfMetrics()
    async with JobSource(config.targets[0], config.collector, telemetry) as source:
        with pytest.raises(ApiError) as info:
            await source.describe_job("a")
    assert info.value.outcome == outcome
    retried = outcome in ("unavailable", "throttled")
    assert count(telemetry, "DescribeJob", outcome) == (2 if retried else 1)
    assert count(telemetry, "DescribeJob", "ok") == 0


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b"{not json", "malformed"),
        (b'{"job": {"jobId": "a", "status": 7}}', "malformed"),
        (b'{"job": {"jobId": "a", "jobProcessDetails": {"numberOfQueuedThings": "x"}}}',
         "malformed"),
        (b"[]", "malformed"),
    ],
)  # fmt: skip
async def test_unreadable_bodies_are_malformed_and_keep_last_good_values(
    endpoint: IotEndpoint, body: bytes, outcome: str
) -> None:
    config, telemetry, store = cfg(endpoint), SelfMetrics(), MetricsStore()
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(target, config.collector, source, store, telemetry)
        await collector.collect_once()
        before = store.body()
        good = store.get(("ep", "a"))
        endpoint.raw("a", body)
        await collector.collect_once()
    assert count(telemetry, "DescribeJob", outcome) == 1
    assert telemetry.collection_success.labels("ep")._value.get() == 0
    # Job a keeps its last good snapshot (and its last_success timestamp); b moved on.
    assert store.get(("ep", "a")) is good
    assert b'job_id="a"' in before and b'job_id="a"' in store.body()


async def test_failed_describe_keeps_last_good_values_then_recovers(endpoint: IotEndpoint) -> None:
    config, telemetry, store = cfg(endpoint), SelfMetrics(), MetricsStore()
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(target, config.collector, source, store, telemetry)
        await collector.collect_once()
        first = store.get(("ep", "b"))
        assert first is not None
        endpoint.error("b", 503, "ServiceUnavailableException", times=2)
        await collector.collect_once()
        assert store.get(("ep", "b")) is first
        assert telemetry.collection_success.labels("ep")._value.get() == 0
        await collector.collect_once()
        latest = store.get(("ep", "b"))
        assert latest is not None and latest.fetched_at > first.fetched_at
        assert telemetry.collection_success.labels("ep")._value.get() == 1


async def test_discovery_pages_at_the_largest_page_size(endpoint: IotEndpoint) -> None:
    endpoint.jobs = {f"job-{i:03d}": job(f"job-{i:03d}") for i in range(260)}
    config, telemetry = cfg(endpoint, jobs="discover: {}"), SelfMetrics()
    async with JobSource(config.targets[0], config.collector, telemetry) as source:
        summaries = await source.list_jobs({})
    assert len(summaries) == 260
    assert endpoint.calls["ListJobs"] == 2
    assert count(telemetry, "ListJobs", "ok") == 2


async def test_discovery_skips_terminal_jobs_past_retention(endpoint: IotEndpoint) -> None:
    endpoint.jobs = {
        "old": job("old", "COMPLETED", completedAt=1000.0, isConcurrent=False),
        "new": job("new", "IN_PROGRESS"),
    }
    config = cfg(endpoint, jobs="discover: {}", collector="terminal_job_retention: 1h")
    store, telemetry = MetricsStore(), SelfMetrics()
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(target, config.collector, source, store, telemetry)
        await collector.collect_once()
    assert set(collector.jobs) == {"new"}
    assert endpoint.calls["DescribeJob:old"] == 0


async def test_failed_discovery_keeps_known_jobs(endpoint: IotEndpoint) -> None:
    config = cfg(endpoint, jobs="ids: [a], discover: {}", collector="discovery_interval: 1s")
    store, telemetry = MetricsStore(), SelfMetrics()
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(target, config.collector, source, store, telemetry)
        await collector.collect_once()
        assert set(collector.jobs) == {"a", "b"}
        await endpoint.close()  # the endpoint goes away: connection refused
        await collector.discover(type("C", (), {"failures": 0})())  # type: ignore[arg-type]
        await collector.collect_once()
    assert set(collector.jobs) == {"a", "b"}
    assert len(store) == 2
    assert count(telemetry, "DescribeJob", "network") >= 2


def test_every_outcome_is_initialised_at_zero() -> None:
    telemetry = SelfMetrics()
    telemetry.init_target("ep")
    for outcome in OUTCOMES:
        assert count(telemetry, "DescribeJob", outcome) == 0


async def test_finished_jobs_are_frozen_then_dropped_after_retention(
    endpoint: IotEndpoint,
) -> None:
    done = {"numberOfSucceededThings": 9, "numberOfFailedThings": 1, "processingTargets": []}
    endpoint.jobs = {
        "done": job("done", "COMPLETED", isConcurrent=False, completedAt=time.time(),
                    jobProcessDetails=done),
        "draining": job("draining", "CANCELED", isConcurrent=False, completedAt=time.time(),
                        jobProcessDetails=dict(done, numberOfInProgressThings=2)),
    }  # fmt: skip
    config = cfg(endpoint, jobs="ids: [done, draining]", collector="terminal_job_retention: 1h")
    store, telemetry = MetricsStore(), SelfMetrics()
    now = [time.time()]
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(
            target, config.collector, source, store, telemetry, clock=WallClock(lambda: now[0])
        )
        for _ in range(3):
            await collector.collect_once()
        # Finished and settled: described once. Canceled but still running executions:
        # described every cycle, since those executions can still succeed or fail.
        assert endpoint.calls["DescribeJob:done"] == 1
        assert endpoint.calls["DescribeJob:draining"] == 3
        assert telemetry.jobs_tracked.labels("ep", "frozen")._value.get() == 1
        assert telemetry.jobs_tracked.labels("ep", "active")._value.get() == 1
        now[0] += 2 * 3600
        await collector.collect_once()
        assert len(store) == 0
        await collector.collect_once()
    assert endpoint.calls["DescribeJob:done"] == 1
    assert endpoint.calls["DescribeJob:draining"] == 4


async def test_a_deleted_frozen_job_disappears_at_the_next_discovery(
    endpoint: IotEndpoint,
) -> None:
    done = {"numberOfSucceededThings": 3, "processingTargets": []}
    endpoint.jobs = {
        "done": job("done", "COMPLETED", isConcurrent=False, completedAt=time.time(),
                    jobProcessDetails=done),
        "a": job("a"),
    }  # fmt: skip
    config = cfg(endpoint, jobs="discover: {}", collector="discovery_interval: 1s")
    store, telemetry = MetricsStore(), SelfMetrics()
    now = [time.time()]
    target = config.targets[0]
    async with JobSource(target, config.collector, telemetry) as source:
        collector = TargetPoller(
            target, config.collector, source, store, telemetry, clock=WallClock(lambda: now[0])
        )
        await collector.collect_once()
        await collector.collect_once()
        assert store.get(("ep", "done")) is not None
        assert endpoint.calls["DescribeJob:done"] == 1  # frozen: not described again
        del endpoint.jobs["done"]
        # The next discovery is due. From the real time, not the start: a cycle skips a
        # first describe of a job fetched since it began, and on a busy machine the first
        # two cycles can take longer than 2 s.
        now[0] = time.time() + 2
        await collector.collect_once()
    assert store.get(("ep", "done")) is None
    assert endpoint.calls["DescribeJob:done"] == 2


@pytest.mark.slow
async def test_a_role_that_cannot_be_assumed_is_counted(endpoint: IotEndpoint) -> None:
    # STS refuses connections: the call fails before any IoT request is sent, so
    # botocore's retry hook never sees it; the call itself must count it.
    config = parse_config(
        "collector: {max_attempts: 1, request_timeout: 2s}\ntargets:\n"
        f"  - name: ep\n    region: eu-west-1\n    endpoint_url: {endpoint.url}\n"
        "    role_arn: arn:aws:iam::123456789012:role/reader\n"
        f"    sts_endpoint_url: http://127.0.0.1:{free_port()}\n"
        "    jobs: {ids: [a]}\n"
    )
    telemetry = SelfMetrics()
    async with JobSource(config.targets[0], config.collector, telemetry) as source:
        with pytest.raises(ApiError) as info:
            await source.describe_job("a")
    assert info.value.outcome == "network"
    assert count(telemetry, "DescribeJob", "network") == 1
    assert endpoint.calls["DescribeJob:a"] == 0


async def test_a_paginator_that_repeats_itself_is_malformed(endpoint: IotEndpoint) -> None:
    endpoint.jobs = {f"job-{i:03d}": job(f"job-{i:03d}") for i in range(300)}
    endpoint.repeat_token = True
    config, telemetry = cfg(endpoint, jobs="discover: {}"), SelfMetrics()
    async with JobSource(config.targets[0], config.collector, telemetry) as source:
        with pytest.raises(ApiError) as info:
            await source.list_jobs({})
    assert info.value.outcome == "malformed"
    assert endpoint.calls["ListJobs"] == 2  # the second page hands back the same token
    assert count(telemetry, "ListJobs", "malformed") == 1
