"""A real Prometheus scraping the exporter in OpenMetrics while a hostile endpoint names
its things with NUL, lone surrogates and controls: the scrape is taken whole (`up` stays
1) and the exemplars reach Prometheus, escaped."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from exporter.server import build_app
from tests.hostile_aws import HostileAws, executions_page, job_body
from tests.integration.test_sweep_hostile import JOB, Running, cfg, serve
from tests.support import free_port, started, stop, until

NOW = time.time()
# Every control character (C0, DEL, C1) in one name; NUL and a lone surrogate alone.
CONTROLS = "".join(map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0)]))
NAMES = ["nul\x00name", "surrogate\ud800", f"ctl{CONTROLS}\x1b[2J", 'quote"back\\slash\nline']
# Queued for as long as puts each in a bucket of its own: one exemplar each.
QUEUED = [3, 10, 40, 200]


def _running(name: str, started: float, queued: float) -> dict[str, Any]:
    return {
        "thingArn": f"arn:aws:iot:eu-west-1:123456789012:thing/{name}",
        "jobExecutionSummary": {
            "status": "IN_PROGRESS",
            "queuedAt": started - queued,
            "startedAt": started,
            "executionNumber": 3,
        },
    }


async def _query(http: aiohttp.ClientSession, prometheus: str, path: str, **params: str) -> Any:
    async with http.get(f"{prometheus}{path}?{urllib.parse.urlencode(params)}") as response:
        body = await response.json()
    assert body["status"] == "success", body
    return body["data"]


async def test_prometheus_takes_the_scrape_whatever_the_thing_names(tmp_path: Path) -> None:
    prometheus_bin = shutil.which("prometheus")
    assert prometheus_bin, "prometheus not found on PATH; run `make prometheus`"
    aws = await HostileAws().start()
    aws.describe[JOB] = json.dumps(
        job_body(JOB, jobProcessDetails={"numberOfInProgressThings": len(NAMES)})
    ).encode()
    page = executions_page(*(_running(n, NOW - 100, q) for n, q in zip(NAMES, QUEUED, strict=True)))
    serve(
        aws,
        lambda status, token: page if status == "IN_PROGRESS" else b'{"executionSummaries": []}',
    )
    exporter_port, prometheus_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    # Two seconds between scrapes and as long to answer: a loaded machine must not turn a
    # slow scrape into the failure this test looks for.
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
                "scrape_configs": [
                    {"job_name": "exporter", "static_configs": [
                        {"targets": [f"127.0.0.1:{exporter_port}"]}
                    ]}
                ],
            }
        )
    )  # fmt: skip
    argv = [
        prometheus_bin,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prometheus_port}",
        "--enable-feature=exemplar-storage",
        "--log.level=warn",
    ]
    log = (tmp_path / "prometheus.log").open("wb")
    try:
        # The exporter listens before Prometheus starts, so no scrape finds the port closed:
        # every `up` of 0 the test sees is a scrape Prometheus refused.
        async with Running(cfg(aws)) as run:
            app = build_app(run.store, run.telemetry, lambda: True)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", exporter_port).start()
            try:
                await until(lambda: run.stuck() is not None, 30, "a sweep")
                with started(argv, stdout=log, stderr=subprocess.STDOUT) as process:
                    try:
                        await _scrape_and_check(f"http://127.0.0.1:{prometheus_port}")
                        await _parse_as_openmetrics(f"http://127.0.0.1:{exporter_port}")
                    finally:
                        stop(process)
            finally:
                await runner.cleanup()
    finally:
        log.close()
        await aws.close()
        print((tmp_path / "prometheus.log").read_text(errors="replace")[-3000:])


async def _scrape_and_check(prometheus: str) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"{prometheus}/-/ready") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, 60, "Prometheus")

        async def exemplars() -> list[dict[str, Any]]:
            data = await _query(
                http,
                prometheus,
                "/api/v1/query_exemplars",
                query="aws_iot_job_execution_queued_duration_seconds_bucket",
                start=str(NOW - 600),
                end=str(time.time() + 60),
            )
            return [e for series in data for e in series["exemplars"]]

        async def scraped() -> bool:
            data = await _query(http, prometheus, "/api/v1/query", query="up")
            return bool(data["result"]) and bool(await exemplars())

        await until(scraped, 60, "a scrape with exemplars")

        # Several scrapes, every one of them taken.
        async def scrapes() -> bool:
            data = await _query(
                http, prometheus, "/api/v1/query", query="count_over_time(up[1m]) >= 3"
            )
            return bool(data["result"])

        await until(scrapes, 60, "three scrapes")
        data = await _query(http, prometheus, "/api/v1/query", query="min_over_time(up[1m])")
        assert [r["value"][1] for r in data["result"]] == ["1"], await _query(
            http, prometheus, "/api/v1/targets"
        )
        names = {e["labels"]["thing_name"] for e in await exemplars()}
        assert len(names) == len(NAMES)
        assert all("\x00" not in n and "\x1b" not in n for n in names)


async def _parse_as_openmetrics(exporter: str) -> None:
    """The body Prometheus took, read by client_python's OpenMetrics parser too: every
    exemplar there, each thing name without a control character."""
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{exporter}/metrics", headers=headers) as r,
    ):
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        body = await r.text()
    names = {
        sample.exemplar.labels["thing_name"]
        for family in openmetrics_families(body)
        for sample in family.samples
        if sample.exemplar is not None and "thing_name" in sample.exemplar.labels
    }
    assert len(names) == len(NAMES), names
    assert not [n for n in names if set(n) & set(CONTROLS) or "\ud800" in n], names
