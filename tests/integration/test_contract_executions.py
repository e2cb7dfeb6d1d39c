"""ListJobExecutionsForJob answers alike from moto's server and from the simulator.

The same things and jobs in both, the same calls (status filters, pagination), and the
answers compared in shape: which members each summary has and of which JSON type, which
things in which state, and where a page carries a nextToken. Values that depend on each
server's clock or counter (timestamps, execution numbers) are compared by type only. What
the two may disagree on is EXCLUSIONS, each with its reason; `test_every_exclusion_is_needed`
keeps the list no longer than true.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest

from simulator import Simulator, start_simulator
from tests.simulator_client import Admin, capture_raw, iot_client, shape_problems

REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"
SIM_ACCOUNT = "210987654321"
# moto's server is shared by the session: names unique to this module.
PREFIX = f"x{uuid.uuid4().hex[:8]}"
THINGS = tuple(f"{PREFIX}-thing-{i}" for i in range(3))
# Each job's targets, by role; the role is what the comparison calls the job.
JOBS = {"three": THINGS, "one": THINGS[:1]}
# Devices that take an hour to pick a job up: every execution stays QUEUED, as in moto,
# which queues every target at CreateJob and never moves an execution by itself.
SCENARIO = f"""\
seed: 1
speed: 0
account_id: "{SIM_ACCOUNT}"
region: {REGION}
devices: {{queued_minutes: [60, 60]}}
"""
# (call name, parameters) run against both servers for each job; every call pages to the end.
CALLS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("all", {"maxResults": 250}),
    ("all by one", {"maxResults": 1}),
    ("queued", {"status": "QUEUED"}),
    ("queued by one", {"status": "QUEUED", "maxResults": 1}),
    ("in progress", {"status": "IN_PROGRESS"}),
    ("succeeded by one", {"status": "SUCCEEDED", "maxResults": 1}),
)


@dataclass(frozen=True)
class Exclusion:
    """A summary member the two servers may disagree on, for executions in `status`."""

    member: str
    reason: str
    status: str | None = None  # None: in every state


EXCLUSIONS: tuple[Exclusion, ...] = (
    Exclusion(
        "startedAt",
        "moto stamps startedAt when it queues an execution; AWS and the simulator send it "
        "once the device has started",
        status="QUEUED",
    ),
    Exclusion("retryAttempt", "moto does not send retryAttempt"),
)

# One summary as compared: thing, status, and each member's JSON type.
Summary = tuple[str, str, tuple[tuple[str, str], ...]]
# One page: its summaries, and whether it carried a nextToken.
Page = tuple[tuple[Summary, ...], bool]


@pytest.fixture(scope="module")
def moto_jobs(moto_url: str) -> dict[str, str]:
    """The jobs in moto's server; role → job id."""
    iot = boto3.client("iot", region_name=REGION, endpoint_url=moto_url)
    arns = {t: iot.create_thing(thingName=t)["thingArn"] for t in THINGS}
    ids = {}
    for role, things in JOBS.items():
        ids[role] = f"{PREFIX}-{role}"
        iot.create_job(
            jobId=ids[role],
            targets=[arns[t] for t in things],
            document="{}",
            targetSelection="SNAPSHOT",
        )
    return ids


@pytest.fixture
async def sim(tmp_path: Path, moto_jobs: dict[str, str]) -> AsyncIterator[Simulator]:
    scenario = tmp_path / "contract.yaml"
    scenario.write_text(SCENARIO)
    # No quota: moto has none, and the calls here outrun ten a second.
    s = await start_simulator(scenario, port=0, no_quotas=True)
    try:
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, s.url)
            for role, things in JOBS.items():
                await admin.create_job(
                    {"id": moto_jobs[role], "targets": [f"thing:{t}" for t in things]}
                )
            # A minute for the rollout to notify every target; nobody picks up within it.
            await admin.advance(1)
        yield s
    finally:
        await s.close()


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


async def _answers(url: str, account: str, ids: dict[str, str]) -> dict[tuple[str, str], Any]:
    """(role, call) → the pages of that listing, as raw JSON, every body checked against
    botocore's output shape."""
    out: dict[tuple[str, str], Any] = {}
    async with iot_client(url, region=REGION) as client:
        raw = capture_raw(client)
        shape = client.meta.service_model.operation_model("ListJobExecutionsForJob").output_shape
        for role, job_id in ids.items():
            for name, params in CALLS:
                pages = []
                token: str | None = None
                while True:
                    extra = {"nextToken": token} if token else {}
                    parsed = await client.list_job_executions_for_job(
                        jobId=job_id, **params, **extra
                    )
                    body = json.loads(raw[-1]["body"])
                    assert shape_problems(body, shape) == [], (url, role, name)
                    pages.append(body)
                    token = parsed.get("nextToken")
                    if token is None:
                        break
                    assert len(pages) <= len(THINGS) + 1, "pagination does not end"
                out[(role, name)] = pages
    for pages in out.values():
        for body in pages:
            for summary in body.get("executionSummaries", []):
                arn = summary["thingArn"]
                assert arn.startswith(f"arn:aws:iot:{REGION}:{account}:thing/"), arn
    return out


def _compared(
    answers: dict[tuple[str, str], Any], exclusions: tuple[Exclusion, ...]
) -> dict[tuple[str, str], tuple[Page, ...]]:
    def summary(item: dict[str, Any]) -> Summary:
        execution = item["jobExecutionSummary"]
        status = execution["status"]
        members = [("thingArn", _json_type(item["thingArn"]))]
        for key, value in execution.items():
            if any(e.member == key and e.status in (None, status) for e in exclusions):
                continue
            members.append((f"jobExecutionSummary.{key}", _json_type(value)))
        return item["thingArn"].rsplit("/", 1)[1], status, tuple(sorted(members))

    return {
        key: tuple(
            (
                tuple(summary(item) for item in body.get("executionSummaries", [])),
                bool(body.get("nextToken")),
            )
            for body in pages
        )
        for key, pages in answers.items()
    }


def _diff(
    left: dict[tuple[str, str], tuple[Page, ...]], right: dict[tuple[str, str], tuple[Page, ...]]
) -> list[str]:
    return [
        f"{key}: moto={left.get(key)} simulator={right.get(key)}"
        for key in sorted(set(left) | set(right))
        if left.get(key) != right.get(key)
    ]


@pytest.fixture
async def both(
    moto_url: str, moto_jobs: dict[str, str], sim: Simulator
) -> tuple[dict[tuple[str, str], Any], dict[tuple[str, str], Any]]:
    return (
        await _answers(moto_url, MOTO_ACCOUNT, moto_jobs),
        await _answers(sim.url, SIM_ACCOUNT, moto_jobs),
    )


async def test_moto_and_simulator_list_executions_alike(
    both: tuple[dict[tuple[str, str], Any], dict[tuple[str, str], Any]],
) -> None:
    moto, simulated = both
    left, right = _compared(moto, EXCLUSIONS), _compared(simulated, EXCLUSIONS)
    assert _diff(left, right) == []
    # The comparison is not vacuous: every target queued, in target order, one a page.
    by_one = left[("three", "queued by one")]
    assert [[s[:2] for s in page] for page, _ in by_one] == [[(t, "QUEUED")] for t in THINGS]
    assert [more for _, more in by_one] == [True, True, False]
    assert left[("three", "in progress")] == (((), False),)
    members = {m for page, _ in left[("three", "all")] for s in page for m, _ in s[2]}
    assert members == {
        "thingArn",
        "jobExecutionSummary.status",
        "jobExecutionSummary.queuedAt",
        "jobExecutionSummary.lastUpdatedAt",
        "jobExecutionSummary.executionNumber",
    }


async def test_every_exclusion_is_needed(
    both: tuple[dict[tuple[str, str], Any], dict[tuple[str, str], Any]],
) -> None:
    moto, simulated = both
    for exclusion in EXCLUSIONS:
        rest = tuple(e for e in EXCLUSIONS if e is not exclusion)
        assert _diff(_compared(moto, rest), _compared(simulated, rest)), (
            f"exclusion no longer needed: {exclusion}"
        )
