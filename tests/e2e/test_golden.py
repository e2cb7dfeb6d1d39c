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
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.aws import JobSource
from exporter.config import parse_config
from exporter.executions import TimeInState, parse_page, summarise
from exporter.model import JobSnapshot
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


def swept(snapshot: JobSnapshot) -> JobSnapshot:
    """The snapshot with a sweep of tests/data/list_executions_full.json, two finished
    executions timed and two failure events: what sweeps and events add to a job."""
    pages = json.loads((DATA / "list_executions_full.json").read_text())
    summaries = {status: parse_page(page)[0] for status, page in pages.items()}
    sweep = summarise(
        summaries, FETCHED_AT, {"in_progress": 3600.0, "queued": 86400.0}, keep_stuck=10
    )
    times = TimeInState()
    for summary in summaries["IN_PROGRESS"]:
        times = times.started(summary, FETCHED_AT)
    times = times.finished("meter-0002", 2, FETCHED_AT - 400, FETCHED_AT - 100)
    events = (("FAILED", "checksum_mismatch", 2), ("TIMED_OUT", "", 1))
    return dataclasses.replace(snapshot, sweep=sweep, time_in_state=times, execution_events=events)


async def render_swept(endpoint: IotEndpoint, openmetrics: bool) -> str:
    config = parse_config(
        f"targets:\n  - name: fleet\n    region: eu-west-1\n    endpoint_url: {endpoint.url}\n"
        "    labels: {environment: prod}\n    jobs: {ids: [x]}\n"
    )
    target = config.targets[0]
    store = MetricsStore()
    async with JobSource(target, config.collector, SelfMetrics()) as source:
        snapshot = await source.describe_job(CASES["full"])
    snapshot = swept(dataclasses.replace(snapshot, fetched_at=FETCHED_AT))
    store.put_job(target, CASES["full"], snapshot)
    return store.body(openmetrics).decode()


@pytest.mark.parametrize(("name", "openmetrics"), [("swept.prom", False), ("swept.om", True)])
async def test_golden_swept_exposition(endpoint: IotEndpoint, name: str, openmetrics: bool) -> None:
    """The rows fed by sweeps and events, in both formats: the counter's OpenMetrics family
    name and the exemplars are the only differences."""
    text = await render_swept(endpoint, openmetrics)
    golden = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"regenerate with UPDATE_GOLDEN=1 and review {golden}"
    if openmetrics:
        families = {f.name: f for f in openmetrics_families(text + "# EOF\n")}
        queued = families["aws_iot_job_execution_queued_duration_seconds"]
        exemplars = {s.exemplar.labels["thing_name"] for s in queued.samples if s.exemplar}
        assert exemplars == {"meter-0007", "meter-0012", "meter-0031"}
        assert families["aws_iot_job_execution_events"].type == "counter"
    else:
        families = {f.name: f for f in text_string_to_metric_families(text)}
        stuck = {
            s.labels["state"]: s.value for s in families["aws_iot_job_executions_stuck"].samples
        }
        assert stuck == {"queued": 1, "in_progress": 1}


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
