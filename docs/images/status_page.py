"""Regenerates docs/images/status-page.png: the real status page of a running exporter.

    .venv/bin/python docs/images/status_page.py   # needs Debian's chromium on the PATH

The demo fleet in the simulator, two targets: `prod` event-driven on the simulator's
queue, with DescribeJob denied for one job, and `staging` pointing at an endpoint that does
not answer. The page is served by the exporter's own app and shot by headless Chromium.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from aiohttp import web

from exporter.collect.supervisor import Supervisor
from exporter.config import parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from simulator.scenario import bundled_scenario
from simulator.server import start_simulator

OUT = Path(__file__).with_name("status-page.png")
DENIED = "camera-config-timeouts"


async def main() -> None:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    demo = bundled_scenario("demo")
    assert demo is not None
    sim = await start_simulator(str(demo), speed=1.0)
    config = parse_config(
        "collector: {interval: 10s, discovery_interval: 30s, request_timeout: 2s, "
        "max_attempts: 1}\n"
        "targets:\n"
        f"  - name: prod\n    region: us-east-1\n    endpoint_url: {sim.url}\n"
        "    jobs: {discover: {}}\n"
        f"    events: {{sqs_queue_url: '{sim.queue_url}', reason_key: reason}}\n"
        "  - name: staging\n    region: eu-west-1\n    endpoint_url: http://127.0.0.1:9\n"
        "    jobs: {discover: {}}\n"
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(config, store, telemetry)
    app = build_app(store, telemetry, lambda: collector.ready, status=collector.status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await collector.start()
    try:
        prod = collector.targets["prod"]
        for _ in range(600):
            if prod.primed and prod.events.event_driven():
                break
            await asyncio.sleep(0.1)
        faults = {"faults": {"denied": {"ratio": 1, "job_ids": [DENIED]}}}
        request = urllib.request.Request(
            f"{sim.url}/_sim/faults", data=json.dumps(faults).encode(), method="POST"
        )
        await asyncio.to_thread(urllib.request.urlopen, request)
        prod.job_changed(DENIED)
        for _ in range(300):
            if prod.status().failing_total and prod.status().events.received:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)
        await asyncio.to_thread(shoot, f"http://127.0.0.1:{port}/status")
    finally:
        await collector.stop()
        await runner.cleanup()
        await sim.close()


def shoot(url: str) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not on the PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", "--window-size=1100,1500",
                f"--screenshot={OUT}", url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip
    print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
