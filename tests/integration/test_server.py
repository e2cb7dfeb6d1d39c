"""The HTTP server, really started: /metrics (plain and gzip), health, readiness, landing page."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.model import parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from tests.support import ROOT

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, MetricsStore, list[bool]]]:
    store, telemetry, ready = MetricsStore(), SelfMetrics(), [False]
    telemetry.init_target("fleet")
    target = parse_config("targets: [{name: fleet, region: eu-west-1, jobs: {ids: [x]}}]").targets[
        0
    ]
    store.put_job(target, "firmware-v2", parse_describe_job(FULL, 1.0))
    server = TestServer(build_app(store, telemetry, lambda: ready[0]), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), store, ready
    await server.close()


async def test_metrics_plain_and_gzip_carry_the_same_text(
    served: tuple[str, MetricsStore, list[bool]],
) -> None:
    url, store, _ = served
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(f"{url}/metrics", headers={"Accept-Encoding": "identity"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            plain = await r.read()
        async with http.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            zipped = await r.read()
    assert without_process_metrics(gzip.decompress(zipped)) == without_process_metrics(plain)
    names = {f.name for f in text_string_to_metric_families(plain.decode())}
    assert {"aws_iot_job_executions", "aws_iot_jobs_exporter_api_requests"} <= names
    # The cached gzip follows store changes.
    store.remove(("fleet", "firmware-v2"))
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        assert b"firmware-v2" not in await r.read()


async def test_health_readiness_and_landing(served: tuple[str, MetricsStore, list[bool]]) -> None:
    url, _, ready = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 503
        ready[0] = True
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 200
        async with http.get(f"{url}/") as r:
            page = await r.text()
            assert 'href="/metrics"' in page and 'href="/healthz"' in page
        async with http.post(f"{url}/metrics") as r:
            assert r.status == 405
        async with http.head(f"{url}/metrics") as r:
            assert r.status == 200


def without_process_metrics(body: bytes) -> list[bytes]:
    """The body's lines but the process and runtime metrics, which move between scrapes."""
    moving = re.compile(rb"^(# (HELP|TYPE) )?(process|python)_")
    return [line for line in body.splitlines() if not moving.match(line)]
