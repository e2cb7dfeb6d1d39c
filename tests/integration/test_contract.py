"""The same jobs in moto's server and in the simulator give the same exporter series.

moto is an independent model of the IoT control plane and the simulator is ours; where both
know a field, the exporter must read them alike. Everything they are allowed to disagree on
is listed in EXCLUSIONS, each with its reason: that list is the documented contract, and
`test_every_exclusion_is_needed` keeps it from growing past what is true.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.aws import JobSource
from exporter.collect.poller import TargetPoller
from exporter.config import parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from simulator import Simulator, start_simulator
from tests.simulator_client import Admin

REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"  # moto's default account
SIM_ACCOUNT = "210987654321"  # a different one on purpose: the account is identity, not data
# moto's server is shared by the session: names unique to this module.
PREFIX = f"c{uuid.uuid4().hex[:8]}"
THINGS = tuple(f"{PREFIX}-thing-{i}" for i in range(3))
GROUP = f"{PREFIX}-group"
# Frozen simulated time at a whole hour, so "start in 60 minutes" is a known minute string.
SIM_START = "2030-01-01T00:00"
SCENARIO = f"""\
seed: 1
speed: 0
account_id: "{SIM_ACCOUNT}"
region: {REGION}
start_time: {SIM_START}
groups:
  - {{name: {GROUP}, things: 5}}
"""

Series = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Exclusion:
    """Series the two servers may disagree on: a metric, optionally of some jobs only."""

    metric: str
    reason: str
    roles: tuple[str, ...] = ()  # job roles (see JOBS); empty: every job
    labels: tuple[tuple[str, str], ...] = ()  # only series with these labels

    def matches(self, name: str, labels: dict[str, str], role: str) -> bool:
        if name != self.metric or (self.roles and role not in self.roles):
            return False
        return all(labels.get(k) == v for k, v in self.labels)


EXCLUSIONS: tuple[Exclusion, ...] = (
    Exclusion(
        "aws_iot_job_created_timestamp_seconds",
        "each server stamps its own clock (the simulator's is simulated)",
    ),
    Exclusion(
        "aws_iot_job_last_updated_timestamp_seconds",
        "each server stamps its own clock (the simulator's is simulated)",
    ),
    Exclusion(
        "aws_iot_job_last_success_timestamp_seconds",
        "the exporter's own clock at each describe",
    ),
    Exclusion(
        "aws_iot_job_completed_timestamp_seconds",
        "moto's CancelJob leaves completedAt null; AWS and the simulator set it",
        roles=("canceled",),
    ),
    Exclusion(
        "aws_iot_job_status",
        "moto reports status QUEUED for a new job where AWS says IN_PROGRESS or SCHEDULED",
        roles=("rollout", "scheduled"),
    ),
    Exclusion(
        "aws_iot_job_executions",
        "moto has no numberOfTimedOutThings in jobProcessDetails",
        labels=(("state", "timed_out"),),
    ),
    Exclusion(
        "aws_iot_job_executions",
        "moto queues one execution at CreateJob even before a scheduled start",
        roles=("scheduled",),
    ),
    Exclusion(
        "aws_iot_job_executions",
        "moto's CancelJob leaves the counts as they were; AWS cancels queued executions",
        roles=("canceled",),
    ),
    Exclusion(
        "aws_iot_job_processing_targets",
        "moto lists every target as processing whatever the job's state",
        roles=("scheduled", "canceled"),
    ),
    Exclusion(
        "aws_iot_job_is_concurrent",
        "moto never sends isConcurrent",
    ),
    Exclusion(
        "aws_iot_job_force_canceled",
        "moto sends forceCanceled: false on jobs never canceled; the simulator leaves it out",
        roles=("rollout", "scheduled"),
    ),
    Exclusion(
        "aws_iot_job_scheduled_rollout_start_timestamp_seconds",
        "moto does not compute scheduledJobRollouts from maintenance windows",
        roles=("scheduled",),
    ),
)
# Not in the jobs below at all, because moto's CreateJob accepts and drops them (the
# simulator fills them; tests/e2e/test_e2e_simulator.py checks they reach their series):
# namespaceId, jobTemplateArn, destinationPackageVersions.
DROPPED_BY_MOTO = ("namespaceId", "jobTemplateArn", "destinationPackageVersions")

PRESIGN_ROLE = f"arn:aws:iam::{MOTO_ACCOUNT}:role/presign"

# Each job as CreateJob parameters (moto) and as the simulator's admin body, side by side.
JOBS: dict[str, dict[str, Any]] = {
    "rollout": {
        "moto": {
            "targetSelection": "SNAPSHOT",
            "jobExecutionsRolloutConfig": {
                "maximumPerMinute": 50,
                "exponentialRate": {
                    "baseRatePerMinute": 5,
                    "incrementFactor": 2.0,
                    "rateIncreaseCriteria": {"numberOfNotifiedThings": 10},
                },
            },
            "abortConfig": {
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": 25.0,
                        "minNumberOfExecutedThings": 10,
                    },
                    {
                        "failureType": "TIMED_OUT",
                        "action": "CANCEL",
                        "thresholdPercentage": 12.5,
                        "minNumberOfExecutedThings": 4,
                    },
                ]
            },
            "timeoutConfig": {"inProgressTimeoutInMinutes": 45},
            "presignedUrlConfig": {"roleArn": PRESIGN_ROLE, "expiresInSec": 900},
            "jobExecutionsRetryConfig": {
                "criteriaList": [
                    {"failureType": "FAILED", "numberOfRetries": 2},
                    {"failureType": "TIMED_OUT", "numberOfRetries": 1},
                ]
            },
        },
        "sim": {
            "target_selection": "SNAPSHOT",
            "rollout": {
                "maximum_per_minute": 50,
                "exponential_rate": {
                    "base_rate_per_minute": 5,
                    "increment_factor": 2,
                    "rate_increase_criteria": {"number_of_notified_things": 10},
                },
            },
            "abort": [
                {
                    "failure_type": "FAILED",
                    "action": "CANCEL",
                    "threshold_percentage": 25,
                    "min_number_of_executed_things": 10,
                },
                {
                    "failure_type": "TIMED_OUT",
                    "action": "CANCEL",
                    "threshold_percentage": 12.5,
                    "min_number_of_executed_things": 4,
                },
            ],
            "timeout_minutes": 45,
            "presigned_url": {"role_arn": PRESIGN_ROLE, "expires_in_sec": 900},
            "retry": [
                {"failure_type": "FAILED", "number_of_retries": 2},
                {"failure_type": "TIMED_OUT", "number_of_retries": 1},
            ],
        },
    },
    "scheduled": {
        "moto": {
            "targetSelection": "CONTINUOUS",
            "schedulingConfig": {
                "startTime": "2030-01-01T01:00",
                "endTime": "2030-01-02T00:00",
                "endBehavior": "CANCEL",
                "maintenanceWindows": [
                    {"startTime": "cron(0 2 ? * SUN *)", "durationInMinutes": 120},
                    {"startTime": "cron(30 12 * * ? *)", "durationInMinutes": 30},
                ],
            },
        },
        "sim": {
            "target_selection": "CONTINUOUS",
            "scheduling": {
                "start_minutes": 60,
                "end_minutes": 1440,
                "end_behavior": "CANCEL",
                "maintenance_windows": [
                    {"start_time": "cron(0 2 ? * SUN *)", "duration_in_minutes": 120},
                    {"start_time": "cron(30 12 * * ? *)", "duration_in_minutes": 30},
                ],
            },
        },
    },
    # Explicit: AWS and the simulator default to SNAPSHOT, moto leaves targetSelection out.
    "canceled": {"moto": {"targetSelection": "SNAPSHOT"}, "sim": {"target_selection": "SNAPSHOT"}},
}
CANCEL = {"force": True, "reason_code": "BAD_BUILD", "comment": "rolled back"}


def _targets(role: str) -> tuple[list[str], list[str]]:
    """(moto ARNs, simulator targets) of a role's job."""
    if role == "scheduled":
        group = f"arn:aws:iot:{REGION}:{MOTO_ACCOUNT}:thinggroup/{GROUP}"
        return [group], [f"group:{GROUP}"]
    things = THINGS if role == "rollout" else THINGS[:1]
    arns = [f"arn:aws:iot:{REGION}:{MOTO_ACCOUNT}:thing/{t}" for t in things]
    return arns, [f"thing:{t}" for t in things]


@pytest.fixture(scope="module")
def moto_jobs(moto_url: str) -> dict[str, str]:
    """The jobs in moto's server; role → job id (unique: the server is shared)."""
    iot = boto3.client("iot", region_name=REGION, endpoint_url=moto_url)
    for thing in THINGS:
        iot.create_thing(thingName=thing)
    iot.create_thing_group(thingGroupName=GROUP)
    ids = {}
    for role, job in JOBS.items():
        job_id = ids[role] = f"{PREFIX}-{role}"
        arns, _ = _targets(role)
        iot.create_job(jobId=job_id, targets=arns, document="{}", **job["moto"])
    iot.cancel_job(
        jobId=ids["canceled"],
        force=CANCEL["force"],
        reasonCode=CANCEL["reason_code"],
        comment=CANCEL["comment"],
    )
    return ids


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Simulator]:
    scenario = tmp_path / "contract.yaml"
    scenario.write_text(SCENARIO)
    s = await start_simulator(scenario, port=0)
    try:
        yield s
    finally:
        await s.close()


async def _create_in_simulator(sim: Simulator, ids: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, sim.url)
        for role, job in JOBS.items():
            _, targets = _targets(role)
            await admin.create_job({"id": ids[role], "targets": targets, **job["sim"]})
        await admin.cancel(ids["canceled"], **CANCEL)


async def _series(url: str, ids: dict[str, str]) -> dict[Series, float]:
    """One collection cycle of the exporter against `url`, parsed from its exposition."""
    job_ids = ", ".join(ids.values())
    cfg = parse_config(
        f"targets:\n  - name: contract\n    region: {REGION}\n    endpoint_url: {url}\n"
        f"    jobs: {{ids: [{job_ids}]}}\n"
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    target = cfg.targets[0]
    async with JobSource(target, cfg.collector, telemetry) as source:
        collector = TargetPoller(target, cfg.collector, source, store, telemetry)
        await collector.collect_once()
    assert telemetry.collection_success.labels("contract")._value.get() == 1
    out: dict[Series, float] = {}
    for family in text_string_to_metric_families(store.body().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _normalize(
    series: dict[Series, float],
    ids: dict[str, str],
    account: str,
    excluded: Callable[[str, dict[str, str], str], bool],
) -> dict[Series, float]:
    """Identity out: the account (label, and in the ARNs of IoT resources); exclusions out."""
    roles = {job_id: role for role, job_id in ids.items()}
    arn_account = re.compile(rf"(arn:aws:iot:[^:]*:){account}:")
    out: dict[Series, float] = {}
    for (name, pairs), value in series.items():
        labels = dict(pairs)
        role = roles[labels["job_id"]]
        if excluded(name, labels, role):
            continue
        assert labels.pop("account_id") == account, (name, labels)
        labels = {k: arn_account.sub(r"\1ACCOUNT:", v) for k, v in labels.items()}
        labels["job_id"] = role
        out[(name, tuple(sorted(labels.items())))] = value
    return out


def _excluded_by(exclusions: tuple[Exclusion, ...]) -> Callable[[str, dict[str, str], str], bool]:
    return lambda name, labels, role: any(e.matches(name, labels, role) for e in exclusions)


def _diff(left: dict[Series, float], right: dict[Series, float]) -> list[str]:
    lines = []
    for key in sorted(set(left) | set(right)):
        a, b = left.get(key), right.get(key)
        if a != b:
            lines.append(f"{key[0]}{dict(key[1])}: moto={a} simulator={b}")
    return lines


@pytest.fixture
async def both(
    moto_url: str, moto_jobs: dict[str, str], sim: Simulator
) -> tuple[dict[Series, float], dict[Series, float]]:
    """The exporter's raw series against moto and against the simulator, same job ids."""
    await _create_in_simulator(sim, moto_jobs)
    return await _series(moto_url, moto_jobs), await _series(sim.url, moto_jobs)


async def test_moto_and_simulator_give_the_same_series(
    both: tuple[dict[Series, float], dict[Series, float]], moto_jobs: dict[str, str]
) -> None:
    moto, simulated = both
    excluded = _excluded_by(EXCLUSIONS)
    left = _normalize(moto, moto_jobs, MOTO_ACCOUNT, excluded)
    right = _normalize(simulated, moto_jobs, SIM_ACCOUNT, excluded)
    assert _diff(left, right) == []
    # The comparison covers the configuration the jobs carry, not just their identity.
    compared = {name for name, _ in left}
    assert {
        "aws_iot_job_info",
        "aws_iot_job_target_info",
        "aws_iot_job_reason_info",
        "aws_iot_job_status",
        "aws_iot_job_executions",
        "aws_iot_job_processing_targets",
        "aws_iot_job_rollout_maximum_per_minute",
        "aws_iot_job_rollout_exponential_base_rate_per_minute",
        "aws_iot_job_rollout_exponential_increment_factor",
        "aws_iot_job_rollout_exponential_notified_things_threshold",
        "aws_iot_job_rollout_rate_limit_per_minute",
        "aws_iot_job_abort_threshold_ratio",
        "aws_iot_job_abort_min_executed_things",
        "aws_iot_job_retry_max_attempts",
        "aws_iot_job_in_progress_timeout_seconds",
        "aws_iot_job_presigned_url_expiry_seconds",
        "aws_iot_job_scheduling_start_timestamp_seconds",
        "aws_iot_job_scheduling_end_timestamp_seconds",
        "aws_iot_job_scheduling_end_behavior",
        "aws_iot_job_maintenance_window_info",
        "aws_iot_job_maintenance_window_duration_seconds",
        "aws_iot_job_force_canceled",
    } <= compared
    # Both say CANCELED for the canceled job, with its reason, forced.
    canceled = (("job_id", "canceled"), ("region", REGION), ("target", "contract"))
    assert left[("aws_iot_job_force_canceled", canceled)] == 1
    status = tuple(sorted((*canceled, ("status", "CANCELED"))))
    assert left[("aws_iot_job_status", status)] == right[("aws_iot_job_status", status)] == 1


async def test_every_exclusion_is_needed(
    both: tuple[dict[Series, float], dict[Series, float]], moto_jobs: dict[str, str]
) -> None:
    """Dropping any one exclusion makes the servers disagree: the list is no larger than true."""
    moto, simulated = both
    for exclusion in EXCLUSIONS:
        rest = _excluded_by(tuple(e for e in EXCLUSIONS if e is not exclusion))
        left = _normalize(moto, moto_jobs, MOTO_ACCOUNT, rest)
        right = _normalize(simulated, moto_jobs, SIM_ACCOUNT, rest)
        assert _diff(left, right), f"exclusion no longer needed: {exclusion}"


def test_moto_drops_the_fields_left_out_of_the_contract(moto_url: str) -> None:
    """When moto starts keeping these, they belong in the contract's jobs."""
    iot = boto3.client("iot", region_name=REGION, endpoint_url=moto_url)
    job_id = f"c{uuid.uuid4().hex[:8]}-dropped"
    thing = iot.create_thing(thingName=f"{job_id}-thing")["thingArn"]
    iot.create_job(
        jobId=job_id,
        targets=[thing],
        document="{}",
        namespaceId="ota",
        jobTemplateArn=f"arn:aws:iot:{REGION}:{MOTO_ACCOUNT}:jobtemplate/t",
        destinationPackageVersions=[
            f"arn:aws:iot:{REGION}:{MOTO_ACCOUNT}:package/fw/version/1.0.0"
        ],
    )
    job = iot.describe_job(jobId=job_id)["job"]
    assert [field for field in DROPPED_BY_MOTO if job.get(field)] == []
