"""A failure spike in a fleet of 1,000 active jobs, under AWS's quota, in /metrics in seconds.

The simulator holds 1,000 active jobs and enforces AWS's default DescribeJob quota (10/s);
the exporter spends its default budget (5/s), so polling alone would need 200 s to go
round the fleet once. A new job then fails on most of its devices at once: its events
bring it to /metrics, counts and failure reasons, within seconds. How many seconds is
bench's figure (`python -m bench --only triangle`); this test asserts the path: the job is
shown far sooner than a polling round could show it.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

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
seed: 3
account_id: "123456789012"
region: us-east-1
# The 1,000 jobs are busy for an hour: their devices are all queued or in progress, so
# the fleet publishes few events while the spike happens.
devices:
  queued_minutes: [20, 40]
  in_progress_minutes: [30, 60]
groups:
  - {name: spike, things: 200}
generate:
  jobs: 1000
  groups: 100
  things_per_group: 10
  active_ratio: 1.0
  canceled_ratio: 0.0
  maximum_per_minute: 100
"""

SPIKE = {
    "id": "firmware-spike",
    "targets": ["group:spike"],
    "devices": {
        "queued_minutes": [0.01, 0.02],
        "in_progress_minutes": [0.05, 0.1],
        "failure_probability": 0.8,
        "failure_reasons": {"checksum_mismatch": 3, "low_battery": 1},
    },
}


async def test_failure_spike_reaches_metrics_within_seconds_under_quota(tmp_path: Path) -> None:
    scenario = tmp_path / "fleet.yaml"
    scenario.write_text(SCENARIO)
    sim = await start_simulator(scenario, speed=0, no_quotas=True)
    text = textwrap.dedent(
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
    config = parse_config(text)
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(config, store, telemetry)
    app = build_app(store, telemetry, lambda: collector.ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    await collector.start()
    try:
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, sim.url)

            async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                async with session.get(url) as response:
                    body = await response.text()
                return {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(body)
                    for s in f.samples
                }

            def value(series: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
                return sum(
                    v for (n, pairs), v in series.items()
                    if n == name and labels.items() <= dict(pairs).items()
                )  # fmt: skip

            # Every job described once, with the quota lifted (an exporter running for a
            # while did that long ago) ...
            async def warm() -> bool:
                series = await scrape()
                return value(series, "aws_iot_job_info") == 1000 and bool(collector.ready)

            # Half a minute of CPU alone; beside other tests on shared cores, minutes. Each
            # look parses the exposition of 1,000 jobs, so it looks once a second.
            await until(warm, within=300, interval=1)
            # ... then AWS's quota and the exporter's default budget, as a reload sets it.
            await admin._call("POST", "/_sim/faults", {"quotas": {"DescribeJob": 10}})
            default = dataclasses.replace(
                config, collector=dataclasses.replace(config.collector, requests_per_second=5)
            )
            await collector.apply(default)
            before = (await admin.stats())["requests"]["DescribeJob"]

            await admin.create_job(SPIKE)
            await admin.advance(2)  # every device of the new job has finished
            truth = (await admin.job("firmware-spike"))["executions"]
            published = (await admin._call("GET", "/_sim/events"))["execution_failures"]
            failures = published["firmware-spike"]
            assert truth["failed"] > 100  # a spike, not a trickle

            async def shown() -> bool:
                series = await scrape()
                failed = value(
                    series, "aws_iot_job_executions", job_id="firmware-spike", state="failed"
                )
                counted = value(
                    series, "aws_iot_job_execution_events_total", job_id="firmware-spike"
                )
                return failed == truth["failed"] and counted == sum(failures.values())

            # Alone on two cores this takes about 2 s; beside other tests on shared cores,
            # three times that. A polling round takes 200 s and discovery runs hourly, so
            # anything within 30 s came by the events. Each look parses the whole
            # exposition in this process, beside the exporter: five a second.
            await until(shown, within=30, interval=0.2)
            series = await scrape()
            reasons = {
                dict(pairs)["reason"]
                for (n, pairs), _ in series.items()
                if n == "aws_iot_job_execution_events_total"
            }
            assert reasons == {"checksum_mismatch", "low_battery"}
            after = (await admin.stats())["requests"]["DescribeJob"]
            assert after.get("throttled", 0) == before.get("throttled", 0)  # under the quota
    finally:
        await collector.stop()
        await runner.cleanup()
        await sim.close()
