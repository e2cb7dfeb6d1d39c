"""The store: frozen and active jobs are joined apart, so a cycle re-joins only the active part."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.model import JobSnapshot, parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import ACTIVE, FROZEN, MetricsStore
from tests.integration.test_server import without_process_metrics
from tests.support import ROOT

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())
TARGET = parse_config("targets: [{name: t, region: eu-west-1, jobs: {ids: [x]}}]").targets[0]


def job(job_id: str, status: str, fetched_at: float = 1.0) -> JobSnapshot:
    body = json.loads(json.dumps(FULL))
    body["job"].update(jobId=job_id, status=status, isConcurrent=False)
    if status == "COMPLETED":
        body["job"]["jobProcessDetails"].update(numberOfQueuedThings=0, numberOfInProgressThings=0)
    return parse_describe_job(body, fetched_at)


def versions(store: MetricsStore) -> dict[str, int]:
    """Each part's version; the active part has no segment when it holds no job."""
    store.segments()
    return dict(store._versions)


def samples(text: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_active_changes_leave_the_frozen_part_alone() -> None:
    store = MetricsStore()
    store.put_job(TARGET, "done", job("done", "COMPLETED"))
    store.put_job(TARGET, "running", job("running", "IN_PROGRESS"))
    before = versions(store)
    store.put_job(TARGET, "running", job("running", "IN_PROGRESS", fetched_at=2.0))
    after = versions(store)
    assert after[FROZEN] == before[FROZEN]
    assert after[ACTIVE] > before[ACTIVE]
    # The same snapshot again changes nothing at all.
    version = store.version
    store.put_job(TARGET, "running", job("running", "IN_PROGRESS", fetched_at=2.0))
    assert store.version == version
    # A job that finishes moves to the frozen part: both parts change.
    store.put_job(TARGET, "running", job("running", "COMPLETED", fetched_at=3.0))
    moved = versions(store)
    assert moved[FROZEN] > after[FROZEN] and moved[ACTIVE] > after[ACTIVE]
    store.remove(("t", "done"))
    assert versions(store)[FROZEN] > moved[FROZEN]


def test_body_holds_every_job_once_with_one_header_per_family() -> None:
    store = MetricsStore()
    for i, status in enumerate(["COMPLETED", "IN_PROGRESS", "CANCELED", "SCHEDULED"]):
        store.put_job(TARGET, f"job-{i}", job(f"job-{i}", status))
    text = store.body().decode()
    assert text.count("# TYPE aws_iot_job_info gauge") == 1
    got = samples(text)
    single = MetricsStore()
    expected: set[tuple[str, tuple[tuple[str, str], ...], float]] = set()
    for i, status in enumerate(["COMPLETED", "IN_PROGRESS", "CANCELED", "SCHEDULED"]):
        single.put_job(TARGET, f"job-{i}", job(f"job-{i}", status))
        expected |= samples(single.body().decode())
        single.remove(("t", f"job-{i}"))
    assert got == expected


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, MetricsStore]]:
    store = MetricsStore()
    store.put_job(TARGET, "done", job("done", "COMPLETED"))
    store.put_job(TARGET, "running", job("running", "IN_PROGRESS"))
    server = TestServer(build_app(store, SelfMetrics(), lambda: True), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/metrics")), store
    await server.close()


async def test_gzip_follows_changes_of_either_part(served: tuple[str, MetricsStore]) -> None:
    url, store = served

    async def fetch(encoding: str) -> bytes:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as http,
            http.get(url, headers={"Accept-Encoding": encoding}) as response,
        ):
            data = await response.read()
            assert response.headers.get("Content-Length") == str(len(data))
            return gzip.decompress(data) if encoding == "gzip" else data

    same = without_process_metrics
    assert same(await fetch("gzip")) == same(await fetch("identity"))
    store.put_job(
        TARGET, "running", dataclasses.replace(job("running", "CANCELED"), force_canceled=True)
    )
    store.remove(("t", "done"))
    zipped, plain = await fetch("gzip"), await fetch("identity")
    assert same(zipped) == same(plain)
    assert b'job_id="done"' not in plain and b"aws_iot_job_force_canceled" in plain


def test_repeated_criteria_make_one_series_each() -> None:
    body = json.loads(json.dumps(FULL))
    criteria = body["job"]["abortConfig"]["criteriaList"]
    criteria.append(dict(criteria[0], thresholdPercentage=99.0))
    store = MetricsStore()
    store.put_job(TARGET, "dup", parse_describe_job(body, 1.0))
    lines = [
        line
        for line in store.body().decode().splitlines()
        if line.startswith("aws_iot_job_abort_threshold_ratio{") and 'failure_type="FAILED"' in line
    ]
    assert len(lines) == 1 and lines[0].endswith(" 0.125")
