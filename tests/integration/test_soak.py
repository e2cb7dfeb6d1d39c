"""A bounded soak: 50 concurrent scrapers while the collector polls a faulty simulator.

SOAK_SECONDS sets the scraping time (default 20). Memory, tasks and sockets are measured
in this process, where the exporter's collector and HTTP server run.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.supervisor import Supervisor
from exporter.config import parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from simulator import SimulatorThread
from tests.simulator_client import Admin
from tests.support import until

pytestmark = pytest.mark.slow

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "20"))
SCRAPERS = 50
JOBS = [f"soak-{i:02d}" for i in range(12)]
# Generous: the exposition of a dozen jobs is tens of kB; a leak per scrape or per cycle
# over thousands of them would pass this quickly.
RSS_GROWTH_LIMIT = 40 * 1024 * 1024

SCENARIO = "seed: 5\nspeed: 1\ngroups:\n  - {name: fleet, things: 30}\njobs:\n" + "".join(
    f"  - {{id: {job}, targets: [group:fleet], rollout: {{maximum_per_minute: 20}}}}\n"
    for job in JOBS
)
FAULTS = {
    "quotas": {"enabled": True, "DescribeJob": 4, "ListJobs": 1},
    "faults": {
        "latency": {"fixed_ms": 20, "jitter_ms": 150},
        "unavailable": {"ratio": 0.15},
        "reset": {"ratio": 0.1},
    },
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorThread]:
    scenario = tmp_path / "soak.yaml"
    scenario.write_text(SCENARIO)
    with SimulatorThread(scenario) as thread:
        yield thread


async def scraper(
    url: str, stop: float, results: Counter[str], n: int, also: Callable[[], bool]
) -> None:
    """Scrapes until `stop`, and on until `also` holds (two minutes more at most): plain,
    gzip and OpenMetrics in turn; every answer must parse."""
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        i = n
        while time.monotonic() < stop or (not also() and time.monotonic() < stop + 120):
            kind = ("text", "gzip", "openmetrics")[i % 3]
            i += 1
            headers = {"Accept-Encoding": "gzip" if kind == "gzip" else "identity"}
            if kind == "openmetrics":
                headers["Accept"] = "application/openmetrics-text;version=1.0.0"
            async with http.get(url, headers=headers) as r:
                raw = await r.read()
                if r.status != 200:
                    results[f"status {r.status}"] += 1
                    continue
            body = (gzip.decompress(raw) if kind == "gzip" else raw).decode()
            try:
                parse = (
                    parse_openmetrics if kind == "openmetrics" else text_string_to_metric_families
                )
                names = {f.name for f in parse(body)}
            except Exception as exc:  # any parse failure is a failed scrape
                results[f"unparsable {type(exc).__name__}"] += 1
                continue
            if "aws_iot_jobs_exporter_api_requests" not in names:
                results["self-metrics missing"] += 1
                continue
            results["ok"] += 1


def scrape_from_another_loop(
    url: str, seconds: float, results: Counter[str], also: Callable[[], bool] = lambda: True
) -> None:
    """The scrapers on their own thread and loop: their parsing must not starve the
    exporter's loop, which a real Prometheus in another process would not do either."""

    async def run() -> None:
        stop = time.monotonic() + seconds
        await asyncio.gather(*(scraper(url, stop, results, n, also) for n in range(SCRAPERS)))

    asyncio.run(run())


async def test_concurrent_scrapes_against_a_faulty_fleet(sim: SimulatorThread) -> None:
    base_tasks = len(asyncio.all_tasks())
    base_fds = open_fds()
    cfg = parse_config(
        "collector: {interval: 1s, discovery_interval: 2s, request_timeout: 1s, "
        "max_attempts: 3, requests_per_second: 20}\n"
        f"targets: [{{name: soak, region: eu-west-1, endpoint_url: '{sim.url}', "
        "jobs: {discover: {}}}]"
    )
    async with aiohttp.ClientSession() as session:
        await Admin(session, sim.url).faults(FAULTS)
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(cfg, store, telemetry)
    runner = web.AppRunner(build_app(store, telemetry, lambda: collector.ready), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    results: Counter[str] = Counter()
    try:
        await collector.start()
        await until(lambda: len(store) == len(JOBS), within=30)
        # A short warm-up so first allocations (parsers, pools, caches) are not a "leak".
        await asyncio.to_thread(scrape_from_another_loop, url, 2.0, Counter())
        rss_before = rss_bytes()
        api = telemetry.api_requests

        def seen() -> dict[str, float]:
            return {
                outcome: sum(
                    api.labels("soak", op, outcome)._value.get() for op in ("DescribeJob",)
                )
                for outcome in ("ok", "throttled", "unavailable", "network")
            }

        def under_fire() -> bool:
            now = seen()
            return (
                now["ok"] > 0 and now["unavailable"] > 0 and now["network"] + now["throttled"] > 0
            )

        # Under the storm the collector makes a DescribeJob call every few seconds, fewer on
        # a loaded machine, and each meets a fault at random: the soak goes on until it has
        # met each kind, and until every scraper has had five answers (a loaded machine
        # answers fewer in the same seconds; the count, not the pace, is what is checked).
        def enough() -> bool:
            return under_fire() and results["ok"] >= SCRAPERS * 5

        await asyncio.to_thread(scrape_from_another_loop, url, SOAK_SECONDS, results, enough)
        rss_after = rss_bytes()
        faults_seen = seen()
    finally:
        await collector.stop()
        await runner.cleanup()

    failed = {k: v for k, v in results.items() if k != "ok"}
    assert not failed, failed
    assert results["ok"] >= SCRAPERS * 5, results
    # The collector really was under fire and still collected.
    assert faults_seen["ok"] > 0 and faults_seen["unavailable"] > 0, faults_seen
    assert faults_seen["network"] + faults_seen["throttled"] > 0, faults_seen
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, (rss_before, rss_after)
    # Nothing left running or open once stopped (sockets close asynchronously).
    await until(lambda: len(asyncio.all_tasks()) <= base_tasks, within=10)
    await until(lambda: open_fds() <= base_fds, within=10)
