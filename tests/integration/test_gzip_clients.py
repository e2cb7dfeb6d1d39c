"""A gzip /metrics decodes whole in the clients people use: curl, gzip, urllib3, requests, zlib.

Each reads the body of the exporter's own server, really started, and must find the same
samples as an identity scrape. curl and browsers decode only the first gzip member of a
body, so a body of several members would lose everything after the first, silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import requests
import urllib3
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.model import JobSnapshot, parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from tests.support import ROOT

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())
TARGET = parse_config(
    "targets: [{name: fleet, region: eu-west-1, jobs: {ids: [x]}, labels: {env: prod}}]"
).targets[0]
# Label values a job id never has at AWS but the exporter must still escape and keep.
ODD_IDS = ['quote"back\\slash', "new\nline", "ünïcødé-🚀", "\x7f\x1b[31m", "{}=,"]

Sample = tuple[str, tuple[tuple[str, str], ...], float]


def job(job_id: str, status: str, succeeded: int = 3) -> JobSnapshot:
    body = json.loads(json.dumps(FULL))
    body["job"].update(jobId=job_id, status=status, isConcurrent=False)
    body["job"]["jobProcessDetails"]["numberOfSucceededThings"] = succeeded
    if status == "COMPLETED":
        body["job"]["jobProcessDetails"].update(numberOfQueuedThings=0, numberOfInProgressThings=0)
    return parse_describe_job(body, 1.0)


def samples(body: bytes) -> set[Sample]:
    """Samples read by prometheus_client's parser, but the process and runtime ones."""
    out = set()
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith(("process_", "python_")):
            continue
        for s in family.samples:
            out.add((s.name, tuple(sorted(s.labels.items())), float(s.value)))
    return out


def single_member(data: bytes) -> bytes:
    """What curl and browsers decode: the first gzip member, which must be all of the body."""
    d = zlib.decompressobj(31)
    text = d.decompress(data) + d.flush()
    assert d.eof, "the gzip member is truncated"
    assert d.unused_data == b"", f"{len(d.unused_data)} bytes after the first gzip member"
    return text


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, MetricsStore]]:
    """The exporter's app with frozen and active jobs in every bucket of the store."""
    store = MetricsStore()
    for i in range(100):
        store.put_job(TARGET, f"done-{i:03d}", job(f"done-{i:03d}", "COMPLETED"))
    for i in range(60):
        store.put_job(TARGET, f"running-{i:03d}", job(f"running-{i:03d}", "IN_PROGRESS"))
    for i, job_id in enumerate(ODD_IDS):
        store.put_job(TARGET, job_id, job(job_id, ("IN_PROGRESS", "COMPLETED")[i % 2]))
    telemetry = SelfMetrics()
    telemetry.init_target(TARGET.name)
    server = TestServer(build_app(store, telemetry, lambda: True), host="127.0.0.1", port=0)
    await server.start_server()
    yield str(server.make_url("/metrics")), store
    await server.close()


async def fetch(url: str, encoding: str) -> tuple[bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.get(url, headers={"Accept-Encoding": encoding}) as response,
    ):
        assert response.status == 200
        data = await response.read()
        assert response.headers["Content-Length"] == str(len(data))
        return data, dict(response.headers)


async def run(*argv: str, stdin: bytes | None = None) -> bytes:
    """A command's stdout; it must exit 0 and print nothing on stderr."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin)
    assert process.returncode == 0, f"{argv[0]} exited {process.returncode}: {err!r}"
    assert err == b"", err
    return out


async def decoded_by_every_client(url: str) -> dict[str, bytes]:
    """The text of one gzip scrape as each client reads it (each client scrapes itself)."""
    zipped, headers = await fetch(url, "gzip")
    assert headers["Content-Encoding"] == "gzip"

    def with_requests() -> bytes:
        response = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=30)
        assert response.headers["Content-Encoding"] == "gzip"
        return response.content

    def with_urllib3() -> bytes:
        response = urllib3.request("GET", url, headers={"Accept-Encoding": "gzip"}, timeout=30)
        assert response.headers["Content-Encoding"] == "gzip"
        return response.data

    return {
        "zlib, one member": single_member(zipped),
        "gzip -d": await run("gzip", "-d", "-c", stdin=zipped),
        "curl --compressed": await run("curl", "--silent", "--show-error", "--compressed", url),
        "requests": await asyncio.to_thread(with_requests),
        "urllib3": await asyncio.to_thread(with_urllib3),
    }


def assert_same_samples(identity: bytes, decoded: dict[str, bytes]) -> None:
    want = samples(identity)
    for client, text in decoded.items():
        got = samples(text)
        assert got == want, f"{client}: {len(want - got)} missing, {len(got - want)} extra"


async def test_every_client_decodes_the_whole_gzip_body(
    served: tuple[str, MetricsStore],
) -> None:
    url, _ = served
    identity, _ = await fetch(url, "identity")
    decoded = await decoded_by_every_client(url)
    assert_same_samples(identity, decoded)
    # Every job, the odd ids included, and the self-metrics that come last.
    text = decoded["curl --compressed"]
    info = [s for s in samples(text) if s[0] == "aws_iot_job_info"]
    assert len(info) == 100 + 60 + len(ODD_IDS)
    assert {dict(s[1])["job_id"] for s in info} >= set(ODD_IDS)
    assert b"aws_iot_jobs_exporter_" in text.rsplit(b"aws_iot_job_info", 1)[1]


async def test_a_change_after_a_cached_gzip_decodes_whole_and_shows(
    served: tuple[str, MetricsStore],
) -> None:
    url, store = served
    await fetch(url, "gzip")  # fills the cache of compressed parts
    store.put_job(TARGET, "running-007", job("running-007", "IN_PROGRESS", succeeded=41))
    decoded = await decoded_by_every_client(url)
    identity, _ = await fetch(url, "identity")
    assert_same_samples(identity, decoded)
    succeeded = ("aws_iot_job_executions", "running-007", "succeeded")

    def value(text: bytes) -> Any:
        for name, labels, v in samples(text):
            d = dict(labels)
            if (name, d.get("job_id"), d.get("state")) == succeeded:
                return v
        return None

    assert value(decoded["curl --compressed"]) == 41.0
    # A job that finishes moves to the frozen part; one that leaves is gone.
    finished = dataclasses.replace(job("running-008", "COMPLETED"))
    store.put_job(TARGET, "running-008", finished)
    store.remove(("fleet", "done-000"))
    decoded = await decoded_by_every_client(url)
    identity, _ = await fetch(url, "identity")
    assert_same_samples(identity, decoded)
    assert b'job_id="done-000"' not in decoded["zlib, one member"]


async def test_head_and_openmetrics_gzip_are_one_member(served: tuple[str, MetricsStore]) -> None:
    url, _ = served
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        headers = {"Accept-Encoding": "gzip", "Accept": "application/openmetrics-text"}
        async with http.get(url, headers=headers) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            text = single_member(await response.read())
        async with http.head(url, headers={"Accept-Encoding": "gzip"}) as response:
            assert response.status == 200 and await response.read() == b""
            assert int(response.headers["Content-Length"]) > 0
    assert text.endswith(b"# EOF\n")
    families = text_string_to_metric_families(text.split(b"# EOF")[0].decode())
    assert any(f.name == "aws_iot_job_info" for f in families)
