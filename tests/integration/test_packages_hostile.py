"""Hostile fleet index and catalog answers over real HTTP and botocore: each costs its own
package family one interval, the last good counts stay exported, the job metrics go on,
and an index that cannot answer is said once and not retried in a loop."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.shard import Shard
from exporter.collect.supervisor import Supervisor
from exporter.config import Config, parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from tests.hostile_packages import (
    HostilePackages,
    buckets_body,
    count_body,
    error,
    group_arn,
    job_body,
    thing_arn,
    version_arn,
)
from tests.support import until

JOB = "meter-upgrade"
LABEL_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
FIELD = "shadow.name.$package.reported.{}.version"


@pytest.fixture
async def aws() -> AsyncIterator[HostilePackages]:
    server = await HostilePackages().start()
    server.buckets["firmware"] = buckets_body(10, **{"1.0.0": 6, "2.0.0": 4})
    server.buckets["agent"] = buckets_body(3, **{"0.9": 3})
    server.statistics["*"] = count_body(12)
    server.statistics["thingGroupNames:meters"] = count_body(8)
    server.statistics[f"thingGroupNames:meters AND {FIELD.format('firmware')}:2.0.0"] = count_body(
        4
    )
    server.describe[JOB] = job_body(JOB, [version_arn("firmware", "2.0.0")], [group_arn("meters")])
    yield server
    await server.close()


def cfg(aws: HostilePackages, max_versions: int = 10, discover: bool = False) -> Config:
    packages = (
        "{names: [firmware, agent], discover: true}" if discover else "{names: [firmware, agent]}"
    )
    return parse_config(
        "collector: {interval: 1s, request_timeout: 1s, max_attempts: 1, "
        "executions: {requests_per_second: 0}, "
        f"packages: {{interval: 1s, requests_per_second: 100, "
        f"max_versions_per_package: {max_versions}}}}}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        f"    labels: {{team: fw}}\n"
        f"    jobs: {{ids: [{JOB}]}}\n"
        f"    packages: {packages}\n"
    )


class Running:
    """The whole collector of one target, served over HTTP, until the block ends."""

    def __init__(self, config: Config) -> None:
        self.telemetry, self.store = SelfMetrics(), MetricsStore()
        self.collector = Supervisor(config, self.store, self.telemetry)
        app = build_app(
            self.store, self.telemetry, lambda: True, packages=self.collector.versions.body
        )
        self.server = TestServer(app)

    async def __aenter__(self) -> Running:
        await self.server.start_server()
        await self.collector.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.collector.stop()
        await self.server.close()

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with (
            ClientSession() as session,
            session.get(self.server.make_url("/metrics")) as response,
        ):
            text = await response.text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    @property
    def rounds(self) -> int:
        versions = self.collector._running["ep"].versions
        assert versions is not None
        return versions.state.rounds

    async def after_rounds(self, n: int) -> None:
        start = self.rounds
        await until(lambda: self.rounds >= start + n, what=f"{n} more package rounds")


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    for (metric, pairs), v in samples.items():
        if metric == name and all(dict(pairs).get(k) == w for k, w in labels.items()):
            return v
    return None


async def test_good_answers_give_versions_unreported_and_adoption(aws: HostilePackages) -> None:
    async with Running(cfg(aws)) as run:
        await run.after_rounds(1)
        samples = await run.scrape()
        things = "aws_iot_package_version_things"
        assert value(samples, things, package="firmware", version="1.0.0") == 6
        assert value(samples, things, package="firmware", version="2.0.0") == 4
        assert value(samples, things, package="firmware", version="other") == 0
        assert value(samples, "aws_iot_package_things_unreported", package="firmware") == 2
        assert value(samples, "aws_iot_package_things_unreported", package="agent") == 9
        adoption = "aws_iot_job_package_adoption_things"
        assert value(samples, adoption, job_id=JOB, package="firmware", version="2.0.0") == 4
        assert value(samples, "aws_iot_job_group_things", job_id=JOB, thing_group="meters") == 8
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 1
        # Identity and static labels, as on every job series.
        labels = next(dict(p) for (m, p) in samples if m == things)
        assert labels["target"] == "ep" and labels["region"] == "eu-west-1"
        assert labels["account_id"] == "" and labels["team"] == "fw"
        # The version field, escaped as the query syntax wants, and an aggregation per package.
        assert f"{FIELD.format('firmware')}:*" in aws.queries


async def test_huge_bucket_lists_and_bad_bytes_stay_bounded_and_label_safe(
    aws: HostilePackages,
) -> None:
    bad = "".join(chr(c) for c in range(256)) + '"}\n\\'
    versions = {bad: 7, **{f"v{i}": 1 for i in range(50_000)}}
    aws.buckets["firmware"] = json.dumps(
        {
            "totalCount": 50_007 + 100,
            "buckets": [{"keyValue": k, "count": n} for k, n in versions.items()]
            + [{"keyValue": ["list"], "count": 5}, {"keyValue": "neg", "count": -5}],
        }
    ).encode()
    async with Running(cfg(aws, max_versions=3)) as run:
        await run.after_rounds(1)
        samples = await run.scrape()
        series = [
            dict(p)
            for (m, p) in samples
            if m == "aws_iot_package_version_things" and dict(p)["package"] == "firmware"
        ]
        assert len(series) == 4  # the 3 largest and "other"
        top = value(samples, "aws_iot_package_version_things", package="firmware", version="other")
        # The first 10,000 buckets are read (AWS's most), the largest 3 kept: the rest of
        # totalCount is other.
        assert top == 50_107 - 7 - 1 - 1
        names = {s["version"] for s in series}
        assert {"v0", "v1", "other"} < names
        assert all(len(n) <= 64 and all(c in LABEL_SAFE for c in n) for n in names)
        # Another package and the job's metrics are untouched.
        assert value(samples, "aws_iot_package_version_things", package="agent", version="0.9")
        assert value(samples, "aws_iot_job_executions", job_id=JOB, state="succeeded") == 3


async def test_a_nan_or_negative_count_costs_its_package_one_interval(
    aws: HostilePackages, caplog: pytest.LogCaptureFixture
) -> None:
    async with Running(cfg(aws)) as run:
        await run.after_rounds(1)
        good = await run.scrape()
        # NaN is not an integer botocore can read; a negative count is no count.
        aws.buckets["firmware"] = b'{"totalCount": NaN, "buckets": [{"keyValue": "x", "count": 1}]}'
        aws.buckets["agent"] = buckets_body(5, **{"0.9": 5})
        aws.statistics["*"] = count_body(-1)
        await run.after_rounds(2)
        samples = await run.scrape()
        # The last good counts of firmware are kept, agent moved on.
        for version in ("1.0.0", "2.0.0"):
            key = {"package": "firmware", "version": version}
            assert value(samples, "aws_iot_package_version_things", **key) == value(
                good, "aws_iot_package_version_things", **key
            )
        assert value(samples, "aws_iot_package_version_things", package="agent", version="0.9") == 5
        malformed = value(
            samples,
            "aws_iot_jobs_exporter_api_requests_total",
            operation="GetBucketsAggregation",
            outcome="malformed",
        )
        assert malformed is not None and malformed >= 2
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 1
        # The bad answers cost nothing else: the poller reads them again next interval.
        aws.buckets["firmware"] = buckets_body(10, **{"2.0.0": 10})
        await run.after_rounds(2)
        samples = await run.scrape()
        assert (
            value(samples, "aws_iot_package_version_things", package="firmware", version="2.0.0")
            == 10
        )
    assert "Traceback" not in caplog.text


async def test_throttling_costs_one_interval_of_that_package(aws: HostilePackages) -> None:
    async with Running(cfg(aws)) as run:
        await run.after_rounds(1)
        aws.buckets["firmware"] = error("ThrottlingException", 400, "Rate exceeded")
        aws.buckets["agent"] = buckets_body(4, **{"1.0": 4})
        await run.after_rounds(2)
        samples = await run.scrape()
        assert (
            value(samples, "aws_iot_package_version_things", package="firmware", version="1.0.0")
            == 6
        )
        assert value(samples, "aws_iot_package_version_things", package="agent", version="1.0") == 4
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 1


async def test_an_index_not_ready_is_said_once_and_backed_off(
    aws: HostilePackages, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    aws.statistics["*"] = error("IndexNotReadyException", 400, "The index is not ready.")
    async with Running(cfg(aws)) as run:
        await run.after_rounds(1)
        samples = await run.scrape()
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 0
        calls = sum(aws.calls.values()) - aws.calls["DescribeJob"]
        describes = aws.calls["DescribeJob"]
        # Job polling goes on every second; the package round waits 1 s, then 2 s, then
        # 4 s: in six seconds at most two tries, where a loop would make six.
        await until(lambda: aws.calls["DescribeJob"] >= describes + 6, what="six describes")
        assert sum(aws.calls.values()) - aws.calls["DescribeJob"] <= calls + 2
        samples = await run.scrape()
        assert value(samples, "aws_iot_job_executions", job_id=JOB, state="succeeded") == 3
        status = run.collector.status()
        assert any("not available" in line for line in status.packages), status.packages
    said = [r for r in caplog.records if "package counts not available" in r.getMessage()]
    assert len(said) == 1
    assert "Traceback" not in caplog.text


async def test_an_index_ready_again_costs_one_interval(aws: HostilePackages) -> None:
    aws.statistics["*"] = error("IndexNotReadyException", 400, "The index is not ready.")
    async with Running(cfg(aws)) as run:
        await run.after_rounds(1)
        samples = await run.scrape()
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 0
        assert run.collector._running["ep"].versions.wait() == 1.0  # type: ignore[union-attr]
        aws.statistics["*"] = count_body(12)  # rebuilt
        await run.after_rounds(1)
        samples = await run.scrape()
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 1
        assert (
            value(samples, "aws_iot_package_version_things", package="firmware", version="2.0.0")
            == 4
        )


async def test_a_denied_listing_counts_the_configured_packages(
    aws: HostilePackages, caplog: pytest.LogCaptureFixture
) -> None:
    listed = {"n": 0}

    def packages(token: str | None) -> tuple[int, bytes] | bytes:
        listed["n"] += 1
        if listed["n"] == 1:
            return b'{"packageSummaries": [{"packageName": "camera"}]}'
        return error("AccessDeniedException", 403, "not allowed iot:ListPackages secret=x")

    aws.packages = packages
    aws.buckets["camera"] = buckets_body(2, **{"7.1": 2})
    async with Running(cfg(aws, discover=True)) as run:
        await run.after_rounds(3)
        samples = await run.scrape()
        # The family stays on: the configured packages and the last listing are counted.
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 1
        for package, version, count in (("firmware", "2.0.0", 4), ("camera", "7.1", 2)):
            assert (
                value(samples, "aws_iot_package_version_things", package=package, version=version)
                == count
            )
        assert value(samples, "aws_iot_job_package_adoption_things", job_id=JOB) == 4
        (line,) = run.collector.status().packages
        assert "discovery: ListPackages denied" in line, line
    said = [r for r in caplog.records if "package discovery failed" in r.getMessage()]
    assert len(said) == 1  # once, not once a round
    assert "Traceback" not in caplog.text


async def test_denied_is_not_available_too(aws: HostilePackages) -> None:
    aws.statistics["*"] = error("AccessDeniedException", 403, "not allowed iot:GetStatistics")
    async with Running(cfg(aws)) as run:
        await run.after_rounds(1)
        samples = await run.scrape()
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 0
        assert value(samples, "aws_iot_job_executions", job_id=JOB, state="succeeded") == 3


async def test_with_shards_one_replica_counts_the_packages(aws: HostilePackages) -> None:
    config = cfg(aws)
    exposed = []
    for index in range(2):
        run = Running(config)
        run.collector = Supervisor(config, run.store, run.telemetry, Shard(index, 2))
        run.server = TestServer(
            build_app(run.store, run.telemetry, lambda: True, packages=run.collector.versions.body)
        )
        async with run:
            await run.after_rounds(1)
            samples = await run.scrape()
            exposed.append(bool(pick_versions(samples)))
    # Every replica would otherwise export the same package series.
    assert sorted(exposed) == [False, True]


def pick_versions(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> list[float]:
    return [v for (m, _), v in samples.items() if m == "aws_iot_package_version_things"]


async def test_a_package_without_its_custom_field_costs_only_itself(
    aws: HostilePackages,
) -> None:
    aws.buckets["firmware"] = error(
        "InvalidAggregationException", 400, "shadow.name.$package.reported.firmware.version"
    )
    async with Running(cfg(aws)) as run:
        await run.after_rounds(1)
        samples = await run.scrape()
        assert not [
            v
            for (m, p), v in samples.items()
            if m == "aws_iot_package_version_things" and dict(p)["package"] == "firmware"
        ]
        assert value(samples, "aws_iot_package_version_things", package="agent", version="0.9")
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 1
        (line,) = run.collector.status().packages
        assert "package firmware: version field not indexed" in line


async def test_a_job_that_names_its_things_counts_them_four_a_call(aws: HostilePackages) -> None:
    things = [f"meter_{i}" for i in range(9)]
    # A name no query can hold (a space, a parenthesis) is skipped, not sent.
    targets = [thing_arn(t) for t in [*things, "bad name)", "x" * 200]]
    aws.describe[JOB] = job_body(JOB, [version_arn("firmware", "2.0.0")], targets)
    on = f"{FIELD.format('firmware')}:2.0.0"
    for n, chunk in enumerate((things[0:4], things[4:8], things[8:]), start=1):
        aws.statistics[f"thingName:({' OR '.join(chunk)}) AND {on}"] = count_body(n)
    async with Running(cfg(aws)) as run:
        await run.after_rounds(2)
        samples = await run.scrape()
        assert value(samples, "aws_iot_job_package_adoption_things", job_id=JOB) == 1 + 2 + 3
        assert value(samples, "aws_iot_job_group_things", job_id=JOB) is None
    named = [q for q in aws.queries if q.startswith("thingName:")]
    assert named and all(q.count(" OR ") <= 3 for q in named)
    assert not [q for q in aws.queries if "bad" in q or "xxxx" in q]


async def test_a_query_the_index_refuses_costs_only_its_job(aws: HostilePackages) -> None:
    aws.describe[JOB] = job_body(JOB, [version_arn("firmware", "2.0.0")], [thing_arn("m1")])
    aws.statistics_default = lambda query: (
        error("InvalidQueryException", 400, "bad query")
        if query.startswith("thingName:")
        else count_body(0)
    )
    async with Running(cfg(aws)) as run:
        await run.after_rounds(2)
        samples = await run.scrape()
        assert value(samples, "aws_iot_jobs_exporter_packages_available", target="ep") == 1
        assert value(samples, "aws_iot_package_version_things", package="agent", version="0.9")
        assert value(samples, "aws_iot_job_package_adoption_things", job_id=JOB) is None
        (line,) = run.collector.status().packages
        assert f"job {JOB}: query refused" in line, line
