"""The triangle: freshness, fairness and readiness measured in one run, against targets.

Each of the three was once measured alone, and each fix moved one and broke another.
Here one scenario measures them one after the other on the same exporter, at each fleet
size, event-driven and (the baseline) polling only:

1. **Readiness**: the simulator's scale fleet (a tenth of the jobs active, one long rollout
   per 200 jobs) with AWS's quotas enforced from the start (10 calls/s per operation), the
   exporter with every collector setting at its default (5 describes/s, sweeps on at 2/s),
   events on. Time from start to ready, against jobs to describe ÷ 5/s.
2. **Freshness**, for `--triangle-window` seconds right after: five active jobs are
   force-canceled at once, and every job event the fleet publishes (completions,
   cancellations) is timed to the moment the store (what /metrics serves, byte for byte)
   shows the job's new status: job-level data age. Every terminal execution the fleet makes
   is timed to the moment the job's count of that state shows it: execution-level data age.
   A change made in the window is followed for up to a minute after it; one not shown by
   then is counted as not shown (and fails its target).
3. **Fairness**, for `--triangle-storm` seconds: a reload adds a co-tenant target on the
   same account (so the same DescribeJob bucket) that polls 600 jobs, more than half the
   budget, while an event storm (a failure event per job every 2 s on 100 of the first
   target's jobs, 50 events/s) makes the first target want the whole budget. The
   co-tenant's fair share is half the budget; the target is 90 % of it.

The scrape figures (plain against a static body of the same bytes, gzip with nothing
changed against a constant pre-compressed body) come from the scrape section's servers on
the same fleet, in the same run. The simulator runs in real time in the bench's process,
like the exporter; both share the machine's cores.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import scrape
from bench.common import bench_target
from bench.events import scenario_text
from bench.fairness import publish, storm_batch
from bench.report import Table
from exporter.collect.supervisor import Supervisor
from exporter.config import CollectorSettings, Config, Events, Jobs
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from simulator import SimulatorThread

BUDGET = CollectorSettings().requests_per_second
CANCELED = 5
COTENANT_JOBS = 600
STORM_JOBS = 100
STORM_EVENTS_PER_SECOND = 50.0
# The targets (the issue that set them is in docs/performance.md, "The triangle").
JOB_AGE_P99 = 2.0
EXECUTION_AGE_P99 = {1000: 5.0, 10000: 10.0}
FAIR_SHARE = 0.9
READINESS = 1.2
PLAIN_SCRAPE = 1.0
GZIP_SCRAPE = 1.5
# A job event's operation → the DescribeJob status the store must show.
JOB_STATUS = {
    "completed": "COMPLETED",
    "cancellation_in_progress": "CANCELED",
    "canceled": "CANCELED",
}
EXECUTION_STATE = {
    s: s.lower() for s in ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED")
}
TARGET = "production"
# Seconds a change made in the freshness window is followed after the window ends.
GRACE = 60.0


@dataclass(slots=True)
class Change:
    job_id: str
    # The job's status to show (job level), or the state whose count must reach `count`.
    status: str | None
    state: str | None
    count: int
    at: float


@dataclass(slots=True)
class Result:
    jobs: int
    mode: str
    to_describe: int = 0
    ready: float = 0.0
    job_ages: list[float] = dataclasses.field(default_factory=list)
    job_unseen: int = 0
    execution_ages: list[float] = dataclasses.field(default_factory=list)
    execution_unseen: int = 0
    cotenant: float = 0.0
    first_target: float = 0.0
    # Per class, the bucket bound under which 99 % of event describes waited.
    waits: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ideal(self) -> float:
        return self.to_describe / BUDGET

    @property
    def fair_share(self) -> float:
        """Max-min fair: half the budget while the first target wants at least half, else
        what the first target leaves."""
        return max(BUDGET / 2, BUDGET - self.first_target)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _describes(telemetry: SelfMetrics, target: str) -> float:
    total = 0.0
    for metric in telemetry.api_requests.collect():
        for sample in metric.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels.get("target") == target
                and labels.get("operation") == "DescribeJob"
            ):
                total += sample.value
    return total


async def _measure(jobs: int, events: bool, window: float, storm_window: float) -> Result:
    # The simulator accepts any signature; these keep botocore from looking further.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    result = Result(jobs, "events" if events else "polling")
    with tempfile.TemporaryDirectory(prefix="bench-triangle-") as tmp:
        path = Path(tmp) / "triangle.yaml"
        path.write_text(scenario_text(jobs))
        # AWS's quotas from the start: 10 calls/s per operation.
        with SimulatorThread(path, jobs=jobs, speed=1 / 60) as sim:
            await _run(sim, result, events, window, storm_window)
    return result


async def _run(
    sim: SimulatorThread, result: Result, events: bool, window: float, storm_window: float
) -> None:
    changes: collections.deque[Change] = collections.deque()
    measuring = False

    def listener(topic: str, payload: dict[str, Any]) -> None:
        # The simulator's thread, right after the fleet changed.
        if not measuring:
            return
        job_id = payload.get("jobId")
        job = sim.simulator.fleet.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            return
        now = time.monotonic()
        if payload.get("eventType") == "JOB":
            status = JOB_STATUS.get(str(payload.get("operation")))
            if status is not None:
                changes.append(Change(job.job_id, status, None, 0, now))
            return
        state = EXECUTION_STATE.get(str(payload.get("status")))
        if state is not None:
            changes.append(Change(job.job_id, None, state, job.counts[payload["status"]], now))

    sim.call(lambda s: s.fleet.listeners.append(listener))
    target = bench_target(sim.url, discover=True)
    if events:
        target = dataclasses.replace(
            target, events=Events(sqs_queue_url=sim.queue_url, reason_key="reason")
        )
    settings = CollectorSettings()
    config = Config(targets=(target,), collector=settings)
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(config, store, telemetry)
    started = time.monotonic()
    await collector.start()
    try:
        while not collector.ready:  # noqa: ASYNC110 (readiness has no event to wait on)
            await asyncio.sleep(0.2)
        result.ready = time.monotonic() - started
        poller = collector.targets[TARGET]
        result.to_describe = len(poller.state.jobs)
        print(
            f"triangle: {result.jobs} jobs {result.mode}: ready in {result.ready:.1f} s "
            f"({result.to_describe} jobs)",
            flush=True,
        )
        # Freshness.
        measuring = True
        active = sorted(
            job_id
            for job_id, snapshot in poller.jobs.items()
            if snapshot is not None
            and snapshot.status == "IN_PROGRESS"
            and not job_id.startswith("rollout-")
        )
        victims = active[:: max(1, len(active) // CANCELED)][:CANCELED]
        for job_id in victims:
            sim.call(functools.partial(lambda s, j: s.fleet.cancel_job(j, force=True), j=job_id))
        pending: list[Change] = []
        began = time.monotonic()
        # Changes made in the window are followed for GRACE seconds more: one made in its
        # last second is not "not shown" for want of time.
        while time.monotonic() - began < window + GRACE and (
            pending or changes or time.monotonic() - began < window
        ):
            if measuring and time.monotonic() - began >= window:
                measuring = False
            while changes:
                pending.append(changes.popleft())
            now = time.monotonic()
            kept = []
            for change in pending:
                snapshot = store.get((TARGET, change.job_id))
                if change.status is not None:
                    done = snapshot is not None and snapshot.status == change.status
                    if done:
                        result.job_ages.append(now - change.at)
                else:
                    counts = dict(snapshot.executions or ()) if snapshot is not None else {}
                    done = counts.get(change.state or "", 0) >= change.count
                    if done:
                        result.execution_ages.append(now - change.at)
                if not done:
                    kept.append(change)
            pending = kept
            await asyncio.sleep(0.05)
        measuring = False
        result.waits = _wait_p99(telemetry)
        result.job_unseen = sum(1 for c in pending if c.status is not None)
        result.execution_unseen = sum(1 for c in pending if c.status is None)
        # Fairness: a co-tenant on the same account, an event storm on the first target.
        ids = sorted(poller.state.jobs)
        cotenant = dataclasses.replace(
            bench_target(sim.url), name="cotenant", jobs=Jobs(ids=tuple(ids[:COTENANT_JOBS]))
        )
        await collector.apply(Config(targets=(target, cotenant), collector=settings))
        storm_jobs = [j for j in ids if j in set(active)][:STORM_JOBS] or ids[:STORM_JOBS]
        warmup = time.monotonic() + 10.0
        before: tuple[float, float] | None = None
        sequence, owed, tick = 0, 0.0, 0.1
        began = time.monotonic()
        while True:
            now = time.monotonic()
            if before is None and now >= warmup:
                before = (_describes(telemetry, "cotenant"), _describes(telemetry, TARGET))
                measured_from = now
            if before is not None and now - measured_from >= storm_window:
                break
            if events:
                owed += STORM_EVENTS_PER_SECOND * tick
                count = int(owed)
                owed -= count
                batch = storm_batch(sequence, count, storm_jobs)
                sim.call(functools.partial(publish, batch))
                sequence += count
            await asyncio.sleep(tick)
        elapsed = time.monotonic() - measured_from
        assert before is not None
        result.cotenant = (_describes(telemetry, "cotenant") - before[0]) / elapsed
        result.first_target = (_describes(telemetry, TARGET) - before[1]) / elapsed
    finally:
        await collector.stop()


def _wait_p99(telemetry: SelfMetrics) -> dict[str, str]:
    """The events_describe_wait_seconds bucket that holds the 99th percentile, per class."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for metric in telemetry.events_describe_wait.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("target") == TARGET:
                le = float(sample.labels["le"])
                buckets.setdefault(sample.labels["class"], []).append((le, sample.value))
    out = {}
    for kind, rows in buckets.items():
        rows.sort()
        total = rows[-1][1] if rows else 0.0
        if total:
            bound = next(le for le, count in rows if count >= 0.99 * total)
            out[kind] = f"<= {bound:g} s of {int(total)}"
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def run(
    job_counts: list[int],
    window: float,
    storm_window: float,
    fixtures: dict[int, Path],
    scrapes: int,
) -> list[Table]:
    results: list[Result] = []
    for jobs in job_counts:
        for events in (True, False):
            results.append(asyncio.run(_measure(jobs, events, window, storm_window)))
    scrape_ratios: dict[int, tuple[float, float]] = {}
    for jobs in job_counts:
        if jobs in fixtures:
            runs, _ = scrape.measure(jobs, fixtures[jobs], scrapes, 0)
            by = {(r.server, r.encoding): r.median for r in runs}
            plain = by[("store", "identity")] / by[("static body", "identity")]
            gzip = by[("store", "gzip")] / by[("static body", "gzip")]
            scrape_ratios[jobs] = (plain, gzip)
    table = Table(
        f"The triangle: AWS's quotas enforced (10/s), default settings ({BUDGET:g} describes/s), "
        f"sweeps on; freshness over {window:g} s, fairness over {storm_window:g} s",
        ["jobs", "mode", "job-level age p50 / p99 / max s", "execution-level age p50 / p99 s",
         "co-tenant ÷ fair share", "ready s (ideal)", "ready ÷ ideal", "scrape plain / gzip",
         "targets"],
    )  # fmt: skip
    for r in results:
        jp99 = percentile(r.job_ages, 0.99)
        ep99 = percentile(r.execution_ages, 0.99)
        share = r.cotenant / r.fair_share
        readiness = r.ready / r.ideal if r.ideal else float("inf")
        ratios = scrape_ratios.get(r.jobs)
        targets = ""
        if r.mode == "events":
            exec_target = EXECUTION_AGE_P99.get(r.jobs, 10.0)
            checks = [
                f"job p99 <= {JOB_AGE_P99:g} s: "
                + _met(jp99 is not None and jp99 <= JOB_AGE_P99 and not r.job_unseen),
                f"execution p99 <= {exec_target:g} s: "
                + _met(ep99 is not None and ep99 <= exec_target and not r.execution_unseen),
                f"fair share >= 90%: {_met(share >= FAIR_SHARE)}",
                f"ready <= {READINESS:g}x: {_met(readiness <= READINESS)}",
            ]
            if ratios is not None:
                checks.append(
                    f"scrape plain <= {PLAIN_SCRAPE:g}x, gzip <= {GZIP_SCRAPE:g}x: "
                    + _met(ratios[0] <= PLAIN_SCRAPE and ratios[1] <= GZIP_SCRAPE)
                )
            targets = "; ".join(checks)

        def age(values: list[float], *qs: float) -> str:
            return " / ".join(
                "-" if (v := percentile(values, q)) is None else f"{v:.2f}" for q in qs
            )

        table.add(
            f"{r.jobs:,}",
            r.mode,
            f"{age(r.job_ages, 0.5, 0.99)} / "
            + (f"{max(r.job_ages):.2f}" if r.job_ages else "-")
            + (f" ({r.job_unseen} not shown)" if r.job_unseen else "")
            + f" [{len(r.job_ages)}]",
            f"{age(r.execution_ages, 0.5, 0.99)}"
            + (f" ({r.execution_unseen} not shown)" if r.execution_unseen else "")
            + f" [{len(r.execution_ages)}]",
            f"{r.cotenant:.2f}/s ÷ {r.fair_share:g} = {share:.0%}",
            f"{r.ready:.1f} ({r.ideal:.1f})",
            f"{readiness:.2f}x",
            "-" if ratios is None else f"{ratios[0]:.2f}x / {ratios[1]:.2f}x",
            targets,
        )
    waits = Table(
        "Event describes: mark to answer, 99th percentile (events_describe_wait_seconds)",
        ["jobs", "class", "p99 within"],
    )
    for r in results:
        for kind, text in sorted(r.waits.items()):
            waits.add(f"{r.jobs:,}", kind, text)
    return [table, waits]
