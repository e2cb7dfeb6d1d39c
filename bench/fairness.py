"""Fair shares of one account's budget: an event storm on one target, polling on another.

Two targets of one exporter on one simulator endpoint without an STS endpoint, so one
account and one DescribeJob bucket (aws.py `_account_key`), `requests_per_second` 20:
- t1 follows 100 active jobs (`storm-*`) through job events;
- t2 polls 400 active jobs (`poll-*`) every 10 s, 40 describes/s wanted: it always has
  more work than the budget.
The storm: failure events for each of t1's jobs every 2 s, published into the simulator's
queue as its IoT rule would. Each job may be described once per `min_describe_interval`
(5 s), so t1 wants 20 describes/s: the whole budget, as in issue 18's D3.

Each mode runs a fresh simulator and a fresh exporter (`python -m exporter`); rates are
the exporter's own `api_requests_total{operation="DescribeJob"}` per target over a window
that starts after /readyz and a warm-up, checked against the simulator's request count.
t2's fair share is half the budget while t1 has as much work as t2, the whole budget while
t1 has none (max-min fairness: an idle target's share goes to the others).
"""

from __future__ import annotations

import functools
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REGION
from bench.process import NS, ExporterProcess, Sample, total
from bench.report import Table
from simulator import SimulatorThread
from simulator.server import Simulator

STORM_JOBS = 100
POLL_JOBS = 400
INTERVAL = 10.0
EVENTS_PER_JOB_PER_SECOND = 0.5
TICK = 0.1  # seconds between two batches of published events

MODES = {
    "storm": "t1 event-driven, failure events on its 100 jobs",
    "quiet": "t1 event-driven, no events (its jobs described once)",
    "polling": "t1 polling its 100 jobs every 10 s (10/s wanted)",
}

# Time frozen (speed 0): nothing moves but what the bench publishes. Continuous jobs stay
# IN_PROGRESS, so every one is active and described every cycle.
_SCENARIO_HEAD = """
seed: 5
speed: 0
groups:
  - {name: fleet, things: 2}
jobs:
"""


def scenario_text() -> str:
    jobs = [f"storm-{i:03d}" for i in range(STORM_JOBS)]
    jobs += [f"poll-{i:03d}" for i in range(POLL_JOBS)]
    return _SCENARIO_HEAD + "".join(
        f"  - {{id: {job}, targets: [group:fleet], target_selection: CONTINUOUS,"
        " created_minutes: -5}\n"
        for job in jobs
    )


@dataclass(frozen=True, slots=True)
class Run:
    mode: str
    rate: float
    window: float
    t1: float  # DescribeJob/s
    t2: float
    t1_events: float  # describes events asked for, per second
    simulator: float  # DescribeJob/s the simulator answered, both targets
    published: float  # events/s put in the queue
    t2_cycle: float  # seconds, t2's last cycle

    @property
    def t2_fair_share(self) -> float:
        # Max-min fairness: t1's unused share goes to t2. In `quiet` t1 has no work.
        return self.rate if self.mode == "quiet" else self.rate / 2


def _config(sim: SimulatorThread, mode: str, rate: float) -> dict[str, Any]:
    def target(name: str, prefix: str) -> dict[str, Any]:
        return {
            "name": name,
            "region": REGION,
            "endpoint_url": sim.url,
            "jobs": {"discover": {"include": [f"^{prefix}-"]}},
        }

    t1 = target("t1", "storm")
    if mode != "polling":
        t1["events"] = {"sqs_queue_url": sim.queue_url, "reason_key": "reason"}
    return {
        "collector": {"interval": f"{INTERVAL:g}s", "requests_per_second": rate},
        "targets": [t1, target("t2", "poll")],
    }


def storm_batch(
    sequence: int, count: int, jobs: list[str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """`count` execution failure events, round robin over `jobs` (t1's by default), as AWS
    publishes them."""
    ids = jobs or [f"storm-{n:03d}" for n in range(STORM_JOBS)]
    out = []
    for n in range(sequence, sequence + count):
        job_id = ids[n % len(ids)]
        payload = {
            "eventType": "JOB_EXECUTION",
            "eventId": str(uuid.uuid4()),
            "timestamp": int(time.time()),
            "operation": "failed",
            "jobId": job_id,
            "thingArn": f"arn:aws:iot:{REGION}:123456789012:thing/fleet-{n % 2:05d}",
            "status": "FAILED",
            "statusDetails": {"reason": "checksum_mismatch"},
        }
        out.append((f"$aws/events/jobExecution/{job_id}/failed", payload))
    return out


def publish(batch: list[tuple[str, dict[str, Any]]], simulator: Simulator) -> None:
    for topic, payload in batch:
        simulator.events.publish(topic, payload)


def _sim_describes(sim: SimulatorThread) -> int:
    return int(sim.call(lambda s: s.stats.requests.get("DescribeJob", {}).get("total", 0)))


def measure(mode: str, rate: float, window: float, warmup: float) -> Run:
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as tmp:
        scenario = Path(tmp) / "fairness.yaml"
        scenario.write_text(scenario_text())
        with (
            SimulatorThread(scenario, no_quotas=True) as sim,
            ExporterProcess(_config(sim, mode, rate), Path(tmp)) as exporter,
        ):
            exporter.wait_for("/readyz", timeout=300.0)
            storm = mode == "storm"
            per_tick = EVENTS_PER_JOB_PER_SECOND * STORM_JOBS * TICK
            sequence, published_before, owed = 0, 0, 0.0
            before: list[Sample] = []
            sim_before = 0
            started = time.monotonic()
            measuring_from = started + warmup
            end = measuring_from + window
            next_tick = started
            while True:
                now = time.monotonic()
                if not before and now >= measuring_from:
                    before, sim_before = exporter.samples(), _sim_describes(sim)
                    measured_at, published_before = time.monotonic(), sequence
                if now >= end:
                    break
                if storm:
                    owed += per_tick
                    batch = storm_batch(sequence, int(owed))
                    owed -= len(batch)
                    sequence += len(batch)
                    sim.call(functools.partial(publish, batch))
                next_tick += TICK
                time.sleep(max(0.0, next_tick - time.monotonic()))
            after, sim_after = exporter.samples(), _sim_describes(sim)
            elapsed = time.monotonic() - measured_at

    def rate_of(name: str, target: str, operation: str | None = None) -> float:
        labels = {"target": target} | ({"operation": operation} if operation else {})
        return (total(after, name, **labels) - total(before, name, **labels)) / elapsed

    return Run(
        mode=mode,
        rate=rate,
        window=elapsed,
        t1=rate_of(f"{NS}_api_requests_total", "t1", "DescribeJob"),
        t2=rate_of(f"{NS}_api_requests_total", "t2", "DescribeJob"),
        t1_events=rate_of(f"{NS}_events_describes_total", "t1"),
        simulator=(sim_after - sim_before) / elapsed,
        published=(sequence - published_before) / elapsed,
        t2_cycle=total(after, f"{NS}_collection_duration_seconds", target="t2"),
    )


def run(rate: float, window: float, warmup: float) -> list[Table]:
    runs = []
    for mode in MODES:
        r = measure(mode, rate, window, warmup)
        print(
            f"fairness: {mode}: t1 {r.t1:.2f}/s, t2 {r.t2:.2f}/s, simulator {r.simulator:.2f}/s",
            flush=True,
        )
        runs.append(r)
    table = Table(
        f"Fair shares of one account's DescribeJob budget ({rate:g}/s): t1 100 jobs, "
        f"t2 polling {POLL_JOBS} active jobs every {INTERVAL:g} s, {window:g} s window",
        ["mode", "t1 /s", "t1 from events /s", "t2 /s", "both /s", "simulator /s",
         "events published /s", "t2 cycle s", "t2 fair share /s", "t2 / fair share",
         "target"],
    )  # fmt: skip
    for r in runs:
        share = r.t2 / r.t2_fair_share
        table.add(
            r.mode,
            f"{r.t1:.2f}",
            f"{r.t1_events:.2f}",
            f"{r.t2:.2f}",
            f"{r.t1 + r.t2:.2f}",
            f"{r.simulator:.2f}",
            f"{r.published:.0f}",
            f"{r.t2_cycle:.1f}",
            f"{r.t2_fair_share:g}",
            f"{share:.0%}",
            (">= 90%: " + ("met" if share >= 0.9 else "MISSED")) if r.mode == "storm" else "",
        )
    for mode, text in MODES.items():
        table.note(f"{mode}: {text}")
    table.note(
        "t2's fair share is half the budget while t1 has work, the whole budget while it "
        "has none; DescribeJob counts every attempt (exporter's api_requests_total)"
    )
    return [table]
