"""Sharding: three replicas (Shard(i, 3)) against one replica over the same fleet."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import SCALE_SCENARIO, Child
from bench.report import Table, ratio, verdict

REPLICAS = 3


def series_keys(body: bytes) -> set[bytes]:
    """Every series of an exposition: the sample line without its value."""
    return {
        line.rsplit(b" ", 1)[0] for line in body.split(b"\n") if line and not line.startswith(b"#")
    }


@dataclass(slots=True)
class Sharding:
    jobs: int
    single: set[bytes]
    shards: list[set[bytes]]
    single_raw: dict[str, Any]
    shard_raw: list[dict[str, Any]]


def measure(jobs: int) -> Sharding:
    """All four collectors at once against one simulator without quotas: the question is
    who describes which job, not how fast."""
    from simulator import SimulatorThread

    with (
        tempfile.TemporaryDirectory() as tmp,
        SimulatorThread(SCALE_SCENARIO, jobs=jobs, no_quotas=True) as sim,
    ):
        dumps = [Path(tmp) / f"replica-{i}.prom" for i in range(REPLICAS + 1)]
        layout = [(0, 1)] + [(i, REPLICAS) for i in range(REPLICAS)]
        children = [
            Child(
                "collect",
                url=sim.url,
                rate=1000.0,
                interval=0.1,
                discovery_interval=3600.0,
                cycles=2,
                shard_index=index,
                shard_total=total,
                dump=str(dump),
            )
            for (index, total), dump in zip(layout, dumps, strict=True)
        ]
        try:
            raws = [c.read() for c in children]
        finally:
            for c in children:
                c.close()
        sets = [series_keys(d.read_bytes()) for d in dumps]
    return Sharding(jobs, sets[0], sets[1:], raws[0], raws[1:])


def tables(results: list[Sharding]) -> list[Table]:
    t = Table(
        f"Sharding: {REPLICAS} replicas vs 1 (two cycles each, same fleet)",
        [
            "jobs",
            "replica",
            "jobs tracked",
            "series",
            "DescribeJob calls",
            "share of single",
            "ListJobs calls",
        ],
    )
    checks = Table(
        f"Sharding checks ({REPLICAS} replicas)",
        ["jobs", "union == single", "overlap", "max share deviation from 1/3", "result"],
    )
    for r in results:
        single_calls = r.single_raw["ok_calls"]["DescribeJob"]
        t.add(
            r.jobs,
            "single",
            r.single_raw["tracked"],
            len(r.single),
            f"{single_calls:.0f}",
            "1.000x",
            f"{r.single_raw['ok_calls']['ListJobs']:.0f}",
        )
        deviations = []
        for i, (keys, raw) in enumerate(zip(r.shards, r.shard_raw, strict=True)):
            calls = raw["ok_calls"]["DescribeJob"]
            deviations.append(abs(calls / single_calls - 1 / REPLICAS))
            t.add(
                r.jobs,
                f"shard {i}/{REPLICAS}",
                raw["tracked"],
                len(keys),
                f"{calls:.0f}",
                ratio(calls, single_calls, 3),
                f"{raw['ok_calls']['ListJobs']:.0f}",
            )
        union = set().union(*r.shards)
        overlap = sum(len(a & b) for i, a in enumerate(r.shards) for b in r.shards[i + 1 :])
        equal = union == r.single
        worst = max(deviations)
        checks.add(
            r.jobs,
            "yes" if equal else f"no ({len(union ^ r.single)} differ)",
            overlap,
            f"{worst:.3f}",
            verdict(equal and overlap == 0 and worst < 0.05),
        )
    t.note("Every replica pages through ListJobs itself: discovery is not divided, describes are.")
    checks.note("share deviation: |replica DescribeJob calls / single's - 1/3|; met below 0.05.")
    return [t, checks]
