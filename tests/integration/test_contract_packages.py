"""The package and fleet indexing calls against moto's server and the simulator.

moto 5 answers none of them yet: its iot backend has no software package catalog and no
aggregation (only SearchIndex). So the contract is what both do answer, compared in
shape: a job that targets a thing group names it by the same `thinggroup/NAME` ARN in
both. Where moto does not answer, UNANSWERED says why, and a test fails as soon as moto
answers one of them, so that its answer gets compared here instead.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.exceptions import ClientError

from simulator import Simulator, start_simulator
from tests.simulator_client import Admin, capture_raw, iot_client, shape_problems

REGION = "us-east-1"
PREFIX = f"p{uuid.uuid4().hex[:8]}"
GROUP = f"{PREFIX}-meters"
PACKAGE = "meter-firmware"
VERSION_ARN = f"arn:aws:iot:{REGION}:123456789012:package/{PACKAGE}/version/1.1.0"
FIELD = f"shadow.name.$package.reported.{PACKAGE}.version"
SCENARIO = f"""\
seed: 1
speed: 0
region: {REGION}
groups:
  - {{name: {GROUP}, things: 3}}
packages:
  - name: {PACKAGE}
    versions: [{{name: "1.0.0"}}, {{name: "1.1.0"}}]
    installed: [{{group: {GROUP}, versions: {{"1.0.0": 1}}}}]
"""
# Each call as botocore names it, with its parameters.
CALLS: dict[str, dict[str, Any]] = {
    "ListPackages": {},
    "ListPackageVersions": {"packageName": PACKAGE},
    "GetPackageVersion": {"packageName": PACKAGE, "versionName": "1.1.0"},
    "GetBucketsAggregation": {
        "queryString": f"thingGroupNames:{GROUP}",
        "aggregationField": FIELD,
        "bucketsAggregationType": {"termsAggregation": {"maxBuckets": 10}},
    },
    "GetStatistics": {"queryString": f"thingGroupNames:{GROUP}"},
    "GetCardinality": {"queryString": "*", "aggregationField": FIELD},
}
# What moto does not answer, and why; checked by test_every_unanswered_call_is_unanswered.
UNANSWERED = {
    "ListPackages": "moto's iot backend has no software package catalog",
    "ListPackageVersions": "moto's iot backend has no software package catalog",
    "GetPackageVersion": "moto's iot backend has no software package catalog",
    "GetBucketsAggregation": "moto implements SearchIndex only, no aggregation",
    "GetStatistics": "moto implements SearchIndex only, no aggregation",
    "GetCardinality": "moto implements SearchIndex only, no aggregation",
    "destinationPackageVersions": "moto's CreateJob drops destinationPackageVersions",
}


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", operation).lower()


@pytest.fixture(scope="module")
def moto_job(moto_url: str) -> str:
    iot = boto3.client("iot", region_name=REGION, endpoint_url=moto_url)
    group = iot.create_thing_group(thingGroupName=GROUP)
    for i in range(3):
        iot.create_thing(thingName=f"{GROUP}-{i:05d}")
        iot.add_thing_to_thing_group(thingGroupName=GROUP, thingName=f"{GROUP}-{i:05d}")
    job_id = f"{PREFIX}-upgrade"
    iot.create_job(
        jobId=job_id,
        targets=[group["thingGroupArn"]],
        document="{}",
        targetSelection="SNAPSHOT",
        destinationPackageVersions=[VERSION_ARN],
    )
    return job_id


@pytest.fixture
async def sim(tmp_path: Path, moto_job: str) -> AsyncIterator[Simulator]:
    scenario = tmp_path / "contract.yaml"
    scenario.write_text(SCENARIO)
    s = await start_simulator(scenario, no_quotas=True)
    try:
        async with aiohttp.ClientSession() as session:
            await Admin(session, s.url).create_job(
                {
                    "id": moto_job,
                    "targets": [f"group:{GROUP}"],
                    "destination_package_versions": [VERSION_ARN],
                }
            )
        yield s
    finally:
        await s.close()


async def _describe(url: str, job_id: str) -> dict[str, Any]:
    async with iot_client(url, region=REGION) as client:
        raw = capture_raw(client)
        await client.describe_job(jobId=job_id)
        body: dict[str, Any] = json.loads(raw[-1]["body"])
        return body


async def _answer(url: str, operation: str) -> tuple[int, Any]:
    """The HTTP status and raw JSON (or None) of one call."""
    async with iot_client(url, region=REGION) as client:
        raw = capture_raw(client)
        with contextlib.suppress(ClientError):
            await getattr(client, _snake(operation))(**CALLS[operation])
        response = raw[-1]
        try:
            body = json.loads(response["body"] or b"null")
        except ValueError:
            body = None
        return int(response["status_code"]), body


async def test_thing_group_targets_are_named_alike(
    sim: Simulator, moto_url: str, moto_job: str
) -> None:
    pattern = re.compile(rf"^arn:aws:iot:{REGION}:\d{{12}}:thinggroup/{re.escape(GROUP)}$")
    for url in (sim.url, moto_url):
        job = (await _describe(url, moto_job))["job"]
        assert [bool(pattern.match(t)) for t in job["targets"]] == [True], (url, job["targets"])


async def test_the_simulator_names_the_versions_a_job_installs(
    sim: Simulator, moto_url: str, moto_job: str
) -> None:
    assert (await _describe(sim.url, moto_job))["job"]["destinationPackageVersions"] == [
        VERSION_ARN
    ]
    assert "destinationPackageVersions" not in (await _describe(moto_url, moto_job))["job"], (
        "moto now keeps destinationPackageVersions: compare it and drop it from UNANSWERED"
    )


@pytest.mark.parametrize("operation", sorted(CALLS))
async def test_every_unanswered_call_is_unanswered(
    sim: Simulator, moto_url: str, operation: str
) -> None:
    status, body = await _answer(sim.url, operation)
    assert status == 200, body
    async with iot_client(sim.url, region=REGION) as client:
        shape = client.meta.service_model.operation_model(operation).output_shape
    assert shape_problems(body, shape) == []
    moto_status, moto_body = await _answer(moto_url, operation)
    assert operation in UNANSWERED
    assert moto_status >= 400, (
        f"moto now answers {operation} ({moto_body!r:.200}): compare its shape with the "
        "simulator's here and drop it from UNANSWERED"
    )
