"""The exporter against the simulator over real HTTP: /metrics must equal the fleet's truth.

The first tests run the exporter as a user does (`python -m exporter`, a config file, a real
port) in front of the demo fleet, freeze simulated time, and compare every series of every
job with what the simulator says DescribeJob returns. The others run the exporter in-process
(the collector and the aiohttp app on a real port) to drive the fleet step by step: abort,
rollout rate, deletion, a scheduled start, a cancel that lets executions finish.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.supervisor import Supervisor
from exporter.config import parse_config
from exporter.model import JOB_STATUSES
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from simulator import SimulatorThread
from simulator.render import describe_job
from tests.conftest import ROOT, free_port
from tests.simulator_client import Admin, wait_for
from tests.support import wait

SIMULATOR = ROOT / "simulator" / "scenarios"
REGION = "us-east-1"
STATES = {
    "numberOfQueuedThings": "queued",
    "numberOfInProgressThings": "in_progress",
    "numberOfSucceededThings": "succeeded",
    "numberOfFailedThings": "failed",
    "numberOfRejectedThings": "rejected",
    "numberOfCanceledThings": "canceled",
    "numberOfRemovedThings": "removed",
    "numberOfTimedOutThings": "timed_out",
}
# Series whose value is the exporter's own measurement, not a DescribeJob field.
MEASURED = (
    "aws_iot_job_last_success_timestamp_seconds",
    "aws_iot_job_rollout_observed_rate_per_minute",
    # From job events, compared with what the fleet published in the counts test.
    "aws_iot_job_execution_events_total",
    # From ListJobExecutionsForJob sweeps, compared with the fleet's executions below.
    "aws_iot_job_executions_by_age",
    "aws_iot_job_executions_stuck",
    "aws_iot_job_executions_stuck_threshold_seconds",
    "aws_iot_job_executions_oldest_timestamp_seconds",
    "aws_iot_job_executions_by_retry_attempt",
    "aws_iot_job_executions_sweep_timestamp_seconds",
    "aws_iot_job_execution_queued_duration_seconds_bucket",
    "aws_iot_job_execution_queued_duration_seconds_sum",
    "aws_iot_job_execution_queued_duration_seconds_count",
    "aws_iot_job_execution_run_duration_seconds_bucket",
    "aws_iot_job_execution_run_duration_seconds_sum",
    "aws_iot_job_execution_run_duration_seconds_count",
)
# The exporter's stuck thresholds by default: in progress 1 h (or the job's timeout),
# queued 24 h; and its age buckets (docs/metrics.md).
STUCK_IN_PROGRESS, STUCK_QUEUED = 3600.0, 86400.0
AGE_BUCKETS = ("300", "900", "3600", "21600", "86400", "604800", "+Inf")

Key = tuple[str, tuple[tuple[str, str], ...]]


def parse(body: str) -> dict[Key, float]:
    """Every sample of an exposition, by name and sorted labels (prometheus_client's parser)."""
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def job_series(series: dict[Key, float], job_id: str) -> dict[Key, float]:
    return {k: v for k, v in series.items() if dict(k[1]).get("job_id") == job_id}


def value(series: dict[Key, float], name: str, job_id: str, **labels: str) -> float | None:
    for (metric, pairs), v in series.items():
        got = dict(pairs)
        if metric == name and got.get("job_id") == job_id and labels.items() <= got.items():
            return v
    return None


def executions(series: dict[Key, float], job_id: str) -> dict[str, float]:
    return {
        dict(pairs)["state"]: v
        for (name, pairs), v in series.items()
        if name == "aws_iot_job_executions" and dict(pairs)["job_id"] == job_id
    }


def schedule_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()


# The demo's maintenance recurrences, read by hand rather than by exporter/cron.py: AWS
# cron is UTC, `0/30` in the minutes is every half hour, `?` any day of the month.
WINDOW_STARTS = {
    "cron(0/30 * * * ? *)": lambda t: t.minute in (0, 30),
    "cron(0 2 ? * SUN *)": lambda t: t.weekday() == 6 and (t.hour, t.minute) == (2, 0),
    # Every hour on the hour: with 60 minutes' duration, a window always open.
    "cron(0 * * * ? *)": lambda t: t.minute == 0,
}


def window_starts(expression: str, after: float, until: float) -> Iterator[float]:
    """The starts of a window in [after, until], minute by minute."""
    matches = WINDOW_STARTS[expression]
    minute = math.ceil(after / 60) * 60
    while minute <= until:
        if matches(datetime.fromtimestamp(minute, UTC)):
            yield float(minute)
        minute += 60


def expected_series(
    body: dict[str, Any], identity: dict[str, str], described_at: float
) -> dict[Key, float]:
    """The series docs/metrics.md promises for a DescribeJob body, written from the doc's rows.

    Independent of exporter/model.py and table.py on purpose: this is the doc's reading of
    the API, and the exporter must agree with it. The rate limit is left to the caller.
    """
    job = body["job"]
    out: dict[Key, float] = {}

    def add(name: str, v: float, **labels: str) -> None:
        out[(f"aws_iot_job_{name}", tuple(sorted({**identity, **labels}.items())))] = float(v)

    presigned = job.get("presignedUrlConfig") or {}
    add(
        "info",
        1,
        job_arn=job["jobArn"],
        target_selection=job.get("targetSelection", ""),
        namespace_id=job.get("namespaceId", ""),
        job_template_arn=job.get("jobTemplateArn", ""),
        presigned_url_role_arn=presigned.get("roleArn", ""),
    )
    for arn in job.get("targets", []):
        add("target_info", 1, target_arn=arn, target_type=arn.split(":")[5].split("/")[0])
    for arn in job.get("destinationPackageVersions", []):
        add("destination_package_version_info", 1, package_version_arn=arn)
    if "reasonCode" in job:
        add("reason_info", 1, reason_code=job["reasonCode"])
    for status in JOB_STATUSES:
        add("status", 1 if job["status"] == status else 0, status=status)
    details = job.get("jobProcessDetails")
    if details is not None:
        for field, state in STATES.items():
            if field in details:
                add("executions", details[field], state=state)
        add("processing_targets", len(details.get("processingTargets") or []))
    rollout = job.get("jobExecutionsRolloutConfig")
    if rollout is not None:
        if "maximumPerMinute" in rollout:
            add("rollout_maximum_per_minute", rollout["maximumPerMinute"])
        exp = rollout.get("exponentialRate")
        if exp is not None:
            add("rollout_exponential_base_rate_per_minute", exp["baseRatePerMinute"])
            add("rollout_exponential_increment_factor", exp["incrementFactor"])
            crit = exp["rateIncreaseCriteria"]
            if "numberOfNotifiedThings" in crit:
                add("rollout_exponential_notified_things_threshold", crit["numberOfNotifiedThings"])
            if "numberOfSucceededThings" in crit:
                add(
                    "rollout_exponential_succeeded_things_threshold",
                    crit["numberOfSucceededThings"],
                )
    for c in (job.get("abortConfig") or {}).get("criteriaList", []):
        add(
            "abort_threshold_ratio",
            c["thresholdPercentage"] / 100,
            failure_type=c["failureType"],
            action=c["action"],
        )
        add(
            "abort_min_executed_things",
            c["minNumberOfExecutedThings"],
            failure_type=c["failureType"],
        )
    for c in (job.get("jobExecutionsRetryConfig") or {}).get("criteriaList", []):
        add("retry_max_attempts", c["numberOfRetries"], failure_type=c["failureType"])
    if "timeoutConfig" in job:
        add("in_progress_timeout_seconds", job["timeoutConfig"]["inProgressTimeoutInMinutes"] * 60)
    if "expiresInSec" in presigned:
        add("presigned_url_expiry_seconds", presigned["expiresInSec"])
    for field, name in (
        ("createdAt", "created"),
        ("lastUpdatedAt", "last_updated"),
        ("completedAt", "completed"),
    ):
        if field in job:
            add(f"{name}_timestamp_seconds", job[field])
    scheduling = job.get("schedulingConfig") or {}
    if "startTime" in scheduling:
        add("scheduling_start_timestamp_seconds", schedule_time(scheduling["startTime"]))
    if "endTime" in scheduling:
        add("scheduling_end_timestamp_seconds", schedule_time(scheduling["endTime"]))
    if "endBehavior" in scheduling:
        add("scheduling_end_behavior", 1, end_behavior=scheduling["endBehavior"])
    for i, window in enumerate(scheduling.get("maintenanceWindows", [])):
        # The simulator's windows are cron recurrences: no start timestamp series.
        add("maintenance_window_info", 1, window=str(i), start_time=window["startTime"])
        add("maintenance_window_duration_seconds", window["durationInMinutes"] * 60, window=str(i))
        # Read at the describe: the next start within a week, and whether one started
        # less than the duration before.
        length = window["durationInMinutes"] * 60
        week = 7 * 86400 + 60
        upcoming = next(window_starts(window["startTime"], described_at, described_at + week))
        add("maintenance_window_next_start_timestamp_seconds", upcoming, window=str(i))
        recent = list(window_starts(window["startTime"], described_at - length, described_at))
        opened = [start for start in recent if start > described_at - length]
        add("maintenance_window_open", 1 if opened else 0, window=str(i))
        if opened:
            # The open occurrence closes its duration after it started.
            add("maintenance_window_close_timestamp_seconds", opened[-1] + length, window=str(i))
    for i, rollout_start in enumerate(job.get("scheduledJobRollouts", [])):
        add(
            "scheduled_rollout_start_timestamp_seconds",
            schedule_time(rollout_start["startTime"]),
            rollout=str(i),
        )
    if "forceCanceled" in job:
        add("force_canceled", 1 if job["forceCanceled"] else 0)
    if "isConcurrent" in job:
        add("is_concurrent", 1 if job["isConcurrent"] else 0)
    return out


def documented_job_metrics() -> set[str]:
    """Metric names of the 'Job metrics' table in docs/metrics.md."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## Job metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(aws_iot_job_[a-z_]+)` \|", section, re.MULTILINE))


# --- the exporter as a process, in front of the demo fleet -------------------------------


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@dataclass
class FrozenRun:
    """One scrape of the exporter process taken after simulated time stopped, and the truth."""

    series: dict[Key, float]
    stats: dict[str, Any]
    bodies: dict[str, dict[str, Any]]
    force_canceled: dict[str, bool]
    account_id: str
    events: dict[str, Any]
    # Per job, its queued and in-progress executions: (thing, status, since, retry attempt).
    waiting: dict[str, list[tuple[str, str, float, int]]]
    # The simulator's time, frozen.
    sim_now: float


@pytest.fixture(scope="module")
def frozen_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrozenRun]:
    tmp = tmp_path_factory.mktemp("e2e")
    with SimulatorThread(SIMULATOR / "demo.yaml", no_quotas=True) as sim:
        # Half an hour in, the demo has every job status and every execution state.
        http_post(f"{sim.url}/_sim/clock", {"advance_minutes": 30})
        # The one rollout criterion no demo job uses. A whole factor: the simulator's rates
        # are whole numbers (docs/simulator.md), the exporter's limit is not rounded.
        http_post(
            f"{sim.url}/_sim/jobs",
            {
                "id": "succeeded-ramp",
                "targets": ["group:cameras"],
                "rollout": {
                    "exponential_rate": {
                        "base_rate_per_minute": 2,
                        "increment_factor": 2,
                        "rate_increase_criteria": {"number_of_succeeded_things": 5},
                    }
                },
            },
        )
        config = tmp / "config.yaml"
        config.write_text(
            "collector: {interval: 1s, discovery_interval: 1s, request_timeout: 5s,"
            # The simulator's clock is half an hour ahead of the host's, then frozen.
            " executions: {requests_per_second: 20, max_clock_skew: 1d}}\n"
            f"targets:\n  - name: demo\n    region: {REGION}\n    endpoint_url: {sim.url}\n"
            "    labels: {env: e2e}\n    jobs: {discover: {}}\n"
            f"    events: {{sqs_queue_url: '{sim.queue_url}', reason_key: reason,"
            " reconcile_interval: 1s}\n"
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = tmp / "exporter.log"
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter", "--config.file", str(config),
                 "--web.listen-address", f"127.0.0.1:{port}"],
                stdout=log_file, stderr=log_file, env=dict(os.environ), cwd=ROOT,
            )  # fmt: skip
            try:
                wait(lambda: http_get(f"{base}/readyz")[0] == 200, 30, "exporter ready")

                def scrape() -> dict[Key, float]:
                    status, body = http_get(f"{base}/metrics")
                    assert status == 200
                    return parse(body.decode())

                # While the fleet moves, the exporter follows it: a second describe of the
                # healthy rollout gives it an observed rate.
                wait(
                    lambda: value(
                        scrape(),
                        "aws_iot_job_rollout_observed_rate_per_minute",
                        "firmware-v2-healthy",
                    ),
                    30,
                    "observed rate of firmware-v2-healthy",
                )
                http_post(f"{sim.url}/_sim/clock", {"speed": 0})
                # A describe answered before the freeze can be parsed a moment after it.
                frozen_at = time.time() + 0.25
                stats = json.loads(http_get(f"{sim.url}/_sim/stats")[1])

                def settled() -> dict[Key, float] | None:
                    queue = json.loads(http_get(f"{sim.url}/_sim/events")[1])
                    if queue["waiting"] or queue["in_flight"]:
                        return None  # every event applied, so that the counts are whole
                    series = scrape()
                    for job_id in stats["jobs"]:
                        described = value(
                            series, "aws_iot_job_last_success_timestamp_seconds", job_id
                        )
                        # Terminal jobs that stopped changing are described once, then kept.
                        done = value(series, "aws_iot_job_is_concurrent", job_id) == 0 and any(
                            value(series, "aws_iot_job_status", job_id, status=s) == 1
                            for s in ("COMPLETED", "CANCELED")
                        )
                        if described is None or (described < frozen_at and not done):
                            return None
                        # A job with queued or in-progress executions is swept afterwards.
                        waiting = sum(
                            value(series, "aws_iot_job_executions", job_id, state=s) or 0
                            for s in ("queued", "in_progress")
                        )
                        swept = value(
                            series, "aws_iot_job_executions_sweep_timestamp_seconds", job_id
                        )
                        if waiting and (swept is None or swept < frozen_at):
                            return None
                    return series

                series = wait(settled, 30, "every job described and swept after the freeze")

                def truth(
                    s: Any,
                ) -> tuple[dict[str, Any], dict[str, bool], dict[str, list[Any]], float]:
                    s.fleet.advance(s.clock.now())
                    bodies = {
                        j: describe_job(s.fleet, job, REGION) for j, job in s.fleet.jobs.items()
                    }
                    waiting = {
                        j: [
                            (
                                e.thing,
                                e.status,
                                e.started_at if e.status == "IN_PROGRESS" else e.queued_at,
                                e.retry_attempt,
                            )
                            for e in s.fleet.executions(job)
                            if e.status in ("QUEUED", "IN_PROGRESS")
                        ]
                        for j, job in s.fleet.jobs.items()
                    }
                    forced = {j: job.force_canceled for j, job in s.fleet.jobs.items()}
                    return bodies, forced, waiting, s.clock.now()

                bodies, forced, waiting, sim_now = sim.call(truth)
                events = json.loads(http_get(f"{sim.url}/_sim/events")[1])
                yield FrozenRun(
                    series, stats, bodies, forced, stats["account_id"], events, waiting, sim_now
                )
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        assert process.returncode == 0, log_path.read_text()


def test_counts_equal_the_simulators_ground_truth(frozen_demo: FrozenRun) -> None:
    series, jobs = frozen_demo.series, frozen_demo.stats["jobs"]
    exported = {dict(k[1])["job_id"] for k in series if k[0].startswith("aws_iot_job_")}
    assert exported == set(jobs)
    # The demo at this point has every status and every execution state somewhere.
    assert {j["status"] for j in jobs.values()} == set(JOB_STATUSES)
    for job_id, truth in jobs.items():
        for status in JOB_STATUSES:
            want = 1 if truth["status"] == status else 0
            assert value(series, "aws_iot_job_status", job_id, status=status) == want, job_id
        assert executions(series, job_id) == truth["executions"], job_id
        assert value(series, "aws_iot_job_is_concurrent", job_id) == int(truth["isConcurrent"])
        forced = value(series, "aws_iot_job_force_canceled", job_id)
        if truth["status"] == "CANCELED":
            assert forced == int(frozen_demo.force_canceled[job_id]), job_id
        else:
            assert forced is None, job_id
        info = value(series, "aws_iot_job_info", job_id, target_selection=truth["targetSelection"])
        assert info == 1, job_id
        if "jobExecutionsRolloutConfig" in frozen_demo.bodies[job_id]["job"]:
            limit = value(series, "aws_iot_job_rollout_rate_limit_per_minute", job_id)
            assert limit == truth["rateLimitPerMinute"], job_id
        # Every failed, rejected and timed-out execution event the fleet published since
        # the queue existed is counted once.
        published = frozen_demo.events["execution_failures"].get(job_id, {})
        for status in ("FAILED", "REJECTED", "TIMED_OUT"):
            counted = sum(
                v
                for (name, pairs), v in series.items()
                if name == "aws_iot_job_execution_events_total"
                and dict(pairs)["job_id"] == job_id
                and dict(pairs)["status"] == status
            )
            assert counted == published.get(status, 0), (job_id, status)
    reasons = {
        dict(pairs)["reason"]
        for name, pairs in series
        if name == "aws_iot_job_execution_events_total"
    }
    assert reasons and "" not in reasons, reasons
    # Every state is non-zero for some job, so none of the comparisons above was vacuous.
    for state in STATES.values():
        assert sum(executions(series, j)[state] for j in jobs) > 0, state
    assert sum(value(series, "aws_iot_job_force_canceled", j) or 0 for j in jobs) >= 1


def test_sweeps_equal_the_simulators_executions(frozen_demo: FrozenRun) -> None:
    """Ages, stuck counts, oldest and retries of every job, from the fleet's executions at
    the simulator's frozen instant: the exporter measures ages on the server's clock (the
    answers' Date header, whole seconds)."""
    series = frozen_demo.series
    now = float(math.floor(frozen_demo.sim_now))
    stuck_somewhere = 0
    for job_id, waiting in frozen_demo.waiting.items():
        swept = value(series, "aws_iot_job_executions_sweep_timestamp_seconds", job_id)
        if not waiting:
            continue
        assert swept is not None, job_id
        body = frozen_demo.bodies[job_id]["job"]
        timeout = body.get("timeoutConfig", {})
        minutes = timeout.get("inProgressTimeoutInMinutes")
        thresholds = {
            "in_progress": minutes * 60.0 if minutes else STUCK_IN_PROGRESS,
            "queued": STUCK_QUEUED,
        }
        for status, state in (("QUEUED", "queued"), ("IN_PROGRESS", "in_progress")):
            mine = [(thing, since, retry) for thing, st, since, retry in waiting if st == status]
            ages = [now - since for _, since, _ in mine]
            for le in AGE_BUCKETS:
                want = len(ages) if le == "+Inf" else sum(age <= float(le) for age in ages)
                got = value(
                    series, "aws_iot_job_executions_by_age", job_id, state=state, max_age=le
                )
                assert got == want, (job_id, state, le, got, want)
            stuck = sum(age > thresholds[state] for age in ages)
            stuck_somewhere += stuck
            got = value(series, "aws_iot_job_executions_stuck", job_id, state=state)
            assert got == stuck, (job_id, state, got, stuck)
            threshold = value(
                series, "aws_iot_job_executions_stuck_threshold_seconds", job_id, state=state
            )
            assert threshold == thresholds[state], (job_id, state)
            oldest = value(
                series, "aws_iot_job_executions_oldest_timestamp_seconds", job_id, state=state
            )
            if mine:
                assert oldest is not None
                assert math.isclose(oldest, min(since for _, since, _ in mine), abs_tol=1e-3)
            else:
                assert oldest is None, (job_id, state)
            # Attempts from 0 to the job's largest numberOfRetries, or the highest seen.
            criteria = (body.get("jobExecutionsRetryConfig") or {}).get("criteriaList", [])
            limit = max([c["numberOfRetries"] for c in criteria] + [r for *_, r in waiting])
            for attempt in range(11):
                got = value(
                    series,
                    "aws_iot_job_executions_by_retry_attempt",
                    job_id,
                    state=state,
                    retry_attempt=str(attempt),
                )
                want = sum(retry == attempt for _, _, retry in mine) if attempt <= limit else None
                assert got == want, (job_id, attempt)
    # The demo has stuck devices, so the comparison above was not vacuous.
    assert stuck_somewhere > 0


def test_every_describe_job_field_reaches_its_series(frozen_demo: FrozenRun) -> None:
    series = frozen_demo.series
    for job_id, body in frozen_demo.bodies.items():
        identity = {
            "target": "demo",
            "region": REGION,
            "account_id": frozen_demo.account_id,
            "job_id": job_id,
            "env": "e2e",
        }
        described_at = value(series, "aws_iot_job_last_success_timestamp_seconds", job_id)
        assert described_at is not None
        want = expected_series(body, identity, described_at)
        got = {k: v for k, v in job_series(series, job_id).items() if k[0] not in MEASURED}
        rate = "aws_iot_job_rollout_rate_limit_per_minute"
        got.pop(next((k for k in got if k[0] == rate), ("", ())), None)
        stamped = {k for k in want if k[0].endswith("_timestamp_seconds")}
        assert set(got) == set(want), (
            job_id,
            sorted(set(got) - set(want)),
            sorted(set(want) - set(got)),
        )
        for key, v in want.items():
            # Epoch seconds with millisecond precision, through botocore's datetimes.
            tolerance = 1e-3 if key in stamped else 0
            assert math.isclose(got[key], v, abs_tol=tolerance), (job_id, key, got[key], v)
        assert value(series, "aws_iot_job_last_success_timestamp_seconds", job_id) is not None
    # Every job metric of the docs is exercised by some demo job, except the one the
    # simulator cannot produce: its maintenance windows are cron recurrences, never dates.
    seen = {name for name, _ in series if name.startswith("aws_iot_job_")}
    # A histogram's series are its family's name and a suffix.
    seen |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in seen}
    missing = documented_job_metrics() - seen
    assert missing == {"aws_iot_job_maintenance_window_start_timestamp_seconds"}


# --- the exporter in-process, on a real port ---------------------------------------------


@dataclass
class Running:
    url: str
    admin: Admin
    sim: SimulatorThread
    session: aiohttp.ClientSession

    async def scrape(self) -> dict[Key, float]:
        async with self.session.get(f"{self.url}/metrics") as response:
            assert response.status == 200
            return parse(await response.text())

    async def until(self, check: Any, deadline: float = 15) -> dict[Key, float]:
        """Scrape until `check(series)` holds; fail at the deadline."""

        async def probe() -> dict[Key, float] | None:
            series = await self.scrape()
            return series if check(series) else None

        return await wait_for(probe, deadline=deadline, interval=0.05)


@contextlib.asynccontextmanager
async def exporter_for(sim: SimulatorThread, interval: str = "200ms") -> AsyncIterator[Running]:
    """Supervisor + aiohttp app on a free port, discovering every job of the simulator."""
    cfg = parse_config(
        f"collector: {{interval: {interval}, discovery_interval: {interval}}}\n"
        f"targets:\n  - name: sim\n    region: {REGION}\n    endpoint_url: {sim.url}\n"
        "    jobs: {discover: {}}\n"
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(cfg, store, telemetry)
    runner = web.AppRunner(build_app(store, telemetry, lambda: collector.ready))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await collector.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Running(f"http://127.0.0.1:{port}", Admin(session, sim.url), sim, session)
    finally:
        await collector.stop()
        await runner.cleanup()


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


async def test_abort_scenario_ends_canceled_with_its_counts() -> None:
    with SimulatorThread(SIMULATOR / "abort.yaml", no_quotas=True) as sim:
        async with exporter_for(sim) as run:

            def finished(series: dict[Key, float]) -> bool:
                return (
                    value(series, "aws_iot_job_status", "canary-aborted", status="CANCELED") == 1
                    and value(series, "aws_iot_job_is_concurrent", "canary-aborted") == 0
                    and value(series, "aws_iot_job_status", "fleet-healthy", status="COMPLETED")
                    == 1
                )

            series = await run.until(finished, deadline=30)
            truth = await run.admin.job("canary-aborted")
    counts = executions(series, "canary-aborted")
    assert counts == truth["executions"]
    executed = counts["succeeded"] + counts["failed"] + counts["rejected"] + counts["timed_out"]
    threshold = value(
        series, "aws_iot_job_abort_threshold_ratio", "canary-aborted", failure_type="FAILED"
    )
    minimum = value(series, "aws_iot_job_abort_min_executed_things", "canary-aborted")
    assert threshold == 0.25 and minimum == 10
    assert counts["canceled"] > 0
    assert executed >= minimum
    assert counts["failed"] / executed >= threshold
    assert counts["queued"] == counts["in_progress"] == 0
    reason = "ABORT_CRITERIA_MET"
    assert value(series, "aws_iot_job_reason_info", "canary-aborted", reason_code=reason) == 1
    assert value(series, "aws_iot_job_force_canceled", "canary-aborted") == 0
    assert value(series, "aws_iot_job_completed_timestamp_seconds", "canary-aborted") is not None
    # The healthy job's ratio stays under its own threshold.
    healthy = executions(series, "fleet-healthy")
    done = healthy["succeeded"] + healthy["failed"] + healthy["rejected"] + healthy["timed_out"]
    all_threshold = value(
        series, "aws_iot_job_abort_threshold_ratio", "fleet-healthy", failure_type="ALL"
    )
    assert all_threshold == 0.5
    assert (healthy["failed"] + healthy["rejected"] + healthy["timed_out"]) / done < all_threshold


RATE_SPEED = 1.0  # simulated minutes per real second
RATE_SCENARIO = f"""\
seed: 5
speed: {RATE_SPEED}
devices: {{queued_minutes: [0.1, 0.5], in_progress_minutes: [0.5, 1]}}
groups:
  - {{name: rollout, things: 3000}}
jobs:
  - id: ramp
    targets: [group:rollout]
    rollout:
      maximum_per_minute: 120
      exponential_rate:
        base_rate_per_minute: 15
        increment_factor: 2
        rate_increase_criteria: {{number_of_notified_things: 30}}
"""


@pytest.mark.slow
async def test_observed_rollout_rate_stays_within_the_limit(tmp_path: Path) -> None:
    """Over several cycles of a running rollout, observed ≤ limit up to measurement slack.

    The exporter measures executions per minute of its own clock; the simulator runs
    RATE_SPEED simulated minutes per real second, so the observed rate is divided by
    60 * RATE_SPEED to be in the job's minutes. Slack: each describe is timed when its
    answer is parsed, not when the server read its clock (a few ms over a 1 s window), and
    a window can hold one notification more than the limit times its length.
    """
    with SimulatorThread(scenario(tmp_path, RATE_SCENARIO), no_quotas=True) as sim:
        async with exporter_for(sim, interval="1s") as run:
            seen: dict[float, tuple[float, float]] = {}

            def sample(series: dict[Key, float]) -> bool:
                at = value(series, "aws_iot_job_last_success_timestamp_seconds", "ramp")
                observed = value(series, "aws_iot_job_rollout_observed_rate_per_minute", "ramp")
                limit = value(series, "aws_iot_job_rollout_rate_limit_per_minute", "ramp")
                if at is not None and observed is not None and limit is not None:
                    seen[at] = (observed / (60 * RATE_SPEED), limit)
                return len(seen) >= 6

            await run.until(sample, deadline=20)
    limits = [limit for _, limit in seen.values()]
    assert limits == sorted(limits) and limits[-1] > limits[0], seen  # it ramped up
    for observed, limit in seen.values():
        assert observed <= limit * 1.1 + 1, seen
    # The rollout used its rate: the measurement is not trivially under the limit.
    assert max(observed / limit for observed, limit in seen.values()) > 0.6, seen


STEP_SCENARIO = """\
seed: 7
speed: 0
deletion_minutes: 10
cancel_minutes: 1
devices: {queued_minutes: [0.1, 0.2], in_progress_minutes: [5, 8]}
groups:
  - {name: devices, things: 40}
jobs:
  - {id: bystander, targets: [group:devices], rollout: {maximum_per_minute: 1000}}
"""


async def test_deleted_job_disappears_after_deletion_in_progress(tmp_path: Path) -> None:
    with SimulatorThread(scenario(tmp_path, STEP_SCENARIO)) as sim:
        async with exporter_for(sim) as run:
            await run.admin.create_job({"id": "doomed", "targets": ["group:devices"]})
            await run.until(
                lambda s: value(s, "aws_iot_job_status", "doomed", status="IN_PROGRESS") == 1
            )
            await run.admin.delete("doomed")
            series = await run.until(
                lambda s: (
                    value(s, "aws_iot_job_status", "doomed", status="DELETION_IN_PROGRESS") == 1
                )
            )
            assert value(series, "aws_iot_job_status", "doomed", status="IN_PROGRESS") == 0
            await run.admin.advance(11)
            series = await run.until(lambda s: not job_series(s, "doomed"))
            assert "doomed" in (await run.admin.stats())["deleted"]
    assert value(series, "aws_iot_job_info", "bystander") == 1
    assert series[("aws_iot_jobs_exporter_jobs_missing", (("target", "sim"),))] == 0


async def test_scheduled_job_goes_from_scheduled_to_in_progress(tmp_path: Path) -> None:
    with SimulatorThread(scenario(tmp_path, STEP_SCENARIO)) as sim:
        async with exporter_for(sim) as run:
            created = await run.admin.create_job(
                {
                    "id": "later",
                    "targets": ["group:devices"],
                    "scheduling": {"start_minutes": 30, "end_behavior": "STOP_ROLLOUT"},
                }
            )
            start = schedule_time(created["job"]["schedulingConfig"]["startTime"])
            series = await run.until(
                lambda s: value(s, "aws_iot_job_status", "later", status="SCHEDULED") == 1
            )
            assert value(series, "aws_iot_job_scheduling_start_timestamp_seconds", "later") == start
            assert executions(series, "later") == dict.fromkeys(STATES.values(), 0)
            clock = await run.admin.advance(0)
            assert clock["now"] < start
            await run.admin.advance((start - clock["now"]) / 60)
            series = await run.until(
                lambda s: value(s, "aws_iot_job_status", "later", status="IN_PROGRESS") == 1
            )
    assert value(series, "aws_iot_job_status", "later", status="SCHEDULED") == 0
    assert sum(executions(series, "later").values()) >= 1


async def test_cancel_without_force_counts_executions_that_finish_later(tmp_path: Path) -> None:
    """A cancel without force lets in-progress executions run to their end (AWS's CancelJob);
    the job is CANCELED and not concurrent meanwhile, yet its counts still change."""
    with SimulatorThread(scenario(tmp_path, STEP_SCENARIO)) as sim:
        async with exporter_for(sim) as run:
            await run.admin.advance(1)
            before = await run.admin.job("bystander")
            assert before["executions"]["in_progress"] > 0
            await run.admin.cancel("bystander", force=False, reason_code="OPERATOR")
            await run.admin.advance(2)  # past cancel_minutes: no longer concurrent
            await run.until(
                lambda s: (
                    value(s, "aws_iot_job_status", "bystander", status="CANCELED") == 1
                    and value(s, "aws_iot_job_is_concurrent", "bystander") == 0
                )
            )
            await run.admin.advance(10)  # every execution in progress has finished
            truth = (await run.admin.job("bystander"))["executions"]
            assert truth["in_progress"] == 0 and truth["succeeded"] > 0
            try:
                await run.until(lambda s: executions(s, "bystander") == truth, deadline=5)
            except TimeoutError:
                assert executions(await run.scrape(), "bystander") == truth
