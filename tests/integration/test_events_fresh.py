"""A force-cancel in /metrics within 2 s while 200 active jobs keep their event path busy.

The simulator runs 200 active jobs whose devices finish every few seconds, under AWS's
quota with the exporter's default budget (5 describes/s): their execution events alone
ask for more describes than the budget allows, so a describe queue always waits. A job
event is applied when it is read, and its confirming describe goes ahead of that queue.
The simulator publishes what AWS's developer guide shows: `cancellation_in_progress`
with `"status": "CANCELLATION_IN_PROGRESS"`, which /metrics shows as DescribeJob's
`CANCELED`.
"""

from __future__ import annotations

import dataclasses
import textwrap
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


async def test_a_force_cancel_shows_within_2_s_while_200_jobs_publish_events(
    tmp_path: Path,
) -> None:
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
            admin = Admin(session, sim.url)

            async def body() -> str:
                async with session.get(url) as response:
                    return await response.text()

            async def warm() -> bool:
                return bool(collector.ready) and (await body()).count("aws_iot_job_info{") == 200

            await until(warm, within=240, interval=1)
            # AWS's quota and the exporter's default budget, then the fleet starts moving.
            await admin._call("POST", "/_sim/faults", {"quotas": {"DescribeJob": 10}})
            await collector.apply(
                dataclasses.replace(
                    config, collector=dataclasses.replace(config.collector, requests_per_second=5)
                )
            )
            await admin.speed(0.5)
            poller = collector.targets["fleet"]

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
            await admin.cancel(victim, force=True)
            series = f'job_id="{victim}",status="CANCELED"}} 1'

            async def canceled() -> bool:
                return series in await body()

            await until(canceled, within=2, interval=0.1)
            # The queue it jumped was there all along, and the event said AWS's word.
            assert marked >= 20
            said = {
                p.get("status")
                for p in published
                if p.get("jobId") == victim and p.get("eventType") == "JOB"
            }
            assert "CANCELLATION_IN_PROGRESS" in said
    finally:
        await collector.stop()
        await runner.cleanup()
        await sim.close()
