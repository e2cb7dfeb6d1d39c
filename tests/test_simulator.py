"""The simulator end to end: real HTTP, real aiobotocore clients with botocore signing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from exporter.simulator import Simulator, start_simulator
from exporter.simulator.testing import Admin, capture_raw, iot_client, shape_problems

CONFIG = Path(__file__).resolve().parent.parent / "config" / "simulator"
DEMO = CONFIG / "demo.yaml"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    # Speed 0: simulated time moves only when a test advances it, so tests are exact.
    s = await start_simulator(DEMO, speed=0, no_quotas=True)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def admin(sim: Simulator) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, sim.url)


async def _all_jobs(client: Any, **filters: Any) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    async for page in client.get_paginator("list_jobs").paginate(**filters):
        jobs += page["jobs"]
    return jobs


async def test_responses_match_botocore_shapes(sim: Simulator, admin: Admin) -> None:
    await admin.advance(30)
    async with iot_client(sim.url) as client:
        raw = capture_raw(client)
        model = client.meta.service_model
        jobs = await _all_jobs(client, PaginationConfig={"PageSize": 4})
        assert len(jobs) == len((await admin.stats())["jobs"])
        seen_fields: set[str] = set()
        for summary in jobs:
            parsed = await client.describe_job(jobId=summary["jobId"])
            body = json.loads(raw[-1]["body"])
            seen_fields |= set(body["job"]) | {f"documentSource:{k}" for k in body if k != "job"}
            assert parsed["job"]["jobId"] == summary["jobId"]
            problems = shape_problems(body, model.operation_model("DescribeJob").output_shape)
            assert problems == [], summary["jobId"]
            pages = client.get_paginator("list_job_executions_for_job").paginate(
                jobId=summary["jobId"], PaginationConfig={"PageSize": 100}
            )
            async for _page in pages:
                body = json.loads(raw[-1]["body"])
                shape = model.operation_model("ListJobExecutionsForJob").output_shape
                assert shape_problems(body, shape) == []
        for response in raw:
            if b'"jobs"' in response["body"][:10]:
                body = json.loads(response["body"])
                assert shape_problems(body, model.operation_model("ListJobs").output_shape) == []
        # Every member of botocore's Job shape shows up in at least one demo job.
        job_shape = model.operation_model("DescribeJob").output_shape.members["job"]
        assert set(job_shape.members) - seen_fields == set()
        assert "documentSource:documentSource" in seen_fields


async def test_arns_use_request_region_and_account(sim: Simulator) -> None:
    async with iot_client(sim.url, region="ap-southeast-2") as client:
        job = (await client.describe_job(jobId="firmware-v2-healthy"))["job"]
    assert job["jobArn"] == "arn:aws:iot:ap-southeast-2:123456789012:job/firmware-v2-healthy"
    assert job["targets"] == ["arn:aws:iot:ap-southeast-2:123456789012:thinggroup/fleet-eu"]


async def test_unknown_job_is_resource_not_found(sim: Simulator) -> None:
    async with iot_client(sim.url) as client:
        with pytest.raises(ClientError) as e:
            await client.describe_job(jobId="no-such-job")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
