"""End to end, against the simulator's own count: a fleet of 1,000 devices upgrading a
package shows, within one package interval of each change, devices per version that add
up to the fleet and the job's adoption equal to what the simulator says is on the version.

The oracle is GET /_sim/packages (the simulator's truth, as its index answers it now), read
directly, never the exporter's answers. The simulated clock stands still between steps,
so each step's truth holds while the exporter counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.supervisor import Supervisor
from exporter.config import parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from simulator import Simulator, start_simulator
from tests.simulator_client import Admin
from tests.support import SCENARIOS, until

PACKAGE = "meter-firmware"
JOB = "meter-firmware-1-1-0"
VERSION = "1.1.0"
FLEET = 1000


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = await start_simulator(SCENARIOS / "packages.yaml", speed=0, no_quotas=True)
    try:
        yield s
    finally:
        await s.close()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def pick(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        pairs: v
        for (metric, pairs), v in samples.items()
        if metric == name and all(dict(pairs).get(k) == w for k, w in labels.items())
    }


class Exporter:
    def __init__(self, url: str, jobs: tuple[str, ...] = (JOB,)) -> None:
        config = parse_config(
            "collector: {interval: 1s, request_timeout: 2s, "
            "executions: {requests_per_second: 0}, "
            "packages: {interval: 1s, requests_per_second: 50}}\n"
            f"targets:\n  - name: sim\n    region: us-east-1\n    endpoint_url: {url}\n"
            f"    jobs: {{ids: [{', '.join(jobs)}]}}\n"
            "    packages: {discover: true}\n"
        )
        self.telemetry, self.store = SelfMetrics(), MetricsStore()
        self.collector = Supervisor(config, self.store, self.telemetry)
        self.server = TestServer(
            build_app(
                self.store, self.telemetry, lambda: True, packages=self.collector.versions.body
            )
        )

    def rounds(self) -> int:
        versions = self.collector._running["sim"].versions
        assert versions is not None
        return versions.state.rounds

    async def scrape(self) -> Samples:
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

    async def after_a_full_round(self) -> Samples:
        """The scrape after a package round that started after now: one interval at most."""
        start = self.rounds()
        await until(lambda: self.rounds() >= start + 2, within=60, what="a full package round")
        return await self.scrape()


@pytest.fixture
async def exporter(sim: Simulator) -> AsyncIterator[Exporter]:
    e = Exporter(sim.url)
    await e.server.start_server()
    await e.collector.start()
    try:
        yield e
    finally:
        await e.collector.stop()
        await e.server.close()


async def truth(admin: Admin) -> Any:
    return await admin._call("GET", "/_sim/packages")


def check(samples: Samples, now: Any) -> None:
    """The exporter's numbers against the simulator's count, as its index answers now."""
    indexed = now["packages"][PACKAGE]["indexed"]
    versions = {
        dict(pairs)["version"]: v
        for pairs, v in pick(samples, "aws_iot_package_version_things", package=PACKAGE).items()
    }
    unreported = pick(samples, "aws_iot_package_things_unreported", package=PACKAGE)
    # Every version of this fleet fits within max_versions_per_package: none is "other".
    assert versions.pop("other") == 0
    assert versions == {v: float(n) for v, n in indexed["versions"].items()}
    assert list(unreported.values()) == [float(indexed["unreported"])]
    assert sum(versions.values()) + indexed["unreported"] == FLEET
    destination = now["jobs"][JOB]["destinations"][0]
    adoption = pick(samples, "aws_iot_job_package_adoption_things", job_id=JOB, version=VERSION)
    assert list(adoption.values()) == [float(destination["indexed"]["on_version"])]
    for group, on in destination["indexed"]["groups"].items():
        series = pick(
            samples, "aws_iot_job_group_package_version_things", job_id=JOB, thing_group=group
        )
        assert list(series.values()) == [float(on)], group


async def test_an_upgrading_fleet_matches_the_simulators_count(
    sim: Simulator, admin: Admin, exporter: Exporter
) -> None:
    seen_adoption = []
    for _ in range(6):
        samples = await exporter.after_a_full_round()
        now = await truth(admin)
        check(samples, now)
        seen_adoption.append(now["jobs"][JOB]["destinations"][0]["indexed"]["on_version"])
        # The next change: two simulated minutes of the rollout (and the lab's reports).
        await admin.advance(2)
    # The rollout moved while the exporter followed it.
    assert seen_adoption[0] < seen_adoption[-1]
    assert seen_adoption[-1] > 100
    # Both packages were discovered; the other package counted too.
    samples = await exporter.scrape()
    # The job's adoption joins its execution counts: the same identity labels.
    key = ("target", "region", "account_id", "job_id")
    (adopted,) = pick(samples, "aws_iot_job_package_adoption_things", job_id=JOB)
    (succeeded,) = pick(samples, "aws_iot_job_executions", job_id=JOB, state="succeeded")
    assert [dict(adopted)[k] for k in key] == [dict(succeeded)[k] for k in key]
    assert pick(samples, "aws_iot_package_version_things", package="modem-driver")
    assert pick(samples, "aws_iot_jobs_exporter_packages_available", target="sim")


async def test_an_index_that_rebuilds_is_said_and_counts_come_back(
    sim: Simulator, admin: Admin, exporter: Exporter
) -> None:
    await exporter.after_a_full_round()
    await admin._call("POST", "/_sim/indexing", {"status": "REBUILDING"})
    samples = await exporter.after_a_full_round()
    available = pick(samples, "aws_iot_jobs_exporter_packages_available", target="sim")
    assert list(available.values()) == [0.0]
    # The last good counts stay while the index cannot answer.
    assert pick(samples, "aws_iot_package_version_things", package=PACKAGE)
    await admin._call("POST", "/_sim/indexing", {"status": "ACTIVE"})
    samples = await exporter.after_a_full_round()
    check(samples, await truth(admin))
    available = pick(samples, "aws_iot_jobs_exporter_packages_available", target="sim")
    assert list(available.values()) == [1.0]


async def test_the_simulators_hostile_index_costs_only_its_round(
    sim: Simulator, admin: Admin, exporter: Exporter
) -> None:
    await exporter.after_a_full_round()
    await admin.faults(
        {"faults": {"hostile_index": {"ratio": 1, "operations": ["GetBucketsAggregation"]}}}
    )
    samples = await exporter.after_a_full_round()
    versions = pick(samples, "aws_iot_package_version_things", package=PACKAGE)
    # Over 20,000 buckets of every bad byte: at most max_versions_per_package + other,
    # each a label of catalog characters, each count a count.
    assert 0 < len(versions) <= 11
    for pairs, v in versions.items():
        version = dict(pairs)["version"]
        assert 0 < len(version) <= 64 and v >= 0
        assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in version), version
    # The job's metrics and the other calls went on.
    assert pick(samples, "aws_iot_job_executions", job_id=JOB)
    assert pick(samples, "aws_iot_job_package_adoption_things", job_id=JOB)
    await admin.faults({"clear": True})
    check(await exporter.after_a_full_round(), await truth(admin))


# Nine lab meters named one by one, not through a group: three queries of at most four.
LAB_JOB = "meter-firmware-lab"
LAB_THINGS = [f"lab-{n:05d}" for n in range(9)]


async def test_a_job_that_names_its_things_counts_them_for_its_adoption(
    sim: Simulator, admin: Admin
) -> None:
    await admin.create_job(
        {
            "id": LAB_JOB,
            "targets": [f"thing:{t}" for t in LAB_THINGS],
            "destination_package_versions": [
                f"arn:aws:iot:us-east-1:123456789012:package/{PACKAGE}/version/{VERSION}"
            ],
            "devices": {"queued_minutes": [0.1, 1], "in_progress_minutes": [0.5, 3]},
        }
    )
    e = Exporter(sim.url, jobs=(JOB, LAB_JOB))
    await e.server.start_server()
    await e.collector.start()
    try:
        seen = []
        for _ in range(4):
            samples = await e.after_a_full_round()
            now = await truth(admin)
            if (await admin.job(LAB_JOB))["status"] != "IN_PROGRESS":
                break  # a completed job has no adoption series
            on = now["jobs"][LAB_JOB]["destinations"][0]["indexed"]["on_version"]
            adoption = pick(
                samples, "aws_iot_job_package_adoption_things", job_id=LAB_JOB, version=VERSION
            )
            assert list(adoption.values()) == [float(on)]
            # A job of things has no thing group series.
            assert not pick(samples, "aws_iot_job_group_things", job_id=LAB_JOB)
            seen.append(on)
            await admin.advance(1)
        assert len(seen) >= 2 and seen[-1] > seen[0], seen
    finally:
        await e.collector.stop()
        await e.server.close()
