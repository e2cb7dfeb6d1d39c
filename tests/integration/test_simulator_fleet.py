"""The simulated fleet's behaviour as seen through the API: rollout, abort, scheduling, deletion."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from simulator import Simulator, SimulatorThread, start_simulator
from simulator.fleet import minute_string
from tests.simulator_client import Admin, iot_client
from tests.support import SCENARIOS, until

CONFIG = SCENARIOS
DEMO = CONFIG / "demo.yaml"
ABORT = CONFIG / "abort.yaml"
STATES = (
    "queued",
    "in_progress",
    "succeeded",
    "failed",
    "rejected",
    "canceled",
    "removed",
    "timed_out",
)


def _allowed_rate(config: dict[str, Any], notified: int) -> int:
    """The rate AWS documents for the n-th notification, computed from the config alone."""
    maximum = config.get("maximumPerMinute", 1000)
    exp = config.get("exponentialRate")
    if exp is None:
        return int(maximum)
    steps = notified // exp["rateIncreaseCriteria"]["numberOfNotifiedThings"]
    rate = exp["baseRatePerMinute"] * exp["incrementFactor"] ** min(steps, 64)
    return int(min(maximum, rate))


def _max_in_window(times: list[float], limits: list[int]) -> list[tuple[float, int, int]]:
    """For each notification, how many fall in the 60 s from it and the limit that applies."""
    out = []
    j = 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + 60.0 - 1e-6:
            j += 1
        out.append((start, j - i, max(limits[i:j])))
    return out


@pytest.mark.parametrize("job_id", ["firmware-v2-healthy", "firmware-v2-failing"])
async def test_rollout_never_exceeds_its_configured_rate(admin: Admin, job_id: str) -> None:
    await admin.advance(90)
    history = await admin.rollout(job_id)
    config = history["jobExecutionsRolloutConfig"]
    times = [n["at"] for n in history["notifications"]]
    assert len(times) > 200
    assert times == sorted(times)
    limits = [_allowed_rate(config, i) for i in range(len(times))]
    # The simulator's own record of the limit agrees with the documented formula.
    assert limits == [n["rateLimitPerMinute"] for n in history["notifications"]]
    for start, count, limit in _max_in_window(times, limits):
        assert count <= limit, (start, count, limit)
    # It also uses the rate: the busiest minute reaches the cap.
    assert max(c for _, c, _ in _max_in_window(times, limits)) == config["maximumPerMinute"]


async def test_exponential_rollout_ramps_up(admin: Admin) -> None:
    await admin.advance(60)
    history = await admin.rollout("firmware-v2-healthy")
    rates = [n["rateLimitPerMinute"] for n in history["notifications"]]
    assert rates[0] == 5 and rates[50] == 10 and rates[100] == 20 and rates[-1] == 30


async def test_demo_shows_everything_within_a_minute(admin: Admin) -> None:
    await admin.advance(60)
    jobs = (await admin.stats())["jobs"]
    assert {j["status"] for j in jobs.values()} == {
        "IN_PROGRESS",
        "COMPLETED",
        "CANCELED",
        "SCHEDULED",
        "DELETION_IN_PROGRESS",
    }
    for state in STATES:
        assert sum(j["executions"][state] for j in jobs.values()) > 0, state
    assert jobs["firmware-v2-healthy"]["status"] == "IN_PROGRESS"
    assert jobs["firmware-v2-failing"]["status"] == "IN_PROGRESS"
    assert jobs["firmware-v2-canary-aborted"]["status"] == "CANCELED"
    # Out of SCHEDULED at minute 20; whether its 25 devices are all done by minute 60
    # depends on where the wall clock's minute puts its half-hourly windows.
    assert jobs["maintenance-window-update"]["status"] in ("IN_PROGRESS", "COMPLETED")
    failing = jobs["firmware-v2-failing"]["executions"]
    executed = failing["succeeded"] + failing["failed"] + failing["rejected"] + failing["timed_out"]
    assert 0.25 < failing["failed"] / executed < 0.45


async def test_same_seed_same_fleet_other_seed_other_fleet() -> None:
    async def run(seed: int) -> tuple[Any, list[Any]]:
        s = await start_simulator(DEMO, speed=0, seed=seed, no_quotas=True)
        try:
            async with aiohttp.ClientSession() as session:
                admin = Admin(session, s.url)
                await admin.advance(45)
                truth = (await admin.stats())["jobs"]
                async with iot_client(s.url) as client:
                    page = await client.list_job_executions_for_job(
                        jobId="firmware-v2-failing", maxResults=250
                    )
            statuses = [
                (e["thingArn"], e["jobExecutionSummary"]["status"])
                for e in page["executionSummaries"]
            ]
            return truth, statuses
        finally:
            await s.close()

    first, second, other = await run(11), await run(11), await run(12)
    assert first == second
    assert first[0] != other[0]


async def test_abort_scenario_cancels_the_job_in_real_time() -> None:
    # Real (sped-up) time on a thread, as a synchronous benchmark would use it.
    with SimulatorThread(ABORT, no_quotas=True) as thread:
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, thread.url)

            async def settled() -> Any:
                jobs = (await admin.stats())["jobs"]
                aborted, healthy = jobs["canary-aborted"], jobs["fleet-healthy"]
                done = aborted["status"] == "CANCELED" and not aborted["isConcurrent"]
                return jobs if done and healthy["status"] == "COMPLETED" else None

            jobs = await until(settled, within=20)
            history = await admin.rollout("canary-aborted")
        async with iot_client(thread.url) as client:
            job = (await client.describe_job(jobId="canary-aborted"))["job"]
    counts = jobs["canary-aborted"]["executions"]
    executed = counts["succeeded"] + counts["failed"] + counts["rejected"] + counts["timed_out"]
    assert counts["canceled"] > 0
    assert executed >= 10
    assert counts["failed"] / executed >= 0.25
    assert counts["queued"] == counts["in_progress"] == 0
    assert job["status"] == "CANCELED"
    assert job["reasonCode"] == "ABORT_CRITERIA_MET"
    assert "FAILED" in job["comment"]
    assert job["jobProcessDetails"]["numberOfCanceledThings"] == counts["canceled"]
    assert not job["isConcurrent"]
    # The rollout ran in sped-up real time, driven by the background clock, within its cap.
    times = [n["at"] for n in history["notifications"]]
    limits = [30] * len(times)
    assert all(count <= 30 for _, count, _ in _max_in_window(times, limits))


async def test_cancel_is_concurrent_while_canceling(sim: Simulator, admin: Admin) -> None:
    await admin.advance(30)
    await admin.cancel("firmware-v2-healthy", force=True, reason_code="OPERATOR", comment="stop")
    async with iot_client(sim.url) as client:
        job = (await client.describe_job(jobId="firmware-v2-healthy"))["job"]
        assert job["status"] == "CANCELED" and job["isConcurrent"] and job["forceCanceled"]
        assert job["reasonCode"] == "OPERATOR" and job["comment"] == "stop"
        assert job["jobProcessDetails"]["numberOfQueuedThings"] == 0
        assert job["jobProcessDetails"]["numberOfInProgressThings"] > 0
        await admin.advance(3)
        job = (await client.describe_job(jobId="firmware-v2-healthy"))["job"]
    assert not job["isConcurrent"]
    assert job["jobProcessDetails"]["numberOfInProgressThings"] == 0
    assert job["jobProcessDetails"]["numberOfCanceledThings"] > 0


async def test_scheduled_job_starts_at_its_start_time(sim: Simulator, admin: Admin) -> None:
    start = sim.fleet.start + 20 * 60
    async with iot_client(sim.url) as client:
        job = (await client.describe_job(jobId="maintenance-window-update"))["job"]
        assert job["status"] == "SCHEDULED"
        assert job["schedulingConfig"]["startTime"] == minute_string(start)
        assert job["schedulingConfig"]["maintenanceWindows"][0]["startTime"].startswith("cron(")
        assert len(job["scheduledJobRollouts"]) == 7
        await admin.advance(19.9)
        assert (await admin.job("maintenance-window-update"))["status"] == "SCHEDULED"
        await admin.advance(0.1)
        assert (await admin.job("maintenance-window-update"))["status"] == "IN_PROGRESS"
        await admin.advance(90)
        history = await admin.rollout("maintenance-window-update")
    times = [n["at"] for n in history["notifications"]]
    assert times and min(times) >= start
    # Rollout only inside the 10-minute windows that open every half hour (UTC).
    assert all(datetime.fromtimestamp(t, UTC).minute % 30 < 10 for t in times)


async def test_created_scheduled_job_is_missing_from_group_listing(
    sim: Simulator, admin: Admin
) -> None:
    await admin.create_job(
        {
            "id": "later",
            "targets": ["group:lab"],
            "rollout": {"maximum_per_minute": 1},
            "scheduling": {"start_minutes": 40, "end_minutes": 70, "end_behavior": "CANCEL"},
        }
    )
    async with iot_client(sim.url) as client:
        by_group = await client.list_jobs(thingGroupName="lab")
        by_status = await client.list_jobs(status="SCHEDULED")
        assert "later" not in {j["jobId"] for j in by_group["jobs"]}
        assert "later" in {j["jobId"] for j in by_status["jobs"]}
        await admin.advance(41)
        by_group = await client.list_jobs(thingGroupName="lab")
        assert "later" in {j["jobId"] for j in by_group["jobs"]}
        await admin.advance(60)
        job = (await client.describe_job(jobId="later"))["job"]
    # endBehavior CANCEL at endTime.
    assert job["status"] == "CANCELED" and job["reasonCode"] == "END_TIME_REACHED"


async def test_continuous_job_grows_when_things_join(sim: Simulator, admin: Admin) -> None:
    await admin.advance(2)
    before = (await admin.job("sensor-calibration"))["notified"]
    added = await admin.add_things("sensors", ["sensor-new-1", "sensor-new-2"])
    assert added["added"] == ["sensor-new-1", "sensor-new-2"]
    await admin.advance(1)
    after = await admin.job("sensor-calibration")
    assert after["notified"] == before + 2
    async with iot_client(sim.url) as client:
        pages = client.get_paginator("list_job_executions_for_job").paginate(
            jobId="sensor-calibration"
        )
        things = {
            e["thingArn"].rsplit("/", 1)[1] async for p in pages for e in p["executionSummaries"]
        }
    assert {"sensor-new-1", "sensor-new-2"} <= things


async def test_snapshot_job_ignores_things_that_join_later(sim: Simulator, admin: Admin) -> None:
    await admin.advance(60)
    before = (await admin.job("gateway-config-completed"))["notified"]
    await admin.add_things("gateways", count=5)
    await admin.advance(5)
    job = await admin.job("gateway-config-completed")
    assert job["status"] == "COMPLETED" and job["notified"] == before


async def test_thing_leaving_group_is_removed_from_continuous_job(
    sim: Simulator, admin: Admin
) -> None:
    await admin.advance(5)
    async with iot_client(sim.url) as client:
        page = await client.list_job_executions_for_job(
            jobId="sensor-calibration", status="IN_PROGRESS", maxResults=3
        )
    things = [e["thingArn"].rsplit("/", 1)[1] for e in page["executionSummaries"]]
    removed_before = (await admin.job("sensor-calibration"))["executions"]["removed"]
    await admin.remove_things("sensors", things)
    after = (await admin.job("sensor-calibration"))["executions"]["removed"]
    assert after == removed_before + len(things) > removed_before


async def test_delete_goes_through_deletion_then_not_found(sim: Simulator, admin: Admin) -> None:
    await admin.delete("gateway-config-completed")
    async with iot_client(sim.url) as client:
        job = (await client.describe_job(jobId="gateway-config-completed"))["job"]
        assert job["status"] == "DELETION_IN_PROGRESS"
        await admin.advance(sim.scenario.deletion_minutes + 1)
        with pytest.raises(ClientError) as e:
            await client.describe_job(jobId="gateway-config-completed")
        assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"
        with pytest.raises(ClientError):
            await client.list_job_executions_for_job(jobId="gateway-config-completed")
        listed = {j["jobId"] for j in (await client.list_jobs(maxResults=250))["jobs"]}
    assert "gateway-config-completed" not in listed
    assert "gateway-config-completed" in (await admin.stats())["deleted"]


async def test_retries_count_executions_beyond_targets(sim: Simulator, admin: Admin) -> None:
    await admin.advance(300)
    job = await admin.job("firmware-v2-failing")
    total = sum(job["executions"].values())
    assert total > job["notified"]
    async with iot_client(sim.url) as client:
        page = await client.list_job_executions_for_job(jobId="firmware-v2-failing", maxResults=250)
    assert max(e["jobExecutionSummary"]["retryAttempt"] for e in page["executionSummaries"]) >= 1


async def test_timeout_config_times_out_stuck_executions(admin: Admin) -> None:
    await admin.advance(60)
    jobs = (await admin.stats())["jobs"]
    # firmware-v2-failing has a 10-minute timeout and 5% stuck devices.
    assert jobs["firmware-v2-failing"]["executions"]["timed_out"] > 0
    # sensor-calibration has no timeout: its stuck devices stay IN_PROGRESS.
    assert jobs["sensor-calibration"]["executions"]["timed_out"] == 0


async def test_snapshot_job_completes_with_completed_at(sim: Simulator, admin: Admin) -> None:
    async with iot_client(sim.url) as client:
        job = (await client.describe_job(jobId="gateway-config-completed"))["job"]
    assert job["status"] == "COMPLETED"
    assert job["completedAt"] >= job["createdAt"]
    details = job["jobProcessDetails"]
    assert details["numberOfQueuedThings"] == details["numberOfInProgressThings"] == 0
    assert details["processingTargets"] == []


def test_thread_stop_and_restart_on_the_same_port() -> None:
    import asyncio

    async def describe(url: str) -> str:
        async with iot_client(url) as client:
            return str((await client.describe_job(jobId="fleet-healthy"))["job"]["status"])

    with SimulatorThread(ABORT, speed=0, no_quotas=True) as thread:
        url, port = thread.url, thread.port
        assert asyncio.run(describe(url)) == "IN_PROGRESS"
        thread.stop()
        with pytest.raises(EndpointConnectionError):
            asyncio.run(describe(url))
        thread.restart()
        assert thread.port == port
        assert asyncio.run(describe(url)) == "IN_PROGRESS"
        assert thread.call(lambda s: s.stats.requests["DescribeJob"]["ok"]) == 2


def test_scale_builds_precomputed_terminal_jobs() -> None:
    with SimulatorThread(CONFIG / "scale.yaml", jobs=3000, speed=0, no_quotas=True) as thread:
        truth = thread.call(lambda s: s.fleet.truth())
    assert len(truth) == 3000
    active = sum(1 for j in truth.values() if j["status"] == "IN_PROGRESS")
    terminal = sum(1 for j in truth.values() if j["status"] in ("COMPLETED", "CANCELED"))
    assert active + terminal == 3000
    assert math.isclose(active / 3000, 0.1, abs_tol=0.03)
