"""Readiness at scale: from `python -m exporter` to /readyz 200, events on, default budget.

The simulator's scale fleet (speed 1, quotas on: AWS's 10 DescribeJob/s) with its job
events in the simulator's queue; the exporter with one target that discovers every job and
reads the queue, every collector setting at its default (5 describes/s, 24 h retention).
/readyz answers 200 once the first cycle described every job discovery kept, so the ideal
is those jobs ÷ the budget: the exporter's `jobs_tracked` at that moment, every state.
The measured time starts before the child is spawned: interpreter start-up, imports and
the listing (40 ListJobs pages at 10,000 jobs, at 5/s) are in it, as they are for a user.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REGION, SCALE_SCENARIO
from bench.process import NS, ExporterProcess, Sample, total
from bench.report import Table
from exporter.aws import LIST_JOBS_PAGE_SIZE
from exporter.config import CollectorSettings
from simulator import SimulatorThread

BUDGET = CollectorSettings().requests_per_second
TARGET = "production"
PROGRESS_EVERY = 30.0


@dataclass(frozen=True, slots=True)
class Result:
    jobs: int
    healthy: float  # seconds to the first /healthz 200: the process is up
    listed: float  # seconds to the end of the first discovery (its jobs tracked)
    ready: float  # seconds to the first /readyz 200
    described: int  # jobs tracked when ready: the first cycle's work
    describes: int  # DescribeJob attempts until ready
    event_describes: int  # of which the event path asked for
    throttled: int
    events: int  # job events received until ready

    @property
    def ideal(self) -> float:
        return self.described / BUDGET


def _config(sim: SimulatorThread) -> dict[str, Any]:
    return {
        "targets": [
            {
                "name": TARGET,
                "region": REGION,
                "endpoint_url": sim.url,
                "jobs": {"discover": {}},
                "events": {"sqs_queue_url": sim.queue_url, "reason_key": "reason"},
            }
        ]
    }


def _progress(jobs: int, at: float, samples: list[Sample]) -> None:
    def tracked(state: str) -> int:
        return int(total(samples, f"{NS}_jobs_tracked", target=TARGET, state=state))

    describes = total(samples, f"{NS}_api_requests_total", operation="DescribeJob")
    events = total(samples, f"{NS}_events_describes_total")
    print(
        f"readiness: {jobs} jobs at {at:.0f} s: pending {tracked('pending')}, "
        f"active {tracked('active')}, frozen {tracked('frozen')}, "
        f"DescribeJob {describes:.0f} (events asked {events:.0f})",
        flush=True,
    )


def _list_calls(samples: list[Sample]) -> float:
    return total(samples, f"{NS}_api_requests_total", operation="ListJobs", outcome="ok")


def measure(jobs: int) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="bench-readiness-") as tmp,
        SimulatorThread(SCALE_SCENARIO, jobs=jobs) as sim,
        ExporterProcess(_config(sim), Path(tmp)) as exporter,
    ):
        # Every job of the fleet is listed (no filter): pages of LIST_JOBS_PAGE_SIZE.
        pages = math.ceil(sim.call(lambda s: len(s.fleet.jobs)) / LIST_JOBS_PAGE_SIZE)
        healthy = exporter.wait_for("/healthz", timeout=60.0, poll=0.05)
        next_progress = exporter.started + PROGRESS_EVERY
        listed: float | None = None
        while True:
            status, _ = exporter.get("/readyz")
            if status == 200:
                ready = time.monotonic() - exporter.started
                break
            # The discovery's timestamp is when it began, and jobs_tracked grows before
            # it ends (ids events named): its last ListJobs page tells when it ended.
            if listed is None and _list_calls(exporter.samples()) >= pages:
                listed = time.monotonic() - exporter.started
            if time.monotonic() >= next_progress:
                at = time.monotonic() - exporter.started
                _progress(jobs, at, exporter.samples())
                next_progress += PROGRESS_EVERY
            if time.monotonic() - exporter.started > 3600:
                raise TimeoutError(f"not ready within an hour:\n{exporter.log_tail()}")
            time.sleep(0.1)
        samples = exporter.samples()
        _progress(jobs, ready, samples)

    def count(name: str, **labels: str) -> int:
        return int(total(samples, f"{NS}_{name}", **labels))

    return Result(
        jobs=jobs,
        healthy=healthy,
        listed=ready if listed is None else listed,
        ready=ready,
        described=count("jobs_tracked", target=TARGET),
        describes=count("api_requests_total", operation="DescribeJob"),
        event_describes=count("events_describes_total", target=TARGET),
        throttled=count("api_requests_total", operation="DescribeJob", outcome="throttled"),
        events=count("events_received_total", target=TARGET),
    )


def run(job_counts: list[int]) -> list[Table]:
    results = []
    for jobs in job_counts:
        result = measure(jobs)
        print(f"readiness: {jobs} jobs ready after {result.ready:.1f} s", flush=True)
        results.append(result)
    table = Table(
        f"Readiness: start to /readyz 200, scale fleet with events, budget {BUDGET:g}/s, "
        "defaults",
        ["jobs", "to describe", "up s", "listed s", "ready s", "ideal s", "ready / ideal",
         "DescribeJob", "from events", "throttled", "events", "target"],
    )  # fmt: skip
    for r in results:
        ratio = r.ready / r.ideal
        table.add(
            f"{r.jobs:,}",
            f"{r.described:,}",
            f"{r.healthy:.1f}",
            f"{r.listed:.1f}",
            f"{r.ready:.1f}",
            f"{r.ideal:.1f}",
            f"{ratio:.2f}x",
            f"{r.describes:,}",
            f"{r.event_describes:,}",
            str(r.throttled),
            f"{r.events:,}",
            "<= 1.2x: " + ("met" if ratio <= 1.2 else "MISSED"),
        )
    table.note(
        "to describe: jobs tracked at readiness (kept after 24 h retention); ideal: that "
        f"÷ {BUDGET:g}/s; up: first /healthz 200; listed: first discovery's last page"
    )
    table.note(
        "DescribeJob: every attempt until ready; from events: describes the event path "
        "asked for (first, event or unknown kind); events: job events received"
    )
    return [table]
