"""The three /metrics servers the scrape benchmark compares, each run in a child process.

- `store`: the exporter's MetricsStore behind the exporter's own aiohttp app (build_app).
- `prom`: what a user would write: one prometheus_client Gauge per metric, the same names,
  labels and values, served by prometheus_client's own HTTP server.
- `static`: the store's finished bytes (plain, and one-shot gzip of them) as constants behind
  aiohttp: the floor any server of this body size pays for HTTP and the copy over loopback.

The aiohttp servers also answer `POST /bench/touch`, which changes one job as a collection
cycle would (a no-op for `static`); prometheus_client renders every scrape anyway.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.exposition import generate_latest

from bench.common import bench_target, load_snapshots, reply, touched, wait_for_parent
from bench.report import median
from exporter import gzipjoin
from exporter.collect.schedule import SystemClock
from exporter.collect.sweep import Sweeper
from exporter.config import Executions
from exporter.model import JobSnapshot
from exporter.selfmetrics import SelfMetrics as Telemetry
from exporter.server import CONTENT_TYPE, build_app
from exporter.store import MetricsStore
from exporter.table import FAMILIES, IDENTITY_LABELS


def filled_store(snapshots: list[JobSnapshot]) -> MetricsStore:
    store = MetricsStore()
    target = bench_target()
    for snapshot in snapshots:
        store.put_job(target, snapshot.job_id, snapshot)
    return store


async def _serve(app: web.Application, extra: dict[str, Any]) -> None:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reply({"port": port, **extra})
    await asyncio.to_thread(wait_for_parent)
    await runner.cleanup()


def _touch_route(app: web.Application, touch: Callable[[], None]) -> None:
    async def handler(request: web.Request) -> web.Response:
        touch()
        return web.Response(text="ok\n")

    app.router.add_post("/bench/touch", handler)


def serve_store(fixture: str) -> None:
    snapshots = load_snapshots(fixture)
    store = filled_store(snapshots)
    target = bench_target()
    telemetry = Telemetry()
    telemetry.init_target(target.name)
    telemetry.init_events(target.name)
    jobs: dict[str, JobSnapshot | None] = {s.job_id: s for s in snapshots}
    # What a running collector hands the self-metrics: the sweeper's age of the oldest
    # sweep and the event path's events-driven state, each a pass over the jobs.
    Sweeper(
        target.name,
        Executions(),
        60.0,
        lambda: None,
        lambda: dict(jobs),
        lambda job_id, change: None,
        telemetry,
        SystemClock(),
    )
    telemetry.watch_events_driven(
        target.name, lambda: any(s is not None and not s.frozen for s in jobs.values())
    )
    app = build_app(store, telemetry, lambda: True)
    steps = itertools.count(1)
    # A cycle re-describes active jobs only; frozen ones are never described again.
    active = [s for s in snapshots if not s.frozen] or snapshots

    def touch() -> None:
        step = next(steps)
        snapshot = active[step % len(active)]
        store.put_job(target, snapshot.job_id, touched(snapshot, step))
        # The describe that changed it, as the collector counts it.
        telemetry.api_call(target.name, "DescribeJob", "ok")

    _touch_route(app, touch)
    asyncio.run(_serve(app, {"jobs": len(store), "own": self_metrics_cost(telemetry)}))


def self_metrics_cost(telemetry: Telemetry, count: int = 50) -> float:
    """Median seconds to render and compress the self-metrics after a change, which a
    scrape pays when a counter moved since the last one (else it reuses the bytes)."""
    costs = []
    for _ in range(count):
        telemetry.api_call(bench_target().name, "DescribeJob", "ok")
        started = time.perf_counter()
        gzipjoin.compress(telemetry.render(), 1)
        costs.append(time.perf_counter() - started)
    return median(costs)


def serve_static(fixture: str) -> None:
    store = filled_store(load_snapshots(fixture))
    telemetry = Telemetry()
    telemetry.init_target(bench_target().name)
    telemetry.init_events(bench_target().name)
    own = generate_latest(telemetry.registry)
    # Byte for byte the text the store server sends, made once; its gzip is one-shot
    # `gzip.compress` at the server's level, the smallest one member of that text can be.
    plain = store.body() + own
    zipped = gzip.compress(plain, 1)
    del store

    async def metrics(request: web.Request) -> web.Response:
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=zipped, headers=headers)
        return web.Response(body=plain, headers=headers)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    _touch_route(app, lambda: None)
    asyncio.run(_serve(app, {}))


def prometheus_client_registry(snapshots: list[JobSnapshot]) -> CollectorRegistry:
    """The same series as the store, as prometheus_client Gauges."""
    target = bench_target()
    static_names = tuple(name for name, _ in target.labels)
    static_values = tuple(value for _, value in target.labels)
    registry = CollectorRegistry(auto_describe=False)
    gauges = [
        Gauge(f.name, f.help, IDENTITY_LABELS + static_names + f.labels, registry=registry)
        for f in FAMILIES
    ]
    for snapshot in snapshots:
        identity = (target.name, target.region, snapshot.account_id, snapshot.job_id)
        for family, gauge in zip(FAMILIES, gauges, strict=True):
            for labels, value in family.samples(snapshot):
                gauge.labels(*identity, *static_values, *labels).set(value)
    return registry


def serve_prometheus_client(fixture: str) -> None:
    registry = prometheus_client_registry(load_snapshots(fixture))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    reply({"port": server.server_port})
    wait_for_parent()
    server.shutdown()
    thread.join(5)
