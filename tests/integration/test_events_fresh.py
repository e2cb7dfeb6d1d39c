"""A force-cancel in /metrics within 2 s while 200 active jobs keep their event path busy,
and execution ends in /metrics with describes all but stopped.

The simulator runs 200 active jobs whose devices finish every few seconds, under AWS's
quota with the exporter's default budget (5 describes/s): their execution events alone
ask for more describes than the budget allows, so a describe queue always waits. A job
event is applied when it is read, and its confirming describe goes ahead of that queue.
The simulator publishes what AWS's developer guide shows: `cancellation_in_progress`
with `"status": "CANCELLATION_IN_PROGRESS"`, which /metrics shows as DescribeJob's
`CANCELED`. An execution's end is counted from its event when the job's last describe
cannot hold it yet; the describe that follows only confirms.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from exporter.collect.supervisor import Supervisor
from exporter.config import parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from simulator import start_simulator
from simulator.server import Simulator
from tests.simulator_client import Admin
from tests.support import until

pytestmark = pytest.mark.slow

SCENARIO = """
seed: 5
account_id: "123456789012"
region: us-east-1
# Devices finish within seconds of simulated time: at speed 0.5 (30 simulated seconds a
# second) the 200 rollouts publish execution events all the time.
devices:
  queued_minutes: [0.05, 0.5]
  in_progress_minutes: [0.05, 1.0]
  failure_probability: 0.1
  failure_reasons: {checksum_mismatch: 1}
generate:
  jobs: 200
  groups: 50
  things_per_group: 400
  active_ratio: 1.0
  canceled_ratio: 0.0
  maximum_per_minute: 20
"""


@dataclass
class Fleet:
    sim: Simulator
    collector: Supervisor
    admin: Admin
    body: Callable[[], Awaitable[str]]
    published: list[dict[str, object]]

    async def budget(self, requests_per_second: float) -> None:
        """AWS's quota, and the exporter's budget by a reload."""
        await self.admin._call("POST", "/_sim/faults", {"quotas": {"DescribeJob": 10}})
        config = self.collector.config
        collector = dataclasses.replace(config.collector, requests_per_second=requests_per_second)
        await self.collector.apply(dataclasses.replace(config, collector=collector))


@asynccontextmanager
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """The 200 active jobs, all described, standing still until the test sets a speed."""
    scenario = tmp_path / "fleet.yaml"
    scenario.write_text(SCENARIO)
    sim = await start_simulator(scenario, speed=0, no_quotas=True)
    published: list[dict[str, object]] = []
    sim.fleet.listeners.append(lambda topic, payload: published.append(payload))
    config = parse_config(
        textwrap.dedent(
            f"""
            collector: {{interval: 60s, discovery_interval: 1h, requests_per_second: 500}}
            targets:
              - name: fleet
                region: us-east-1
                endpoint_url: {sim.url}
                jobs: {{discover: {{}}}}
                events: {{sqs_queue_url: '{sim.queue_url}', reason_key: reason}}
            """
        )
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(config, store, telemetry)
    runner = web.AppRunner(build_app(store, telemetry, lambda: collector.ready))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    await collector.start()
    try:
        async with aiohttp.ClientSession() as session:

            async def body() -> str:
                async with session.get(url) as response:
                    return await response.text()

            async def warm() -> bool:
                return bool(collector.ready) and (await body()).count("aws_iot_job_info{") == 200

            await until(warm, within=240, interval=1)
            yield Fleet(sim, collector, Admin(session, sim.url), body, published)
    finally:
        await collector.stop()
        await runner.cleanup()
        await sim.close()


async def test_a_force_cancel_shows_within_2_s_while_200_jobs_publish_events(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path) as f:
        # AWS's quota and the exporter's default budget, then the fleet starts moving.
        await f.budget(5)
        await f.admin.speed(0.5)
        poller = f.collector.targets["fleet"]

        async def busy() -> bool:
            # More jobs marked than 5 describes/s serve in a second: a queue waits.
            return len(poller.events.marks) >= 20

        await until(busy, within=60, interval=0.2)
        victim = next(
            job_id
            for job_id, snapshot in sorted(poller.jobs.items())
            if snapshot is not None
            and snapshot.status == "IN_PROGRESS"
            and job_id not in poller.events.marks
        )
        marked = len(poller.events.marks)
        await f.admin.cancel(victim, force=True)
        series = f'job_id="{victim}",status="CANCELED"}} 1'

        async def canceled() -> bool:
            return series in await f.body()

        await until(canceled, within=2, interval=0.1)
        # The queue it jumped was there all along, and the event said AWS's word.
        assert marked >= 20
        said = {
            p.get("status")
            for p in f.published
            if p.get("jobId") == victim and p.get("eventType") == "JOB"
        }
        assert "CANCELLATION_IN_PROGRESS" in said


EXECUTIONS = re.compile(
    r'^aws_iot_job_executions\{[^}]*job_id="([^"]+)"[^}]*state="([a-z_]+)"\} (\d+)', re.M
)


async def test_execution_ends_show_with_describes_all_but_stopped(tmp_path: Path) -> None:
    """Describes cut to one every 10 s for 200 busy jobs: what /metrics shows of the
    executions that end from now on comes from their events, not from a describe."""
    async with fleet(tmp_path) as f:
        await f.budget(0.1)
        sim_jobs = f.sim.fleet.jobs
        ends: list[tuple[str, str, int]] = []

        def listener(topic: str, payload: dict[str, object]) -> None:
            job_id, status = payload.get("jobId"), payload.get("status")
            if payload.get("eventType") == "JOB_EXECUTION" and isinstance(job_id, str):
                count = sim_jobs[job_id].counts[str(status)]
                ends.append((job_id, str(status).lower(), count))

        f.sim.fleet.listeners.append(listener)
        describes = f.collector.telemetry.api_requests.labels("fleet", "DescribeJob", "ok")
        before = describes._value.get()
        await f.admin.speed(0.5)
        await until(lambda: len(ends) >= 40, within=60, interval=0.2)
        first = ends[:40]

        async def shown() -> bool:
            counts = {(j, s): int(n) for j, s, n in EXECUTIONS.findall(await f.body())}
            return sum(1 for j, s, n in first if counts.get((j, s), 0) >= n) >= 36

        # Each end is counted unless its job's last describe answered in the same second
        # (or a describe of it was in flight): with one describe every 10 s, a few at most.
        await until(shown, within=10, interval=0.2)
        assert describes._value.get() - before <= 5
