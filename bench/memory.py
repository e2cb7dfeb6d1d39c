"""Resident memory per tracked job: a store filled from DescribeJob bodies, in a child."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from bench.common import bench_target, child, load_bodies, reply, rss_bytes, snapshot_of
from bench.report import Table, size, verdict
from exporter import gzipjoin
from exporter.store import MetricsStore

TARGET_PER_JOB = 10 * 1024


def fill_store(fixture: str) -> None:
    """RSS before and after parsing and storing every body, joining and gzipping the body."""
    fetched_at, bodies = load_bodies(fixture)
    target = bench_target()
    store = MetricsStore()
    # Warm the code paths on one job so lazily built state is not counted per job.
    store.put_job(target, "warm-up", snapshot_of(bodies[0], fetched_at))
    store.body()
    store.remove((target.name, "warm-up"))
    gc.collect()
    before = rss_bytes()
    for body in bodies:
        snapshot = snapshot_of(body, fetched_at)
        store.put_job(target, snapshot.job_id, snapshot)
    gc.collect()
    stored = rss_bytes()
    # What the server holds between scrapes: the store's joined segments, one raw deflate
    # part per segment and those parts joined once (the plain body is streamed, never
    # joined into one copy).
    segments = store.segments()
    joined = rss_bytes()
    parts = [gzipjoin.compress(segment.data, 1) for segment in segments]
    zipped = [b"".join(part.deflate for part in parts)]
    served = rss_bytes()
    body = b"".join(segment.data for segment in segments)
    reply(
        {
            "jobs": len(store),
            "before": before,
            "stored": stored,
            "joined": joined,
            "served": served,
            "body": len(body),
            "gzip": sum(len(z) for z in zipped),
        }
    )


def measure(fixture: Path) -> dict[str, Any]:
    with child("fill-store", fixture=str(fixture)) as proc:
        return proc.read()


def table(stores: list[dict[str, Any]], collectors: list[dict[str, Any]]) -> Table:
    t = Table(
        "Memory: resident set per tracked job",
        ["jobs", "what", "RSS added", "per job", "body per job", "target", "result"],
    )
    for m in stores:
        jobs = m["jobs"]
        for what, key in (
            ("store: snapshots + rendered bytes", "stored"),
            ("  + joined body (cached)", "joined"),
            ("  + gzip body (cached)", "served"),
        ):
            added = m[key] - m["before"]
            t.add(
                jobs,
                what,
                size(added),
                size(added / jobs),
                size(m["body"] / jobs),
                "<=10 KiB",
                verdict(added / jobs <= TARGET_PER_JOB),
            )
    for raw in collectors:
        tracked = raw["tracked"]
        for what, key in (
            ("running collector (after cycles)", "rss_collected"),
            ("  + joined and gzip body", "rss_served"),
        ):
            added = raw[key] - raw["rss_empty"]
            t.add(
                tracked,
                what,
                size(added),
                size(added / tracked),
                size(raw["body_bytes"] / tracked),
                "<=10 KiB",
                verdict(added / tracked <= TARGET_PER_JOB),
            )
    t.note("RSS from /proc/self/statm in a child process; 'before' is after imports and, for")
    t.note("the collector, after its aiobotocore client exists, so fixed costs are not per job.")
    return t
