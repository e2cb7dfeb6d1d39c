"""`python -m bench`: scrape path, collection, memory, sharding, events, fair shares, readiness,
execution sweeps, package versions, and the triangle (freshness, fairness, readiness and
scrape in one run)."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench import (
    collection,
    events,
    fairness,
    memory,
    packages,
    readiness,
    scrape,
    sharding,
    sweeps,
    triangle,
)
from bench.common import SCALE_SCENARIO, fetch_describe_bodies, write_fixture
from bench.report import Table

SECTIONS = (
    "scrape",
    "collection",
    "memory",
    "sharding",
    "events",
    "fairness",
    "readiness",
    "sweeps",
    "triangle",
    "packages",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--jobs", default="1000,10000", help="job counts, comma-separated")
    p.add_argument("--scrapes", type=int, default=100, help="timed scrapes per server/encoding")
    p.add_argument(
        "--baseline-scrapes",
        type=int,
        default=8,
        help="timed scrapes of prometheus_client (seconds each at 10,000 jobs)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="requests/s per operation, enforced by the simulator and spent by the exporter "
        "(AWS's default quota is 10; raised so cycles of 1,000 active jobs take 10 s)",
    )
    p.add_argument("--cycles", type=int, default=4, help="steady-state collection cycles")
    p.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    p.add_argument(
        "--events-jobs", default="100,1000,10000", help="fleet sizes of the events section"
    )
    p.add_argument(
        "--events-window", type=float, default=120.0, help="seconds measured per events run"
    )
    p.add_argument(
        "--fairness-rate",
        type=float,
        default=20.0,
        help="requests_per_second of the fairness section's two targets (issue 18: 20)",
    )
    p.add_argument(
        "--fairness-window", type=float, default=60.0, help="seconds measured per fairness run"
    )
    p.add_argument(
        "--fairness-warmup",
        type=float,
        default=15.0,
        help="seconds between /readyz and the fairness window (storm already on)",
    )
    p.add_argument(
        "--readiness-jobs",
        default="1000,10000",
        help="fleet sizes of the readiness section (10,000 takes 5 to 7 minutes)",
    )
    p.add_argument(
        "--sweeps-budget",
        type=int,
        default=4_000_000,
        help="execution sweeps on the virtual clock: summaries read (and job visits) per "
        "fleet before its figures are sampled instead of simulated in full",
    )
    p.add_argument(
        "--triangle-jobs", default="1000,10000", help="fleet sizes of the triangle section"
    )
    p.add_argument(
        "--triangle-window",
        type=float,
        default=120.0,
        help="seconds of the triangle's freshness phase per run",
    )
    p.add_argument(
        "--triangle-storm",
        type=float,
        default=60.0,
        help="seconds of the triangle's fairness phase per run",
    )
    p.add_argument(
        "--quick", action="store_true", help="1,000 jobs, fewer scrapes and cycles (< 2 min)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.scrapes, args.baseline_scrapes, args.cycles = "1000", 30, 4, 3
        args.events_jobs, args.events_window = "100,1000", 60.0
        args.fairness_window, args.readiness_jobs = 30.0, "1000"
        args.sweeps_budget = 1_000_000
        args.triangle_jobs, args.triangle_window, args.triangle_storm = "1000", 60.0, 30.0
    args.job_counts = sorted(int(n) for n in args.jobs.split(","))
    args.sections = [s for s in args.only.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kib = 0
    return (
        f"{model}, {os.cpu_count()} CPUs, {mem_kib / 1048576:.1f} GiB RAM, "
        f"Python {platform.python_version()} ({sys.platform})"
    )


def show(tables: list[Table]) -> None:
    for t in tables:
        print(t.render(), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    print(f"machine: {machine()}")
    print(f"jobs: {args.job_counts}, sections: {', '.join(args.sections)}\n", flush=True)
    all_tables: list[Table] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        fixtures: dict[int, Path] = {}
        if {"scrape", "memory", "triangle"} & set(args.sections):
            from simulator import SimulatorThread

            sizes = set(args.job_counts)
            if "triangle" in args.sections:
                sizes |= {int(n) for n in args.triangle_jobs.split(",")}
            top = max(sizes)
            # DescribeJob bodies of the scale fleet, fetched once and shared by every server.
            with SimulatorThread(SCALE_SCENARIO, jobs=top, no_quotas=True) as sim:
                bodies = fetch_describe_bodies(sim.url, top)
            fixtures = {n: write_fixture(Path(tmp), n, bodies) for n in sorted(sizes)}
            del bodies

        if "scrape" in args.sections:
            runs: list[scrape.Run] = []
            checks: list[str] = []
            for n in args.job_counts:
                r, check = scrape.measure(n, fixtures[n], args.scrapes, args.baseline_scrapes)
                runs += r
                checks.append(check)
            tables = scrape.tables(runs, checks)
            show(tables)
            all_tables += tables

        collected: list[collection.Collection] = []
        if "collection" in args.sections:
            collected = [collection.measure(n, args.rate, args.cycles) for n in args.job_counts]
            tables = collection.tables(collected)
            show(tables)
            all_tables += tables

        if "memory" in args.sections:
            stores = [memory.measure(fixtures[n]) for n in args.job_counts]
            tables = [memory.table(stores, [c.raw for c in collected])]
            show(tables)
            all_tables += tables

        if "events" in args.sections:
            sizes = sorted(int(n) for n in args.events_jobs.split(","))
            tables = events.run(sizes, args.events_window)
            show(tables)
            all_tables += tables

        if "fairness" in args.sections:
            tables = fairness.run(args.fairness_rate, args.fairness_window, args.fairness_warmup)
            show(tables)
            all_tables += tables

        if "readiness" in args.sections:
            sizes = sorted(int(n) for n in args.readiness_jobs.split(","))
            tables = readiness.run(sizes)
            show(tables)
            all_tables += tables

        if "sweeps" in args.sections:
            tables = sweeps.run(args.sweeps_budget)
            show(tables)
            all_tables += tables

        if "triangle" in args.sections:
            sizes = sorted(int(n) for n in args.triangle_jobs.split(","))
            tables = triangle.run(
                sizes, args.triangle_window, args.triangle_storm, fixtures, args.scrapes
            )
            show(tables)
            all_tables += tables

        if "packages" in args.sections:
            tables = packages.run()
            show(tables)
            all_tables += tables

        if "sharding" in args.sections:
            tables = sharding.tables([sharding.measure(max(args.job_counts))])
            show(tables)
            all_tables += tables
    print(f"total: {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
