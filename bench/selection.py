"""What a metric family selection saves: render time and body size of a fleet, per selection.

Run with `python -m bench.selection [--jobs N] [--targets-per-job K]`. Jobs come from the
scale scenario's DescribeJob bodies; each job's `targets` is replaced by K thing ARNs, as
for jobs that target things one by one (the case `aws_iot_job_target_info` grows with).
Every row is compared with rendering every family in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import time
from typing import Any

from bench.common import (
    SCALE_SCENARIO,
    bench_target,
    fetch_describe_bodies,
    snapshot_of,
)
from bench.report import Table, median, ms, ratio, size
from exporter.model import JobSnapshot
from exporter.store import MetricsStore
from exporter.table import FAMILIES, Family, select_families

SELECTIONS: tuple[tuple[str, tuple[Family, ...]], ...] = (
    ("every family", FAMILIES),
    ("deny aws_iot_job_target_info", select_families(deny=["aws_iot_job_target_info"])),
    (
        "allow info, status, executions",
        select_families(allow=["aws_iot_job_info", "aws_iot_job_status", "aws_iot_job_executions"]),
    ),
)


def with_things(body: Any, count: int) -> Any:
    body = copy.deepcopy(body)
    arn = body["job"]["jobArn"].split(":job/")[0]
    job_id = body["job"]["jobId"]
    body["job"]["targets"] = [f"{arn}:thing/{job_id}-thing-{i}" for i in range(count)]
    return body


def render_all(snapshots: list[JobSnapshot], families: tuple[Family, ...]) -> tuple[float, int]:
    target = bench_target()
    store = MetricsStore(families)
    started = time.perf_counter()
    for snapshot in snapshots:
        store.put_job(target, snapshot.job_id, snapshot)
    body = store.body()
    return time.perf_counter() - started, len(body)


def reselect(snapshots: list[JobSnapshot], families: tuple[Family, ...]) -> float:
    """The reload path: a store of every family switched to `families`."""
    target = bench_target()
    store = MetricsStore()
    for snapshot in snapshots:
        store.put_job(target, snapshot.job_id, snapshot)
    store.body()
    started = time.perf_counter()
    asyncio.run(store.select(families, {target.name: target}))
    store.body()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.selection")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--targets-per-job", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from simulator import SimulatorThread

    with SimulatorThread(SCALE_SCENARIO, jobs=args.jobs, no_quotas=True) as sim:
        bodies = fetch_describe_bodies(sim.url, args.jobs)
    fetched_at = time.time()
    snapshots = [snapshot_of(with_things(b, args.targets_per_job), fetched_at) for b in bodies]

    table = Table(
        f"Metric family selection: {args.jobs} jobs, {args.targets_per_job} thing targets each",
        ["selection", "families", "render all (median)", "vs every", "body", "vs every",
         "reload to it"],
    )  # fmt: skip
    base_time = base_size = 0.0
    for name, families in SELECTIONS:
        runs = [render_all(snapshots, families) for _ in range(args.repeat)]
        seconds, body = median([r[0] for r in runs]), runs[0][1]
        if not base_time:
            base_time, base_size = seconds, body
        reload = "-" if families is FAMILIES else ms(reselect(snapshots, families))
        table.add(
            name, len(families), ms(seconds), ratio(seconds, base_time), size(body),
            ratio(body, base_size), reload,
        )  # fmt: skip
    table.notes.append(
        "render all: put_job of every job and one join of the body, the cost of a first "
        "collection; reload to it: MetricsStore.select from every family, as a reload does."
    )
    print(table.render(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
