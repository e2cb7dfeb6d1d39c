"""Package versions at scale: calls per interval against the ideal, round time, scrape cost.

A fleet of D devices in ten thing groups runs in the simulator with P packages, each
installed on most devices in one of three versions, and one active job that upgrades
every group to a new version of the first package. The real `VersionPoller`
(exporter/collect/versions.py) counts it through the real `PackageSource` and botocore, against
the simulator's fleet index (quotas off, so the figures are the exporter's and the
index's, not a budget's). The ideal is one aggregation per package per interval: the
size of the fleet costs no call. On top of it the exporter makes one GetStatistics for
the index's size and two per thing group of a job that installs a version.

The scrape cost is the package families' share of /metrics: their bytes, the time to
render them after a round changed them (once per round, never per scrape), and the time
a scrape spends on them when they did not change (a cached bytes object).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Table, ms, size
from exporter.aws import JobSource, PackageSource
from exporter.collect.versions import VersionPoller, VersionStore
from exporter.config import CollectorSettings, PackageSettings, parse_config
from exporter.selfmetrics import SelfMetrics

DEVICES = (100, 1_000, 10_000)
PACKAGES = (10, 100)
GROUPS = 10
JOB = "upgrade-p0"


def scenario(devices: int, packages: int) -> str:
    per_group = devices // GROUPS
    lines = [
        "seed: 1",
        "speed: 1",
        'account_id: "123456789012"',
        "region: us-east-1",
        "groups:",
        *(f"  - {{name: g{g}, things: {per_group}}}" for g in range(GROUPS)),
        "packages:",
    ]
    for p in range(packages):
        lines += [
            f"  - name: p{p}",
            "    versions: [{name: '1.0'}, {name: '1.1'}, {name: '1.2'}]",
            "    installed:",
            *(
                f"      - {{group: g{g}, versions: {{'1.0': 0.5, '1.1': 0.3, '1.2': 0.1}}}}"
                for g in range(GROUPS)
            ),
        ]
    groups = ", ".join(f"group:g{g}" for g in range(GROUPS))
    lines += [
        "jobs:",
        f"  - id: {JOB}",
        f"    targets: [{groups}]",
        "    target_selection: SNAPSHOT",
        "    created_minutes: 0",
        "    destination_package_versions:",
        "      - arn:aws:iot:us-east-1:123456789012:package/p0/version/1.2",
    ]
    return "\n".join(lines) + "\n"


async def _measure(url: str, packages: int) -> dict[str, Any]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    config = parse_config(
        "collector: {packages: {requests_per_second: 100000, max_packages: 1000}}\n"
        f"targets:\n  - name: bench\n    region: us-east-1\n    endpoint_url: {url}\n"
        f"    jobs: {{ids: [{JOB}]}}\n"
        f"    packages: {{names: [{', '.join(f'p{p}' for p in range(packages))}]}}\n"
    )
    target, settings = config.targets[0], config.collector
    telemetry = SelfMetrics()
    store = VersionStore()
    async with JobSource(target, CollectorSettings(), telemetry) as source:
        job = await source.describe_job(JOB)
        calls = PackageSource(source, settings.packages.requests_per_second)
        poller = VersionPoller(
            target, settings.packages, lambda: calls, lambda: {JOB: job}, store, telemetry
        )
        before = telemetry.api_totals("bench")[0]
        started = time.perf_counter()
        await poller.collect_once()
        seconds = time.perf_counter() - started
        made = telemetry.api_totals("bench")[0] - before
    # A round that changed the counts renders them once; a scrape without a change
    # takes the cached bytes.
    state = poller.state
    account = "123456789012"
    started = time.perf_counter()
    for i in range(20):
        # As after a round whose counts changed: the target's series rendered and joined.
        counts, at = state.counts["p0"]
        state.counts["p0"] = (counts, at + i + 1)
        store.put(target, account, state)
        body = store.body()
    render = (time.perf_counter() - started) / 20
    started = time.perf_counter()
    for _ in range(1000):
        store.body()
    cached = (time.perf_counter() - started) / 1000
    return {
        "calls": made,
        "seconds": seconds,
        "bytes": len(body),
        "series": body.count(b"\n") - 2 * body.count(b"# TYPE"),
        "render": render,
        "cached": cached,
        "available": state.available,
    }


def measure(devices: int, packages: int) -> dict[str, Any]:
    from simulator import SimulatorThread

    with tempfile.TemporaryDirectory(prefix="bench-packages-") as tmp:
        path = Path(tmp) / "fleet.yaml"
        path.write_text(scenario(devices, packages))
        with SimulatorThread(path, no_quotas=True) as sim:
            return asyncio.run(_measure(sim.url, packages))


def run() -> list[Table]:
    default = PackageSettings()
    calls = Table(
        "Package versions: calls per interval (one round) against the ideal",
        ("devices", "packages", "calls", "ideal", "of which jobs", "round", "at 1/s"),
    )
    scrape = Table(
        "Package versions: their share of a scrape",
        ("devices", "packages", "series", "bytes", "render on change", "scrape, unchanged"),
    )
    for packages in PACKAGES:
        for devices in DEVICES:
            r = measure(devices, packages)
            if not r["available"]:
                raise RuntimeError(f"{devices} devices, {packages} packages: not available")
            job_calls = 2 * GROUPS
            # The poller makes its calls one after the other: at the default budget each
            # waits for its operation's token.
            at_default = r["calls"] / default.requests_per_second
            calls.add(
                devices,
                packages,
                r["calls"],
                packages,
                job_calls,
                ms(r["seconds"]),
                f"{at_default:.0f} s",
            )
            scrape.add(
                devices,
                packages,
                r["series"],
                size(r["bytes"]),
                ms(r["render"]),
                ms(r["cached"]),
            )
    calls.note(
        "calls: what one round made (GetStatistics for the index, one GetBucketsAggregation "
        f"per package, two GetStatistics per thing group of the active job: {GROUPS} "
        "groups). ideal: one aggregation per package. The fleet's size costs no call. "
        "round: its wall time against the simulator without quotas. at 1/s: the round at the "
        "default budget of 1 call per second per operation (calls one after the other), to "
        f"compare with the default interval of {default.interval:.0f} s."
    )
    scrape.note(
        "series and bytes: the package families of /metrics. render on change: once per "
        "round whose counts changed. scrape, unchanged: what a scrape spends on them (the "
        "bytes are joined to the rest of the body as they are)."
    )
    return [calls, scrape]
