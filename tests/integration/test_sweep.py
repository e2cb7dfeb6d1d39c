"""Execution sweeps end to end: the simulator's silent devices in the age buckets, the stuck
counts and on the status page by name, over real HTTP and botocore.

The oracle is the simulator's own fleet (its executions in memory), not the listing the
exporter reads.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Config, parse_config
from exporter.server import OPENMETRICS_TYPE
from simulator import Simulator, start_simulator
from tests.integration.test_status import Served, serve
from tests.support import until

__all__ = ["serve"]  # the fixture, used by name

SCENARIO = """\
seed: 7
speed: 0
account_id: "123456789012"
region: us-east-1
devices:
  queued_minutes: [0.2, 1]
  in_progress_minutes: [1, 3]
groups:
  - {name: fleet, things: 300}
  - {name: calm, things: 20}
jobs:
  - id: rollout-stuck
    targets: [group:fleet]
    created_minutes: -240
    rollout: {maximum_per_minute: 100}
    devices: {stuck_probability: 0.1}
  - id: rollout-timeout
    targets: [group:calm]
    created_minutes: -240
    timeout_minutes: 500
    devices: {stuck_probability: 0.5}
"""

HOUR = 3600.0
IDENTITY = ("target", "region", "account_id", "job_id")


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    path = tmp_path / "stuck.yaml"
    path.write_text(SCENARIO)
    s = await start_simulator(path, speed=0, no_quotas=True)
    try:
        yield s
    finally:
        await s.close()


def config(url: str) -> Config:
    return parse_config(
        "collector:\n  interval: 1s\n  request_timeout: 2s\n  max_attempts: 1\n"
        "  executions: {requests_per_second: 50, stuck_list_size: 3}\n"
        f"targets:\n  - name: sim\n    region: us-east-1\n    endpoint_url: {url}\n"
        "    jobs: {discover: {}}\n"
    )


async def get(url: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, await r.text(), r.headers.get("Content-Type", "")


def samples(text: str, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                own = {k: v for k, v in s.labels.items() if k not in labels and k not in IDENTITY}
                out[tuple(sorted(own.items()))] = s.value
    return out


def truth(sim: Simulator, job_id: str) -> tuple[dict[str, float], float]:
    """The in-progress executions of a job with their startedAt, from the fleet itself, and
    the simulator's time as its answers' Date header gives it (whole seconds): the exporter
    measures ages on the server's clock."""
    now = float(math.floor(sim.clock.now()))
    job = sim.fleet.jobs[job_id]
    running = {
        e.thing: e.started_at
        for e in sim.fleet.executions(job)
        if e.status == "IN_PROGRESS" and e.started_at is not None
    }
    return running, now


async def test_a_silent_device_shows_in_the_age_buckets_the_stuck_count_and_by_name(
    sim: Simulator, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    served = await serve(config(sim.url))
    url, collector = served.url, served.collector

    def swept() -> bool:
        jobs = collector.targets["sim"].snapshots()
        return all(
            (s := jobs.get(j)) is not None and s.sweep is not None
            for j in ("rollout-stuck", "rollout-timeout")
        )

    await until(swept, 30, "both jobs swept once")
    body = (await get(f"{url}/metrics"))[1]
    running, now = truth(sim, "rollout-stuck")
    stuck = {thing for thing, started in running.items() if now - started > HOUR}
    assert stuck, "the scenario has no silent device"
    got = samples(body, "aws_iot_job_executions_stuck", job_id="rollout-stuck")
    assert got[(("state", "in_progress"),)] == len(stuck)
    assert got[(("state", "queued"),)] == 0
    ages = samples(
        body, "aws_iot_job_executions_by_age", job_id="rollout-stuck", state="in_progress"
    )
    assert ages[(("max_age", "+Inf"),)] == len(running)
    assert ages[(("max_age", "+Inf"),)] - ages[(("max_age", "3600"),)] == len(stuck)
    oldest = samples(
        body,
        "aws_iot_job_executions_oldest_timestamp_seconds",
        job_id="rollout-stuck",
        state="in_progress",
    )
    assert oldest[()] == pytest.approx(min(running.values()), abs=0.001)

    # The job with an in-progress timeout of 500 minutes: its devices have been silent
    # for about four hours, under its own threshold, so none is stuck.
    timeout_running, _ = truth(sim, "rollout-timeout")
    assert timeout_running
    threshold = samples(
        body,
        "aws_iot_job_executions_stuck_threshold_seconds",
        job_id="rollout-timeout",
        state="in_progress",
    )
    assert threshold[()] == 500 * 60
    got = samples(body, "aws_iot_job_executions_stuck", job_id="rollout-timeout")
    assert got[(("state", "in_progress"),)] == 0

    # No series carries a thing name, whatever its label.
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            assert not set(s.labels.values()) & set(running), s

    # The status page names the oldest stuck devices, in JSON and in HTML.
    status, text, kind = await get(f"{url}/status", Accept="application/json")
    assert status == 200 and kind.startswith("application/json")
    (target,) = json.loads(text)["targets"]
    (job,) = [j for j in target["stuck"] if j["job_id"] == "rollout-stuck"]
    assert job["stuck"]["in_progress"] == len(stuck)
    names = [r["thing_name"] for r in job["oldest"]]
    assert len(names) == 3 and set(names) <= stuck
    expected = sorted(stuck, key=lambda t: (running[t], t))[:3]
    assert names == expected
    assert all(r["console_url"].startswith("https://us-east-1.console.aws") for r in job["oldest"])
    html = (await get(f"{url}/status", Accept="text/html"))[1]
    assert all(name in html for name in names)

    # OpenMetrics carries the thing behind a time-in-state bucket as an exemplar only.
    status, om, kind = await get(f"{url}/metrics", Accept=OPENMETRICS_TYPE)
    assert kind.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(om)}
    queued = families["aws_iot_job_execution_queued_duration_seconds"]
    exemplars = [s.exemplar for s in queued.samples if s.exemplar is not None]
    assert exemplars and {e.labels["thing_name"] for e in exemplars} <= set(running) | {
        thing for thing in _all_things(sim)
    }
    assert families["aws_iot_jobs_exporter_sweep_pages"].samples[0].value > 0


def _all_things(sim: Simulator) -> set[str]:
    return {e.thing for job in sim.fleet.jobs.values() for e in sim.fleet.executions(job)}
