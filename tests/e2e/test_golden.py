"""Golden exposition: DescribeJob bodies served over HTTP, parsed by botocore, rendered."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.aws import JobSource
from exporter.config import parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from tests.conftest import ROOT
from tests.iot_endpoint import IotEndpoint

GOLDEN = ROOT / "tests" / "golden"
DATA = ROOT / "tests" / "data"
CASES = {
    "full": "firmware-v2",
    "minimal": "minimal",
    "unknown_status": "future",
}
FETCHED_AT = 1795700000.0


@pytest.fixture
async def endpoint() -> AsyncIterator[IotEndpoint]:
    ep = IotEndpoint()
    for case, job_id in CASES.items():
        ep.jobs[job_id] = json.loads((DATA / f"describe_job_{case}.json").read_text())
    await ep.start()
    yield ep
    await ep.close()


async def render(endpoint: IotEndpoint, job_id: str) -> str:
    config = parse_config(
        f"targets:\n  - name: fleet\n    region: eu-west-1\n    endpoint_url: {endpoint.url}\n"
        "    labels: {environment: prod}\n    jobs: {ids: [x]}\n"
    )
    target = config.targets[0]
    store = MetricsStore()
    async with JobSource(target, config.collector, SelfMetrics()) as source:
        snapshot = await source.describe_job(job_id)
    store.put_job(target, job_id, dataclasses.replace(snapshot, fetched_at=FETCHED_AT))
    return store.body().decode()


def samples_only(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


@pytest.mark.parametrize("case", sorted(CASES))
async def test_golden_exposition(endpoint: IotEndpoint, case: str) -> None:
    text = await render(endpoint, CASES[case])
    golden = GOLDEN / f"{case}.prom"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"regenerate with UPDATE_GOLDEN=1 and review {golden}"


async def test_full_exposition_parses_and_passes_promtool(endpoint: IotEndpoint) -> None:
    text = await render(endpoint, CASES["full"])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["aws_iot_job_executions"].samples[0].labels["job_id"] == "firmware-v2"
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required: `make test` installs Debian's prometheus package"
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_golden_files_pass_promtool_lint() -> None:
    promtool = shutil.which("promtool")
    assert promtool
    for path in sorted(GOLDEN.glob("*.prom")):
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=path.read_text(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"


async def test_minimal_job_has_no_series_for_absent_fields(endpoint: IotEndpoint) -> None:
    text = samples_only(await render(endpoint, "minimal"))
    names = {line.split("{", 1)[0] for line in text.splitlines()}
    assert names == {
        "aws_iot_job_info", "aws_iot_job_status", "aws_iot_job_last_success_timestamp_seconds",
    }  # fmt: skip


async def test_unknown_status_is_exported_as_is(endpoint: IotEndpoint) -> None:
    text = samples_only(await render(endpoint, "future"))
    assert 'status="PAUSED_FOR_REVIEW"} 1\n' in text
    assert 'status="IN_PROGRESS"} 0\n' in text
    assert 'failure_type="BRICKED",action="ROLLBACK"} 0.05\n' in text
    assert 'target_type="fleetgroup"} 1\n' in text
