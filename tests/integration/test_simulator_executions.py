"""ListJobExecutionsForJob in the simulator over real HTTP and botocore: status filters,
keyset pagination while executions move, bounds, hostile tokens, the quota, and devices
that go silent in progress or never connect."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from simulator import ScenarioError, Simulator, SimulatorThread, load_scenario, start_simulator
from simulator.service import execution_statuses
from tests.conftest import SCENARIOS
from tests.simulator_client import Admin, capture_raw, iot_client, shape_problems, wait_for

START = datetime.fromisoformat("2030-01-01T00:00:00+00:00").timestamp()
SCENARIO = """\
seed: 7
speed: 0
start_time: 2030-01-01T00:00
groups:
  - {name: units, things: 400}
  - {name: pair, things: 4}
  - {name: old, things: 5}
jobs:
  # 20 minutes to notify every unit; retries replace a thing's execution in the listing.
  - id: rollout
    targets: [group:units]
    rollout: {maximum_per_minute: 20}
    retry: [{failure_type: FAILED, number_of_retries: 2}]
    devices:
      queued_minutes: [1, 10]
      in_progress_minutes: [2, 15]
      failure_probability: 0.2
      reject_probability: 0.05
      stuck_probability: 0.1
      offline_probability: 0.1
  # Named things: pair-00000 goes silent once started, pair-00001 never connects.
  - id: named
    targets: [group:pair]
    devices: &pair
      queued_minutes: [1, 1]
      in_progress_minutes: [2, 2]
      stuck_things: [pair-00000]
      offline_things: [pair-00001]
  - id: named-timeout
    targets: [group:pair]
    timeout_minutes: 5
    devices: *pair
  - id: finished
    targets: [group:old]
    precomputed:
      status: COMPLETED
      completed_minutes: -60
      counts: {succeeded: 3, failed: 2}
"""


def _write(tmp_path: Path, text: str, name: str = "executions.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    s = await start_simulator(_write(tmp_path, SCENARIO), port=0, no_quotas=True)
    try:
        yield s
    finally:
        await s.close()


def _thing(summary: dict[str, Any]) -> str:
    return str(summary["thingArn"].rsplit("/", 1)[1])


async def _listing(client: Any, job_id: str, **filters: Any) -> list[dict[str, Any]]:
    pages = client.get_paginator("list_job_executions_for_job").paginate(
        jobId=job_id, PaginationConfig={"PageSize": 250}, **filters
    )
    return [s async for page in pages for s in page["executionSummaries"]]


async def _snapshot(client: Any, job_id: str) -> dict[str, tuple[str, int, datetime]]:
    """thing → (status, executionNumber, lastUpdatedAt) of its latest execution."""
    return {
        _thing(s): (
            s["jobExecutionSummary"]["status"],
            s["jobExecutionSummary"]["executionNumber"],
            s["jobExecutionSummary"]["lastUpdatedAt"],
        )
        for s in await _listing(client, job_id)
    }


# --- status filter ----------------------------------------------------------------------


async def test_status_filter_splits_the_listing_by_state(sim: Simulator, admin: Admin) -> None:
    await admin.advance(15)
    truth = (await admin.job("rollout"))["executions"]
    async with iot_client(sim.url) as client:
        raw = capture_raw(client)
        shape = client.meta.service_model.operation_model("ListJobExecutionsForJob").output_shape
        everything = await _listing(client, "rollout")
        by_status: dict[str, list[str]] = {}
        for status in execution_statuses():
            pages = client.get_paginator("list_job_executions_for_job").paginate(
                jobId="rollout", status=status, PaginationConfig={"PageSize": 9}
            )
            found = [s async for page in pages for s in page["executionSummaries"]]
            assert {s["jobExecutionSummary"]["status"] for s in found} <= {status}
            by_status[status] = [_thing(s) for s in found]
    for response in raw:
        assert shape_problems(json.loads(response["body"]), shape) == []
    # Each state's listing is the unfiltered listing's executions in that state, in order.
    for status, things in by_status.items():
        assert things == [
            _thing(s) for s in everything if s["jobExecutionSummary"]["status"] == status
        ]
    # Queued and in-progress executions are all latest: the counts agree exactly. (A
    # retried thing's failed execution is counted by DescribeJob but no longer listed.)
    assert len(by_status["QUEUED"]) == truth["queued"] > 0
    assert len(by_status["IN_PROGRESS"]) == truth["in_progress"] > 0
    assert {s for s, things in by_status.items() if things} >= {
        "QUEUED",
        "IN_PROGRESS",
        "SUCCEEDED",
        "REJECTED",
    }


async def test_unknown_status_is_invalid(sim: Simulator) -> None:
    async with iot_client(sim.url) as client:
        with pytest.raises(ClientError) as e:
            await client.list_job_executions_for_job(jobId="rollout", status="PAUSED")
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_precomputed_job_filters_and_pages(sim: Simulator) -> None:
    async with iot_client(sim.url) as client:
        first = await client.list_job_executions_for_job(
            jobId="finished", status="FAILED", maxResults=1
        )
        second = await client.list_job_executions_for_job(
            jobId="finished", status="FAILED", maxResults=1, nextToken=first["nextToken"]
        )
        succeeded = await _listing(client, "finished", status="SUCCEEDED")
    assert len(first["executionSummaries"]) == len(second["executionSummaries"]) == 1
    assert "nextToken" not in second
    failed = [_thing(s) for s in first["executionSummaries"] + second["executionSummaries"]]
    assert len(set(failed)) == 2 and len(succeeded) == 3
    assert not set(failed) & {_thing(s) for s in succeeded}


# --- pagination while executions change state -------------------------------------------


@pytest.mark.parametrize("status", [None, "QUEUED", "IN_PROGRESS"])
async def test_pages_stay_consistent_while_executions_move(
    sim: Simulator, admin: Admin, status: str | None
) -> None:
    """No execution twice, and none that kept its state missing, while the clock runs
    between pages: executions start, finish and retry and the rollout notifies new things."""
    await admin.advance(8)
    filters = {} if status is None else {"status": status}
    async with iot_client(sim.url) as client:
        before = await _snapshot(client, "rollout")
        listed: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await client.list_job_executions_for_job(
                jobId="rollout", maxResults=5, **filters, **({"nextToken": token} if token else {})
            )
            listed += page["executionSummaries"]
            token = page.get("nextToken")
            if token is None:
                break
            await admin.advance(0.2)
        after = await _snapshot(client, "rollout")
    things = [_thing(s) for s in listed]
    assert len(things) == len(set(things)), "an execution came twice"
    if status is not None:
        assert {s["jobExecutionSummary"]["status"] for s in listed} == {status}
    unchanged = {
        thing
        for thing, seen in before.items()
        if after.get(thing) == seen and (status is None or seen[0] == status)
    }
    assert unchanged - set(things) == set(), "an execution that kept its state was skipped"
    # The walk was long enough for the fleet to move under it.
    assert len(after) > len(before)
    assert sum(1 for thing, seen in before.items() if after[thing] != seen) > 5


async def test_page_of_a_large_job_reads_only_what_it_returns(tmp_path: Path) -> None:
    scenario = """\
seed: 3
speed: 0
groups: [{name: big, things: 20000}]
jobs:
  - id: big
    targets: [group:big]
    created_minutes: -40
    rollout: {maximum_per_minute: 1000}
    devices: {queued_minutes: [1, 30], in_progress_minutes: [5, 60]}
"""
    s = await start_simulator(_write(tmp_path, scenario), port=0, no_quotas=True)
    try:
        job = s.fleet.jobs["big"]
        assert job.counts["QUEUED"] > 250 and job.counts["IN_PROGRESS"] > 250

        class Counting(dict[str, Any]):
            reads = 0

            def __getitem__(self, key: str) -> Any:
                Counting.reads += 1
                return super().__getitem__(key)

            def values(self) -> Any:
                raise AssertionError("a page scanned the job's executions")

        job.latest = Counting(job.latest)
        async with iot_client(s.url) as client:
            for status in ("QUEUED", "IN_PROGRESS"):
                first = await client.list_job_executions_for_job(
                    jobId="big", status=status, maxResults=100
                )
                second = await client.list_job_executions_for_job(
                    jobId="big", status=status, maxResults=100, nextToken=first["nextToken"]
                )
                assert len(first["executionSummaries"]) == len(second["executionSummaries"])
        # Each page reads its own executions and the one that says another page follows.
        assert Counting.reads == 4 * 101
    finally:
        await s.close()


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 200)), max_size=300),
    after=st.integers(-1, 201),
    limit=st.integers(1, 50),
)
def test_sorted_positions_agree_with_a_sorted_set(
    ops: list[tuple[bool, int]], after: int, limit: int
) -> None:
    """The per-state index behaves as a sorted set, across chunk splits and emptied chunks."""
    import simulator.positions as positions

    chunk = positions._CHUNK
    positions._CHUNK = 4  # split and empty chunks often
    try:
        index, model = positions.SortedPositions(), set()
        for add, value in ops:
            if add:
                index.add(value)
                model.add(value)
            else:
                index.discard(value)
                model.discard(value)
            assert len(index) == len(model)
        assert index.after(-1, len(model) + 1) == sorted(model)
        assert index.after(after, limit) == sorted(v for v in model if v > after)[:limit]
        assert all((v in index) == (v in model) for v in range(-1, 202))
    finally:
        positions._CHUNK = chunk


# --- maxResults and nextToken -------------------------------------------------------------


async def test_max_results_bounds_and_default(sim: Simulator, admin: Admin) -> None:
    await admin.advance(30)
    async with iot_client(sim.url) as client:
        one = await client.list_job_executions_for_job(jobId="rollout", maxResults=1)
        most = await client.list_job_executions_for_job(jobId="rollout", maxResults=250)
        default = await client.list_job_executions_for_job(jobId="rollout")
    assert len(one["executionSummaries"]) == 1 and "nextToken" in one
    assert len(most["executionSummaries"]) == 250 and "nextToken" in most
    assert len(default["executionSummaries"]) == 50


@pytest.mark.parametrize("max_results", [0, 251, -1, 2**31])
async def test_max_results_out_of_range_is_invalid(sim: Simulator, max_results: int) -> None:
    async with iot_client(sim.url, validate=False) as client:
        with pytest.raises(ClientError) as e:
            await client.list_job_executions_for_job(jobId="rollout", maxResults=max_results)
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def _raw(sim: Simulator, query: str, job_id: str = "rollout") -> tuple[int, str, str]:
    """(status, error type, body) of an unsigned GET with a query string sent as written."""
    url = URL(f"{sim.url}/jobs/{job_id}/things?{query}", encoded=True)
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return r.status, r.headers.get("x-amzn-ErrorType", ""), await r.text()


@pytest.mark.parametrize("raw", ["abc", "1_0", "", "%D9%A5", "1e3", "%205", "5.0", "9" * 40])
async def test_max_results_that_is_not_a_number_is_invalid(sim: Simulator, raw: str) -> None:
    status, error, _ = await _raw(sim, f"maxResults={raw}")
    assert (status, error) == (400, "InvalidRequestException:")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


WORST_TOKENS = {
    "garbage": "not-a-token",
    "not base64": "%%%***",
    "nul and controls": "\x00\x1b[31m\r\n",
    "non-ascii": "é€😀",
    "base64, not json": _b64(b"\xff\xfe not json"),
    "json list": _b64(b"[1, 2]"),
    "negative position": _b64(b'{"job": "rollout", "status": null, "after": -1}'),
    "boolean position": _b64(b'{"job": "rollout", "status": null, "after": true}'),
    "float position": _b64(b'{"job": "rollout", "status": null, "after": 1.5}'),
    "string position": _b64(b'{"job": "rollout", "status": null, "after": "3"}'),
    "extra key": _b64(b'{"job": "rollout", "status": null, "after": 1, "x": 0}'),
    "another job": _b64(b'{"job": "named", "status": null, "after": 1}'),
    "another filter": _b64(b'{"job": "rollout", "status": "FAILED", "after": 1}'),
    "nested deep": _b64(b"[" * 700),
    "infinity": _b64(b'{"job": "rollout", "status": null, "after": 1e400}'),
    "long": "A" * 5000,
    "huge": "A" * 60_000,
}


@pytest.mark.parametrize("token", WORST_TOKENS.values(), ids=WORST_TOKENS.keys())
async def test_bad_tokens_are_invalid_requests(sim: Simulator, token: str) -> None:
    status, error, body = await _raw(sim, "nextToken=" + urllib.parse.quote(token, safe=""))
    assert (status, error) == (400, "InvalidRequestException:"), body[:200]
    assert "nextToken" in json.loads(body)["message"]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        _b64(b"[1e999, 1]"),
        _b64(b"[" + b"9" * 400 + b', "x"]'),
        _b64(b'[true, "x"]'),
        _b64(b'["1", "x"]'),
        "A" * 60_000,
    ],
)
async def test_bad_list_jobs_tokens_are_invalid_requests(sim: Simulator, token: str) -> None:
    url = URL(f"{sim.url}/jobs?nextToken={urllib.parse.quote(token, safe='')}", encoded=True)
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        assert (r.status, r.headers.get("x-amzn-ErrorType")) == (400, "InvalidRequestException:")


async def test_undecodable_bytes_and_overlong_lines_are_never_a_server_error(
    sim: Simulator,
) -> None:
    status, error, _ = await _raw(sim, "nextToken=%FF%FE%00")
    assert (status, error) == (400, "InvalidRequestException:")
    # Past the request line limit, aiohttp refuses the request itself: still a 400.
    status, _, _ = await _raw(sim, "nextToken=" + "A" * 100_000)
    assert status == 400


async def test_a_token_through_botocore(sim: Simulator) -> None:
    async with iot_client(sim.url) as client:
        with pytest.raises(ClientError) as e:
            await client.list_job_executions_for_job(jobId="rollout", nextToken="not-a-token")
    assert e.value.response["Error"]["Code"] == "InvalidRequestException"


@pytest.fixture(scope="module")
def thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorThread]:
    path = _write(tmp_path_factory.mktemp("tokens"), SCENARIO)
    with SimulatorThread(path, speed=0, no_quotas=True) as t:
        yield t


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("x-amzn-ErrorType", "")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    token=st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=300),
        st.binary(min_size=1, max_size=300).map(_b64),
        _json.map(lambda v: _b64(json.dumps(v).encode())),
    )
)
def test_any_token_is_a_page_or_an_invalid_request(thread: SimulatorThread, token: str) -> None:
    url = f"{thread.url}/jobs/rollout/things?nextToken={urllib.parse.quote(token, safe='')}"
    status, error = _get(url)
    assert status in (200, 400), status
    if status == 400:
        assert error == "InvalidRequestException:"


# --- the quota ----------------------------------------------------------------------------


async def test_listing_has_its_own_quota_of_ten_a_second(tmp_path: Path) -> None:
    s = await start_simulator(_write(tmp_path, SCENARIO), port=0)
    try:
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, s.url)
            assert (await admin.faults())["quotas"]["ListJobExecutionsForJob"] == 10.0
            async with iot_client(s.url) as client:
                results = await asyncio.gather(
                    *(client.list_job_executions_for_job(jobId="rollout") for _ in range(30)),
                    return_exceptions=True,
                )
                throttled = [r for r in results if isinstance(r, ClientError)]
                assert all(
                    e.response["Error"]["Code"] == "ThrottlingException"
                    and e.response["ResponseMetadata"]["HTTPStatusCode"] == 429
                    for e in throttled
                )
                ok = len(results) - len(throttled)
                # A burst of one second's worth passes, the rest is throttled.
                assert 10 <= ok < 30 and throttled
                # Another operation's quota is untouched by the burst.
                await client.describe_job(jobId="rollout")

                async def recovered() -> bool:
                    try:
                        await client.list_job_executions_for_job(jobId="rollout")
                    except ClientError:
                        return False
                    return True

                await wait_for(recovered, deadline=5)
            requests = (await admin.stats())["requests"]["ListJobExecutionsForJob"]
        assert requests["throttled"] >= len(throttled)
    finally:
        await s.close()


# --- silent and offline devices -----------------------------------------------------------


def _summary(found: list[dict[str, Any]], thing: str) -> dict[str, Any]:
    return next(s["jobExecutionSummary"] for s in found if _thing(s) == thing)


async def test_named_silent_and_offline_devices_keep_their_timestamps(
    sim: Simulator, admin: Admin
) -> None:
    await admin.advance(60)
    notified = {n["thing"]: n["at"] for n in (await admin.rollout("named"))["notifications"]}
    async with iot_client(sim.url) as client:
        first = await _listing(client, "named")
        await admin.advance(600)
        later = await _listing(client, "named")
        timed = await _listing(client, "named-timeout")
    assert first == later, "a silent or offline device's summary moved"
    offline = _summary(later, "pair-00001")
    assert offline["status"] == "QUEUED" and "startedAt" not in offline
    assert offline["queuedAt"] == offline["lastUpdatedAt"]
    assert offline["queuedAt"].timestamp() == pytest.approx(notified["pair-00001"], abs=1e-3)
    silent = _summary(later, "pair-00000")
    assert silent["status"] == "IN_PROGRESS"
    assert silent["startedAt"] == silent["lastUpdatedAt"]
    # queued_minutes [1, 1]: picked up one minute after the notification, then silence.
    assert (silent["startedAt"] - silent["queuedAt"]).total_seconds() == pytest.approx(60, abs=1e-3)
    for thing in ("pair-00002", "pair-00003"):
        assert _summary(later, thing)["status"] == "SUCCEEDED"
    assert (await admin.job("named"))["status"] == "IN_PROGRESS"
    # With an in-progress timeout the silent one times out; the offline one stays queued.
    silent = _summary(timed, "pair-00000")
    assert silent["status"] == "TIMED_OUT"
    assert (silent["lastUpdatedAt"] - silent["startedAt"]).total_seconds() == pytest.approx(300)
    assert _summary(timed, "pair-00001")["status"] == "QUEUED"


async def test_offline_and_stuck_probabilities_leave_executions_behind(
    sim: Simulator, admin: Admin
) -> None:
    await admin.advance(600)
    async with iot_client(sim.url) as client:
        queued = await _listing(client, "rollout", status="QUEUED")
        in_progress = await _listing(client, "rollout", status="IN_PROGRESS")
    # 10% offline and 10% silent among 400 units (fewer silent: some reject first).
    assert 15 <= len(queued) <= 70 and 10 <= len(in_progress) <= 70
    for s in queued:
        summary = s["jobExecutionSummary"]
        assert summary["queuedAt"] == summary["lastUpdatedAt"] and "startedAt" not in summary
        assert summary["retryAttempt"] == 0
    for s in in_progress:
        summary = s["jobExecutionSummary"]
        assert summary["startedAt"] == summary["lastUpdatedAt"] > summary["queuedAt"]
    # The job cannot complete while devices are offline or silent.
    assert (await admin.job("rollout"))["status"] == "IN_PROGRESS"


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("{offline_probability: 1.5}", "jobs[0].devices.offline_probability: expected"),
        ("{offline_things: [a b]}", "jobs[0].devices.offline_things[0]: expected"),
        ("{stuck_things: x}", "jobs[0].devices.stuck_things: expected"),
        (
            "{stuck_things: [t], offline_things: [t]}",
            "jobs[0].devices.offline_things: a thing cannot be both stuck and offline: t",
        ),
    ],
)
def test_device_errors_name_the_field(tmp_path: Path, devices: str, message: str) -> None:
    path = _write(tmp_path, f"jobs:\n  - {{id: x, targets: ['thing:t'], devices: {devices}}}\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    assert message in str(e.value)


def test_offline_devices_default_to_none_and_jobs_inherit_the_scenario() -> None:
    demo = load_scenario(SCENARIOS / "demo.yaml")
    assert demo.devices.offline_probability == 0.0
    assert demo.devices.offline_things == demo.devices.stuck_things == frozenset()
    job = next(j for j in demo.jobs if j.job_id == "meter-firmware-stuck-devices")
    assert job.devices.offline_probability > 0 and job.devices.stuck_probability > 0


# --- the demo's stuck rollout -------------------------------------------------------------


async def test_demo_rollout_has_devices_stuck_for_over_an_hour_from_the_start() -> None:
    s = await start_simulator(SCENARIOS / "demo.yaml", port=0, speed=0, no_quotas=True)
    try:
        now = s.clock.now()
        async with aiohttp.ClientSession() as session:
            truth = await Admin(session, s.url).job("meter-firmware-stuck-devices")
        async with iot_client(s.url) as client:
            job = (await client.describe_job(jobId="meter-firmware-stuck-devices"))["job"]
            in_progress = await _listing(
                client, "meter-firmware-stuck-devices", status="IN_PROGRESS"
            )
            queued = await _listing(client, "meter-firmware-stuck-devices", status="QUEUED")
    finally:
        await s.close()
    # No timeout: the exporter's default in-progress threshold (1 h) applies.
    assert "timeoutConfig" not in job and job["status"] == "IN_PROGRESS"
    total = sum(truth["executions"].values())
    stuck = [
        e for e in in_progress if now - e["jobExecutionSummary"]["startedAt"].timestamp() > 3600
    ]
    assert 0.04 <= len(stuck) / total <= 0.10
    assert all(
        e["jobExecutionSummary"]["lastUpdatedAt"] == e["jobExecutionSummary"]["startedAt"]
        for e in stuck
    )
    # Devices that never connected: queued since before the last hour.
    assert any(now - e["jobExecutionSummary"]["queuedAt"].timestamp() > 3600 for e in queued)
    # Still rolling out, so its counts keep moving and it is not a stalled rollout.
    assert job["isConcurrent"] and job["jobProcessDetails"]["processingTargets"]
