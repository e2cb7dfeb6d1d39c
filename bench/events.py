"""Data age at scrape: polling only against event-driven, under AWS's default quota.

The simulator's scale fleet runs in real time (one simulated second per second) with
about a tenth of its jobs active. Every terminal execution change the fleet makes (the
changes AWS publishes events for) is timed from the moment it happens to the moment the
exporter's store, which /metrics serves as is, shows it. Both modes run in one process,
one after the other, against the same fleet size, with the simulator enforcing 10
DescribeJob calls a second and the exporter spending its default budget of 5.

The first describe of every job is not measured: it runs with the quota lifted, as an
exporter that has been running for a while would have done it long ago.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REGION, bench_target
from bench.report import Table
from exporter.collect.supervisor import Supervisor
from exporter.config import CollectorSettings, Config, Events
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from simulator import SimulatorThread

QUOTA = 10.0  # AWS's default DescribeJob quota per account and region
# The scale fleet's shape: a tenth of the jobs active, most of them continuous jobs whose
# devices are done (active, but quiet, as most active jobs are), and a few rollouts that
# keep going for hours: 3 devices a minute out of 600 each, every device done within a
# minute, so each rollout makes about 3 terminal changes a minute.
SCENARIO = """
seed: 11
speed: 1
devices:
  queued_minutes: [0.05, 0.3]
  in_progress_minutes: [0.1, 0.6]
  reject_probability: 0.02
  failure_probability: 0.05
  failure_reasons: {checksum_mismatch: 3, download_timeout: 1}
groups:
  - {name: rollout, things: 600}
generate:
  jobs: 1000
  groups: 200
  things_per_group: 25
  active_ratio: 0.1
  canceled_ratio: 0.15
  maximum_per_minute: 25
jobs:
"""


def scenario_text(jobs: int) -> str:
    """The fleet for `jobs` jobs, with one rollout per 200 jobs (at least two)."""
    rollouts = "".join(
        f"  - {{id: rollout-{i}, targets: [group:rollout], created_minutes: -5,"
        " rollout: {maximum_per_minute: 3}}\n"
        for i in range(max(2, jobs // 200))
    )
    return SCENARIO + rollouts


TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED")
STATE_FIELD = {s: s.lower() for s in TERMINAL}


@dataclass(slots=True)
class Change:
    job_id: str
    state: str
    count: int  # the job's count of `state` right after the change
    at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class Result:
    jobs: int
    mode: str
    changes: int
    ages: list[float]
    unseen: int
    describes_per_minute: float
    window: float

    def percentile(self, q: float) -> float | None:
        if not self.ages:
            return None
        ordered = sorted(self.ages)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _describe_calls(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_sim/stats?jobs=0", timeout=30) as response:
        requests = json.loads(response.read())["requests"].get("DescribeJob", {})
    return int(requests.get("total", 0))


async def _measure(jobs: int, events: bool, window: float) -> Result:
    # The simulator accepts any signature; these keep botocore from looking further.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    changes: collections.deque[Change] = collections.deque()
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        scenario = Path(tmp) / "events.yaml"
        scenario.write_text(scenario_text(jobs))
        return await _measure_fleet(scenario, jobs, events, window, changes)


async def _measure_fleet(
    scenario: Path, jobs: int, events: bool, window: float, changes: collections.deque[Change]
) -> Result:
    with SimulatorThread(scenario, jobs=jobs, speed=1 / 60, no_quotas=True) as sim:

        def listener(topic: str, payload: dict[str, Any]) -> None:
            # Runs in the simulator's thread, right after the fleet changed the counts.
            state = payload.get("status")
            if payload.get("eventType") == "JOB_EXECUTION" and state in STATE_FIELD:
                job = sim.simulator.fleet.jobs.get(payload["jobId"])
                if job is not None:
                    count = job.counts[state]
                    changes.append(Change(payload["jobId"], state, count, time.monotonic()))

        sim.call(lambda s: s.fleet.listeners.append(listener))
        target = bench_target(sim.url, discover=True)
        if events:
            target = dataclasses.replace(
                target, events=Events(sqs_queue_url=sim.queue_url, reason_key="reason")
            )
        settings = CollectorSettings(
            interval=60.0,
            discovery_interval=300.0,
            requests_per_second=1000.0,  # lifted for the first describes, then the default
            terminal_job_retention=60 * 86400.0,
        )
        store, telemetry = MetricsStore(), SelfMetrics()
        collector = Supervisor(Config(targets=(target,), collector=settings), store, telemetry)
        await collector.start()
        try:
            target_collector = collector.targets["production"]
            # Polled: the store has no event to wait on, and this is the warm-up only.
            while True:
                tracked = target_collector.jobs
                if len(tracked) >= jobs * 0.9 and all(s is not None for s in tracked.values()):
                    break
                await asyncio.sleep(0.2)
            # From now on, AWS's quota and the exporter's default budget.
            _post(f"{sim.url}/_sim/faults", {"quotas": {"DescribeJob": QUOTA, "enabled": True}})
            collector.budgets.set_rate(CollectorSettings().requests_per_second)
            changes.clear()
            calls_before = _describe_calls(sim.url)
            started = time.monotonic()
            pending: dict[tuple[str, str], list[Change]] = {}
            ages: list[float] = []
            measured = 0
            while time.monotonic() - started < window:
                while changes:
                    change = changes.popleft()
                    pending.setdefault((change.job_id, change.state), []).append(change)
                    measured += 1
                now = time.monotonic()
                for key in list(pending):
                    job_id, state = key
                    snapshot = store.get(("production", job_id))
                    counts = dict(snapshot.executions or ()) if snapshot is not None else {}
                    shown = counts.get(STATE_FIELD[state], 0)
                    waiting = pending[key]
                    while waiting and shown >= waiting[0].count:
                        ages.append(now - waiting.pop(0).at)
                    if not waiting:
                        del pending[key]
                await asyncio.sleep(0.05)
            minutes = (time.monotonic() - started) / 60.0
            calls = (_describe_calls(sim.url) - calls_before) / minutes
            unseen = sum(len(v) for v in pending.values())
        finally:
            await collector.stop()
    return Result(jobs, "events" if events else "polling", measured, ages, unseen, calls, window)


def run(job_counts: list[int], window: float) -> list[Table]:
    results = []
    for jobs in job_counts:
        for events in (False, True):
            result = asyncio.run(_measure(jobs, events, window))
            results.append(result)
            print(
                f"events: {jobs} jobs {result.mode}: {len(result.ages)} changes seen, "
                f"{result.unseen} not yet",
                flush=True,
            )
    table = Table(
        f"Data age at scrape, {window:g} s per run, AWS's quota of {QUOTA:g}/s enforced, "
        "default budget 5/s, interval 60 s, reconcile 5 min",
        ["jobs", "mode", "changes", "p50 s", "p99 s", "max s", "not shown by the end",
         "DescribeJob/min", "target"],
    )  # fmt: skip
    by_size: dict[int, dict[str, Result]] = {}
    for r in results:
        by_size.setdefault(r.jobs, {})[r.mode] = r
    for jobs, modes in by_size.items():
        for mode in ("polling", "events"):
            r = modes[mode]
            p50, p99 = r.percentile(0.5), r.percentile(0.99)
            target = ""
            if mode == "events":
                fewer = r.describes_per_minute < modes["polling"].describes_per_minute
                ok = p99 is not None and p99 <= 5.0 and r.unseen == 0
                target = (
                    f"p99 <= 5 s: {'met' if ok else 'not met'}; "
                    f"fewer calls: {'yes' if fewer else 'no'}"
                )
            table.add(
                *[
                    f"{jobs:,}",
                    mode,
                    str(r.changes),
                    "-" if p50 is None else f"{p50:.2f}",
                    "-" if p99 is None else f"{p99:.2f}",
                    "-" if not r.ages else f"{max(r.ages):.2f}",
                    str(r.unseen),
                    f"{r.describes_per_minute:.0f}",
                    target,
                ]
            )
    return [table]


__all__ = ["REGION", "run"]
