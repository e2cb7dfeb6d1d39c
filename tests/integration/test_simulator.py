"""The simulator end to end: real HTTP, real aiobotocore clients with botocore signing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from exporter.model import JOB_STATUSES
from simulator import Simulator
from tests.simulator_client import Admin, capture_raw, iot_client, shape_problems

CONFIG = Path(__file__).resolve().parents[2] / "simulator" / "scenarios"
DEMO = CONFIG / "demo.yaml"


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


# --- ListJobs -----------------------------------------------------------------------------


async def test_list_jobs_pages_newest_first_without_gaps(sim: Simulator, admin: Admin) -> None:
    await admin.advance(10)
    async with iot_client(sim.url) as client:
        jobs = await _all_jobs(client, PaginationConfig={"PageSize": 3})
        first = await client.list_jobs(maxResults=3)
    ids = [j["jobId"] for j in jobs]
    assert len(ids) == len(set(ids)) == len((await admin.stats())["jobs"])
    created = [j["createdAt"] for j in jobs]
    assert created == sorted(created, reverse=True)
    assert len(first["jobs"]) == 3 and "nextToken" in first


@pytest.mark.parametrize("max_results", [0, 251, -1])
async def test_list_jobs_rejects_max_results_out_of_range(sim: Simulator, max_results: int) -> None:
    async with iot_client(sim.url, validate=False) as client:
        with pytest.raises(ClientError) as e:
            await client.list_jobs(maxResults=max_results)
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_list_jobs_rejects_a_forged_next_token(sim: Simulator) -> None:
    async with iot_client(sim.url) as client:
        with pytest.raises(ClientError) as e:
            await client.list_jobs(nextToken="not-a-token")
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"


async def test_list_jobs_filters(sim: Simulator, admin: Admin) -> None:
    await admin.advance(30)
    truth = (await admin.stats())["jobs"]
    async with iot_client(sim.url) as client:

        async def ids(**filters: Any) -> set[str]:
            return {j["jobId"] for j in await _all_jobs(client, **filters)}

        for status in JOB_STATUSES:
            want = {k for k, v in truth.items() if v["status"] == status}
            assert want, status
            assert await ids(status=status) == want
        assert await ids(targetSelection="CONTINUOUS") == {
            k for k, v in truth.items() if v["targetSelection"] == "CONTINUOUS"
        }
        assert await ids(namespaceId="ota") == {"ota-agent-managed"}
        # quarterly-audit-scheduled targets fleet-eu too, but AWS leaves SCHEDULED jobs out
        # of a by-group listing (aws-cli issue #8924), and so does the simulator.
        assert await ids(thingGroupName="fleet-eu") == {"firmware-v2-healthy"}
        group_id = next(
            j["thingGroupId"]
            for j in await _all_jobs(client)
            if j["jobId"] == "firmware-v2-failing"
        )
        assert await ids(thingGroupId=group_id) == {"firmware-v2-failing"}
        assert await ids(thingGroupName="no-such-group") == set()


async def test_list_job_executions_pages_and_filters(sim: Simulator, admin: Admin) -> None:
    await admin.advance(30)
    truth = (await admin.job("firmware-v2-failing"))["executions"]
    async with iot_client(sim.url) as client:
        pages = client.get_paginator("list_job_executions_for_job").paginate(
            jobId="firmware-v2-failing", PaginationConfig={"PageSize": 7}
        )
        things = [s["thingArn"] async for p in pages for s in p["executionSummaries"]]
        failed = client.get_paginator("list_job_executions_for_job").paginate(
            jobId="firmware-v2-failing", status="QUEUED"
        )
        queued = [s async for p in failed for s in p["executionSummaries"]]
    assert len(things) == len(set(things)) > 7
    assert all(s["jobExecutionSummary"]["status"] == "QUEUED" for s in queued)
    assert len(queued) == truth["queued"]


# --- faults -------------------------------------------------------------------------------


async def _describe_error(sim: Simulator, job_id: str = "firmware-v2-healthy") -> Exception:
    async with iot_client(sim.url) as client:
        try:
            await client.describe_job(jobId=job_id)
        except Exception as e:
            return e
    raise AssertionError("DescribeJob succeeded")


@pytest.mark.parametrize(
    ("fault", "status", "code", "outcome"),
    [
        ({"unavailable": {"ratio": 1.0}}, 503, "ServiceUnavailableException", "unavailable"),
        (
            {"unavailable": {"ratio": 1.0}, "unavailable_status": 500},
            500,
            "InternalFailureException",
            "unavailable",
        ),
        ({"denied": {"ratio": 1.0}}, 403, "AccessDeniedException", "denied"),
        ({"not_found": {"ratio": 1.0}}, 404, "ResourceNotFoundException", "not_found"),
    ],
)
async def test_error_faults_reach_botocore_as_client_errors(
    sim: Simulator, admin: Admin, fault: dict[str, Any], status: int, code: str, outcome: str
) -> None:
    await admin.faults({"faults": fault})
    error = await _describe_error(sim)
    assert isinstance(error, ClientError)
    assert error.response["Error"]["Code"] == code
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert (await admin.stats())["requests"]["DescribeJob"][outcome] == 1


@pytest.mark.parametrize("fault", ["reset", "truncated"])
async def test_connection_faults_reach_botocore_as_connection_errors(
    sim: Simulator, admin: Admin, fault: str
) -> None:
    await admin.faults({"faults": {fault: {"ratio": 1.0}}})
    error = await _describe_error(sim)
    # aiohttp reports the reset while sending (EndpointConnectionError) or while reading
    # (ConnectionClosedError), depending on timing; both are botocore connection errors.
    assert isinstance(error, EndpointConnectionError | ConnectionClosedError), repr(error)
    assert (await admin.stats())["requests"]["DescribeJob"][fault] >= 1


async def test_malformed_body_is_not_json(sim: Simulator, admin: Admin) -> None:
    await admin.faults({"faults": {"malformed": {"ratio": 1.0}}})
    async with iot_client(sim.url) as client:
        raw = capture_raw(client)
        parsed = await client.describe_job(jobId="firmware-v2-healthy")
    with pytest.raises(ValueError):
        json.loads(raw[-1]["body"])
    # botocore swallows a body it cannot decode: the caller gets a response without "job".
    assert "job" not in parsed
    assert (await admin.stats())["requests"]["DescribeJob"]["malformed"] == 1


@pytest.mark.parametrize("fault", ["missing_field", "wrong_type", "unknown_enum"])
async def test_bad_field_faults_break_the_shape(sim: Simulator, admin: Admin, fault: str) -> None:
    await admin.faults({"faults": {fault: {"ratio": 1.0}}})
    async with iot_client(sim.url) as client:
        raw = capture_raw(client)
        shape = client.meta.service_model.operation_model("DescribeJob").output_shape
        for job_id in ("firmware-v2-healthy", "firmware-v2-failing", "ota-agent-managed"):
            # botocore cannot convert some wrong types (a timestamp "yesterday").
            with contextlib.suppress(ValueError):
                await client.describe_job(jobId=job_id)
            body = json.loads(raw[-1]["body"])
            problems = shape_problems(body, shape)
            if fault == "missing_field" and not problems:
                # Jobs without shape-required members lose a key field instead.
                assert {"status", "jobProcessDetails", "createdAt", "targetSelection"} - set(
                    body["job"]
                )
            else:
                assert problems, body
    assert (await admin.stats())["requests"]["DescribeJob"]["bad_fields"] == 3


async def test_faults_scope_to_jobs_and_operations(sim: Simulator, admin: Admin) -> None:
    await admin.faults(
        {
            "faults": {
                "unavailable": {"ratio": 1.0, "job_ids": ["firmware-v2-failing"]},
                "denied": {"ratio": 1.0, "operations": ["ListJobExecutionsForJob"]},
            }
        }
    )
    async with iot_client(sim.url) as client:
        await client.describe_job(jobId="firmware-v2-healthy")
        await client.list_jobs()
        with pytest.raises(ClientError, match="ServiceUnavailable"):
            await client.describe_job(jobId="firmware-v2-failing")
        with pytest.raises(ClientError, match="AccessDenied"):
            await client.list_job_executions_for_job(jobId="firmware-v2-healthy")
    await admin.faults({"clear": True})
    async with iot_client(sim.url) as client:
        await client.describe_job(jobId="firmware-v2-failing")


async def test_latency_fault_delays_answers(sim: Simulator, admin: Admin) -> None:
    await admin.faults({"faults": {"latency": {"fixed_ms": 150, "jitter_ms": 50}}})
    async with iot_client(sim.url) as client:
        start = time.monotonic()
        await client.describe_job(jobId="firmware-v2-healthy")
        # A lower bound only: the sleep guarantees it whatever the machine's load.
        assert time.monotonic() - start >= 0.15
    assert (await admin.stats())["requests"]["DescribeJob"]["delayed"] == 1


async def test_faults_endpoint_validates_and_reports(sim: Simulator, admin: Admin) -> None:
    async with admin.session.post(
        sim.url + "/_sim/faults", json={"faults": {"reset": {"ratio": 2}}}
    ) as r:
        assert r.status == 400
        assert "faults.reset.ratio" in (await r.json())["error"]
    async with admin.session.post(sim.url + "/_sim/faults", json={"faults": {"nope": {}}}) as r:
        assert r.status == 400
    state = await admin.faults({"faults": {"reset": {"ratio": 0.5, "operations": ["ListJobs"]}}})
    assert state["faults"]["reset"] == {"ratio": 0.5, "operations": ["ListJobs"], "job_ids": []}
    assert state["quotas"]["enabled"] is False


async def test_quota_throttles_beyond_the_rate(sim: Simulator, admin: Admin) -> None:
    await admin.faults({"quotas": {"enabled": True, "DescribeJob": 5}})
    async with iot_client(sim.url) as client:

        async def one() -> str:
            try:
                await client.describe_job(jobId="firmware-v2-healthy")
            except ClientError as e:
                assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 429
                return str(e.response["Error"]["Code"])
            return "ok"

        start = time.monotonic()
        outcomes = await asyncio.gather(*(one() for _ in range(30)))
        elapsed = time.monotonic() - start
        # Other operations have their own bucket.
        await client.list_jobs()
    throttled = outcomes.count("ThrottlingException")
    assert throttled + outcomes.count("ok") == 30
    # A full bucket (5) plus whatever refilled while the burst was in flight.
    assert outcomes.count("ok") <= 5 + 5 * elapsed + 1
    assert throttled > 0
    assert (await admin.stats())["requests"]["DescribeJob"]["throttled"] == throttled


async def test_botocore_retries_throttling_until_it_passes(sim: Simulator, admin: Admin) -> None:
    await admin.faults({"quotas": {"enabled": True, "DescribeJob": 1}})
    async with iot_client(sim.url, attempts=5) as client:
        for _ in range(2):
            await client.describe_job(jobId="firmware-v2-healthy")
    stats = (await admin.stats())["requests"]["DescribeJob"]
    assert stats["ok"] == 2 and stats["throttled"] >= 1
