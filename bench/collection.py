"""Collection: the real Supervisor against the simulator's scale fleet, quotas enforced.

The simulator runs in the parent process (SimulatorThread); each collector runs in a child
process, so its CPU time and resident memory are the exporter's alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import os
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import bench_target, cpu_seconds, reply, rss_bytes
from bench.report import Table, median, ratio, verdict
from exporter import gzipjoin
from exporter.aws import LIST_JOBS_PAGE_SIZE
from exporter.collect.shard import Shard
from exporter.collect.supervisor import Supervisor
from exporter.config import CollectorSettings, Config
from exporter.model import TERMINAL_STATUSES
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore

# Long enough that every generated job (created up to 30 days before the simulator's
# start) is tracked: the benchmark is about 10,000 tracked jobs, not about retention.
RETENTION_SECONDS = 60 * 86400.0
NS = "aws_iot_jobs_exporter"


@dataclass(frozen=True, slots=True)
class CycleSample:
    """Counters read right after a cycle ended."""

    at: float
    cpu: float
    duration: float
    describe_calls: int
    list_calls: int
    throttled: int
    active: int
    discoveries: int


async def _sim_counters(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/_sim/stats", params={"jobs": "0"}) as response:
        data: dict[str, Any] = await response.json()
        return data["requests"]


def active_in_truth(truth: dict[str, Any]) -> int:
    """Jobs a perfect collector describes every cycle: not terminal, or still canceling."""
    return sum(
        1
        for job in truth.values()
        if job["status"] not in TERMINAL_STATUSES or job.get("isConcurrent")
    )


async def _collect(
    url: str,
    rate: float,
    interval: float,
    discovery_interval: float,
    cycles: int,
    shard_index: int,
    shard_total: int,
    dump: str | None,
) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    target = bench_target(url, discover=True)
    settings = CollectorSettings(
        interval=interval,
        discovery_interval=discovery_interval,
        requests_per_second=rate,
        terminal_job_retention=RETENTION_SECONDS,
    )
    config = Config(targets=(target,), collector=settings)
    store = MetricsStore()
    telemetry = SelfMetrics()
    registry = telemetry.registry
    labels = {"target": target.name}

    def gauge(name: str, **extra: str) -> float:
        return registry.get_sample_value(f"{NS}_{name}", {**labels, **extra}) or 0.0

    collector = Supervisor(config, store, telemetry, Shard(shard_index, shard_total))
    samples: list[CycleSample] = []
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        await collector.start()
        # The clients exist (one per IoT operation: about 15 MiB with no job at all, made
        # in the target's task after start returns) and the first cycle has not run yet:
        # the fixed cost is in, and not counted per job.
        # Polled: the supervisor has no event for it, and the bench must not add one.
        while target.name not in collector._package_sources:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        rss_empty = rss_bytes()
        poller = collector.targets[target.name]
        seen, discovered_at, discoveries = 0, 0.0, 0
        while seen < cycles:
            await asyncio.sleep(0.01)
            last = gauge("discovery_last_success_timestamp_seconds")
            if last != discovered_at:
                discovered_at, discoveries = last, discoveries + 1
            if poller.cycles == seen:
                continue
            seen = poller.cycles
            counters = await _sim_counters(session, url)
            samples.append(
                CycleSample(
                    at=time.monotonic() - started,
                    cpu=cpu_seconds(),
                    duration=gauge("collection_duration_seconds"),
                    describe_calls=counters["DescribeJob"]["total"],
                    list_calls=counters["ListJobs"]["total"],
                    throttled=sum(c["throttled"] for c in counters.values()),
                    active=int(gauge("jobs_tracked", state="active")),
                    discoveries=discoveries,
                )
            )
        await collector.stop()
        tracked = len(store)
        rss_collected = rss_bytes()
        # What serving adds, all cached between scrapes: the joined segments, a raw deflate
        # part per segment and those parts joined (the plain body is streamed, never joined).
        segments = store.segments()
        parts = [gzipjoin.compress(segment.data, 1) for segment in segments]
        zipped = [b"".join(part.deflate for part in parts)]
        rss_served = rss_bytes()
        body = b"".join(segment.data for segment in segments)
        if dump:
            await asyncio.to_thread(Path(dump).write_bytes, body)
        own_calls = {
            op: gauge("api_requests_total", operation=op, outcome="ok")
            for op in ("DescribeJob", "ListJobs")
        }
        del zipped, parts
    return {
        "cycles": [dataclasses.asdict(sample) for sample in samples],
        "tracked": tracked,
        "rss_empty": rss_empty,
        "rss_collected": rss_collected,
        "rss_served": rss_served,
        "body_bytes": len(body),
        "ok_calls": own_calls,
    }


def run_collector(**params: Any) -> None:
    reply(asyncio.run(_collect(**params)))


# --- the parent's side ------------------------------------------------------------------


def set_quotas(url: str, rate: float) -> None:
    """The simulator's per-operation quotas, raised with the exporter's budget."""
    quotas = {op: rate for op in ("DescribeJob", "ListJobs", "ListJobExecutionsForJob")}
    body = json.dumps({"quotas": {**quotas, "enabled": True}}).encode()
    request = urllib.request.Request(f"{url}/_sim/faults", data=body, method="POST")
    with urllib.request.urlopen(request) as response:
        response.read()


@dataclass(slots=True)
class Collection:
    jobs: int
    rate: float
    active: int
    listed: int
    interval: float
    discovery_interval: float
    first: CycleSample
    steady: list[CycleSample]
    raw: dict[str, Any]

    @property
    def pages(self) -> int:
        return math.ceil(self.listed / LIST_JOBS_PAGE_SIZE)

    def window(self) -> tuple[int, int, int, int, float]:
        """Steady-state totals: (cycles, calls, ideal calls, throttled, CPU seconds)."""
        a, b = self.first, self.steady[-1]
        cycles = len(self.steady)
        calls = (b.describe_calls - a.describe_calls) + (b.list_calls - a.list_calls)
        ideal = self.active * cycles + self.pages * (b.discoveries - a.discoveries)
        return cycles, calls, ideal, b.throttled - a.throttled, b.cpu - a.cpu

    def periods(self) -> list[float]:
        times = [self.first.at] + [s.at for s in self.steady]
        return [later - earlier for earlier, later in itertools.pairwise(times)]


def measure(jobs: int, rate: float, steady_cycles: int) -> Collection:
    from bench.common import SCALE_SCENARIO, child
    from simulator import SimulatorThread

    with SimulatorThread(SCALE_SCENARIO, jobs=jobs) as sim:
        set_quotas(sim.url, rate)
        expected_active = max(1, round(jobs * 0.1))
        bound = expected_active / rate
        # The interval is shorter than the quota allows, so the quota sets the pace; a
        # discovery every few cycles puts ListJobs pages in the steady window too.
        interval = max(0.1, bound / 2)
        discovery_interval = max(1.0, 2.5 * bound)
        with child(
            "collect",
            url=sim.url,
            rate=rate,
            interval=interval,
            discovery_interval=discovery_interval,
            cycles=1 + steady_cycles,
            shard_index=0,
            shard_total=1,
            dump=None,
        ) as proc:
            raw = proc.read()
        truth = sim.call(lambda s: s.fleet.truth())
    samples = [CycleSample(**c) for c in raw["cycles"]]
    return Collection(
        jobs=jobs,
        rate=rate,
        active=active_in_truth(truth),
        listed=len(truth),
        interval=interval,
        discovery_interval=discovery_interval,
        first=samples[0],
        steady=samples[1:],
        raw=raw,
    )


def tables(results: list[Collection]) -> list[Table]:
    calls = Table(
        "Collection: API calls, throttling and cycle time (simulator quotas enforced)",
        [
            "jobs",
            "active",
            "rate/s",
            "cycles",
            "calls/cycle",
            "ideal/cycle",
            "calls / ideal",
            "throttled",
            "cycle (median)",
            "quota-bound min",
            "cycle / min",
            "CPU s/cycle",
            "CPU ms/call",
        ],
    )
    first = Table(
        "Collection: first cycle (every job pending: one ListJobs sweep, one DescribeJob each)",
        [
            "jobs",
            "calls",
            "ideal",
            "calls / ideal",
            "throttled",
            "time",
            "quota-bound min",
            "time / min",
        ],
    )
    for r in results:
        cycles, made, ideal, throttled, cpu = r.window()
        period = median(r.periods())
        per_cycle_ideal = ideal / cycles
        minimum = per_cycle_ideal / r.rate
        calls.add(
            r.jobs,
            r.active,
            f"{r.rate:g}",
            cycles,
            f"{made / cycles:.1f}",
            f"{per_cycle_ideal:.1f}",
            ratio(made, ideal, 3),
            throttled,
            f"{period:.2f} s",
            f"{minimum:.2f} s",
            ratio(period, minimum, 3),
            f"{cpu / cycles:.2f}",
            f"{1000 * cpu / made:.2f}" if made else "-",
        )
        f = r.first
        first_ideal = r.listed + r.pages
        first_made = f.describe_calls + f.list_calls
        first.add(
            r.jobs,
            first_made,
            first_ideal,
            ratio(first_made, first_ideal, 3),
            f.throttled,
            f"{f.at:.1f} s",
            f"{first_ideal / r.rate:.1f} s",
            ratio(f.at, first_ideal / r.rate, 3),
        )
    rate = results[0].rate
    calls.note(
        f"Quota raised proportionally: the simulator enforces {rate:g} req/s per operation and "
        f"the exporter's requests_per_second is {rate:g} (AWS's default is 10)."
    )
    calls.note(
        "ideal/cycle: active jobs (ground truth) + ceil(listed / 250) ListJobs pages per "
        "discovery; quota-bound min: ideal calls / rate."
    )
    calls.note("CPU: the collector process only (the simulator runs in another process).")
    top = results[-1]
    cycles, made, ideal, throttled, _ = top.window()
    period = median(top.periods())
    minimum = ideal / cycles / top.rate
    targets = Table(
        f"Collection targets at {top.jobs} jobs ({top.active} active)",
        ["measure", "value", "target", "result"],
    )
    targets.add("calls / ideal", ratio(made, ideal, 3), "<=1.05x", verdict(made <= 1.05 * ideal))
    targets.add("throttled (steady state)", throttled, "0", verdict(throttled == 0))
    targets.add(
        "cycle / quota-bound min",
        ratio(period, minimum, 3),
        "<=1.1x",
        verdict(period <= 1.1 * minimum),
    )
    return [first, calls, targets]
