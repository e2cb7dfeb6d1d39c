"""The collector against moto's server, through real aiobotocore clients and botocore signing."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.aws import JobSource
from exporter.collect.poller import TargetPoller
from exporter.collect.shard import Shard
from exporter.collect.supervisor import Supervisor
from exporter.config import Config, parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from tests.support import WallClock, until


@pytest.fixture
def iot(moto_url: str) -> Any:
    return boto3.client("iot", region_name="us-east-1", endpoint_url=moto_url)


@pytest.fixture
def prefix() -> str:
    """Job ids unique to the test: moto's server is shared by the session."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def fleet(iot: Any, prefix: str) -> Iterator[dict[str, Any]]:
    things = [iot.create_thing(thingName=f"{prefix}-thing-{i}")["thingArn"] for i in range(3)]
    group = iot.create_thing_group(thingGroupName=f"{prefix}-group")["thingGroupArn"]
    jobs = {
        "rollout": iot.create_job(
            jobId=f"{prefix}-rollout",
            targets=things,
            document="{}",
            description="firmware",
            targetSelection="SNAPSHOT",
            jobExecutionsRolloutConfig={"maximumPerMinute": 20},
            abortConfig={
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": 25.0,
                        "minNumberOfExecutedThings": 10,
                    }
                ]
            },
            timeoutConfig={"inProgressTimeoutInMinutes": 45},
            presignedUrlConfig={
                "roleArn": "arn:aws:iam::123456789012:role/presign",
                "expiresInSec": 900,
            },
        ),
        "group": iot.create_job(
            jobId=f"{prefix}-group", targets=[group], document="{}", targetSelection="CONTINUOUS"
        ),
        "other": iot.create_job(jobId=f"{prefix}-other-test", targets=things[:1], document="{}"),
    }
    yield {"things": things, "group": group, "jobs": jobs}


def config(moto_url: str, body: str, collector: str = "") -> Config:
    return parse_config(
        f"collector: {{{collector}}}\ntargets:\n  - name: moto\n    region: us-east-1\n"
        f"    endpoint_url: {moto_url}\n    labels: {{env: test}}\n{body}"
    )


def series(store: MetricsStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(store.body().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(store: MetricsStore, name: str, job_id: str, **labels: str) -> float | None:
    for (metric, pairs), v in series(store).items():
        got = dict(pairs)
        if metric == name and got.get("job_id") == job_id and labels.items() <= got.items():
            return v
    return None


async def run_cycles(cfg: Config, n: int = 1, **kwargs: Any) -> tuple[TargetPoller, Any]:
    store, telemetry = MetricsStore(), SelfMetrics()
    target = cfg.targets[0]
    async with JobSource(target, cfg.collector, telemetry) as source:
        collector = TargetPoller(target, cfg.collector, source, store, telemetry, **kwargs)
        for _ in range(n):
            await collector.collect_once()
    return collector, (store, telemetry)


def api_calls(telemetry: SelfMetrics, operation: str, outcome: str) -> float:
    return telemetry.api_requests.labels("moto", operation, outcome)._value.get()


async def test_explicit_ids_and_discovery_yield_every_job(
    moto_url: str, iot: Any, fleet: dict[str, Any], prefix: str
) -> None:
    cfg = config(
        moto_url,
        f"    jobs:\n      ids: [{prefix}-rollout, {prefix}-absent]\n"
        f"      discover: {{include: ['^{prefix}-'], exclude: ['-test$']}}\n",
    )
    collector, (store, telemetry) = await run_cycles(cfg)
    assert set(collector.jobs) == {f"{prefix}-rollout", f"{prefix}-group"}
    for job_id in collector.jobs:
        truth = iot.describe_job(jobId=job_id)["job"]
        details = truth["jobProcessDetails"]
        assert (
            value(store, "aws_iot_job_executions", job_id, state="queued")
            == details["numberOfQueuedThings"]
        )
        assert value(store, "aws_iot_job_status", job_id, status=truth["status"]) == 1
        assert value(store, "aws_iot_job_info", job_id, job_arn=truth["jobArn"]) == 1
        assert value(store, "aws_iot_job_created_timestamp_seconds", job_id) == pytest.approx(
            truth["createdAt"].timestamp()
        )
        assert value(store, "aws_iot_job_processing_targets", job_id) == len(
            details.get("processingTargets") or []
        )
    rollout = f"{prefix}-rollout"
    assert value(store, "aws_iot_job_rollout_maximum_per_minute", rollout) == 20
    assert value(store, "aws_iot_job_rollout_rate_limit_per_minute", rollout) == 20
    assert value(store, "aws_iot_job_abort_threshold_ratio", rollout, failure_type="FAILED") == 0.25
    assert value(store, "aws_iot_job_abort_min_executed_things", rollout) == 10
    assert value(store, "aws_iot_job_in_progress_timeout_seconds", rollout) == 45 * 60
    assert value(store, "aws_iot_job_presigned_url_expiry_seconds", rollout) == 900
    assert value(store, "aws_iot_job_target_info", rollout, target_type="thing") == 1
    assert value(store, "aws_iot_job_target_info", f"{prefix}-group", target_type="thinggroup") == 1
    # Identity labels on every job series.
    for (name, pairs), _ in series(store).items():
        labels = dict(pairs)
        assert labels["target"] == "moto" and labels["region"] == "us-east-1", name
        assert labels["account_id"] == "123456789012" and labels["env"] == "test", name
        assert "job" not in labels and "instance" not in labels
    # The absent explicit id is reported, not fatal.
    assert telemetry.jobs_missing.labels("moto")._value.get() == 1
    assert api_calls(telemetry, "DescribeJob", "not_found") == 1
    assert api_calls(telemetry, "ListJobs", "ok") >= 1
    # Observed rate appears from the second describe on.
    assert value(store, "aws_iot_job_rollout_observed_rate_per_minute", rollout) is None


async def test_second_cycle_measures_rate_and_keeps_polling_active_jobs(
    moto_url: str, fleet: dict[str, Any], prefix: str
) -> None:
    cfg = config(moto_url, f"    jobs:\n      ids: [{prefix}-rollout]\n")
    _, (store, telemetry) = await run_cycles(cfg, n=2)
    assert api_calls(telemetry, "DescribeJob", "ok") == 2
    assert value(store, "aws_iot_job_rollout_observed_rate_per_minute", f"{prefix}-rollout") == 0
    assert telemetry.collection_success.labels("moto")._value.get() == 1


async def test_canceled_job_with_queued_executions_is_polled_then_dropped_after_retention(
    moto_url: str, iot: Any, fleet: dict[str, Any], prefix: str
) -> None:
    # moto's CancelJob leaves the execution queued: the job still changes, so it is
    # described every cycle rather than frozen, until retention drops it.
    job_id = f"{prefix}-other-test"
    iot.cancel_job(jobId=job_id, reasonCode="BAD_BUILD", comment="stop")
    cfg = config(moto_url, f"    jobs:\n      ids: [{job_id}]\n", "terminal_job_retention: 1h")
    store, telemetry = MetricsStore(), SelfMetrics()
    now = [time.time()]
    target = cfg.targets[0]
    async with JobSource(target, cfg.collector, telemetry) as source:
        collector = TargetPoller(
            target, cfg.collector, source, store, telemetry, clock=WallClock(lambda: now[0])
        )
        for _ in range(3):
            await collector.collect_once()
        assert api_calls(telemetry, "DescribeJob", "ok") == 3
        assert value(store, "aws_iot_job_status", job_id, status="CANCELED") == 1
        assert value(store, "aws_iot_job_reason_info", job_id, reason_code="BAD_BUILD") == 1
        assert telemetry.jobs_tracked.labels("moto", "active")._value.get() == 1
        now[0] += 2 * 3600
        await collector.collect_once()
        assert value(store, "aws_iot_job_status", job_id, status="CANCELED") is None
        assert len(store) == 0
        await collector.collect_once()
        assert api_calls(telemetry, "DescribeJob", "ok") == 4


async def test_deleted_job_disappears(
    moto_url: str, iot: Any, fleet: dict[str, Any], prefix: str
) -> None:
    job_id = f"{prefix}-group"
    cfg = config(moto_url, f"    jobs:\n      discover: {{include: ['^{prefix}-group$']}}\n")
    store, telemetry = MetricsStore(), SelfMetrics()
    target = cfg.targets[0]
    async with JobSource(target, cfg.collector, telemetry) as source:
        collector = TargetPoller(target, cfg.collector, source, store, telemetry)
        await collector.collect_once()
        assert value(store, "aws_iot_job_info", job_id) == 1
        iot.delete_job(jobId=job_id, force=True)
        await collector.collect_once()
    assert value(store, "aws_iot_job_info", job_id) is None
    assert telemetry.jobs_missing.labels("moto")._value.get() == 0


async def test_sharding_partitions_jobs_without_overlap(
    moto_url: str, fleet: dict[str, Any], prefix: str
) -> None:
    cfg = config(moto_url, f"    jobs:\n      discover: {{include: ['^{prefix}-']}}\n")
    single, _ = await run_cycles(cfg)
    shards = [await run_cycles(cfg, shard=Shard(i, 3)) for i in range(3)]
    seen = [set(c.jobs) for c, _ in shards]
    assert set().union(*seen) == set(single.jobs)
    assert sum(len(s) for s in seen) == len(single.jobs)


def test_shard_from_pod_name() -> None:
    assert Shard.from_pod_name(3, "exporter-2") == Shard(2, 3)
    with pytest.raises(ValueError, match="ordinal"):
        Shard.from_pod_name(3, "exporter")
    with pytest.raises(ValueError, match="not below"):
        Shard.from_pod_name(3, "exporter-3")


async def test_assumed_role_credentials_sign_calls(
    moto_url: str, fleet: dict[str, Any], prefix: str
) -> None:
    cfg = parse_config(
        f"targets:\n  - name: moto\n    region: us-east-1\n    endpoint_url: {moto_url}\n"
        f"    sts_endpoint_url: {moto_url}\n"
        "    role_arn: arn:aws:iam::123456789012:role/reader\n"
        "    external_id: very-secret-external-id\n"
        f"    jobs: {{ids: [{prefix}-rollout]}}\n"
    )
    telemetry = SelfMetrics()
    async with JobSource(cfg.targets[0], cfg.collector, telemetry) as source:
        snapshot = await source.describe_job(f"{prefix}-rollout")
        signer_credentials = source._client._request_signer._credentials
        credentials = await signer_credentials.get_frozen_credentials()
    assert snapshot.job_id == f"{prefix}-rollout"
    # moto's STS hands out temporary keys (ASIA...) with a session token.
    assert credentials.access_key != "testing"
    assert credentials.token


@contextlib.asynccontextmanager
async def ready_collector(cfg: Config) -> AsyncIterator[tuple[MetricsStore, SelfMetrics]]:
    """A started Supervisor, once every target finished its first cycle; stopped after."""
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(cfg, store, telemetry)
    await collector.start()
    try:
        await until(lambda: collector.ready, what="every target's first cycle")
        yield store, telemetry
    finally:
        await collector.stop()


async def test_collector_runs_every_target_and_reports_ready(
    moto_url: str, fleet: dict[str, Any], prefix: str
) -> None:
    cfg = parse_config(
        "collector: {interval: 200ms}\ntargets:\n"
        f"  - name: a\n    region: us-east-1\n    endpoint_url: {moto_url}\n"
        f"    jobs: {{ids: [{prefix}-rollout]}}\n"
        f"  - name: b\n    region: us-east-1\n    endpoint_url: {moto_url}\n"
        f"    jobs: {{ids: [{prefix}-group]}}\n"
    )
    async with ready_collector(cfg) as (store, _):
        assert {k[0] for k in store.job_keys()} == {"a", "b"}


async def test_a_target_whose_client_cannot_be_created_does_not_stop_the_others(
    moto_url: str, fleet: dict[str, Any], prefix: str
) -> None:
    cfg = parse_config(
        "collector: {interval: 200ms}\ntargets:\n"
        "  - name: broken\n    region: us-east-1\n    profile: no-such-profile\n"
        "    jobs: {ids: [x]}\n"
        f"  - name: fine\n    region: us-east-1\n    endpoint_url: {moto_url}\n"
        f"    jobs: {{ids: [{prefix}-rollout]}}\n"
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(cfg, store, telemetry)
    await collector.start()
    try:
        # The job is stored as soon as it is described, before its cycle ends and sets
        # collection_success: wait for the state asserted, not for the job.
        await until(
            lambda: (
                telemetry.collection_success.labels("fine")._value.get() == 1
                and collector.targets["broken"].cycles >= 2
            ),
            what="a successful cycle of fine and broken tried twice",
        )
        assert store.get(("fine", f"{prefix}-rollout")) is not None
        assert telemetry.collection_success.labels("broken")._value.get() == 0
        # A target AWS never answered keeps the replica out of its Service.
        assert not collector.ready
    finally:
        await collector.stop()
