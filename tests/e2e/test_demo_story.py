"""The demo's story fires the shipped alerts, checked by promtool on series the demo records.

How, and why this way: the demo runs in real time (the bundled scenario
simulator/scenarios/demo.yaml, speed 1/60), so a simulated minute is a minute of
Prometheus time and the shipped rules apply as they are, windows and `for:` included.
Waiting 40 real minutes in a test is not an option, so the demo is recorded instead, in
simulated time:

- the demo scenario runs in the real simulator, its clock frozen and moved forward by
  hand, one 15-second step at a time (the demo Prometheus' scrape interval);
- at every step the exporter's own collector (TargetPoller, with the simulated clock)
  describes the jobs over HTTP through botocore, exactly as `make demo` does, and the
  store's exposition is parsed as Prometheus would scrape it, with the `job` and
  `instance` labels a scrape adds. Two changes: a snapshot's fetch time is the
  simulated time instead of the wall clock (the clock of this recording), and the
  request budget, a real-time rate, is lifted;
- the stuck executions are not read from the exporter: at every step they are counted
  from the simulator's own executions, as a sweep of ListJobExecutionsForJob would count
  them at that instant (`swept`), so the story checks the rules against the fleet rather
  than against the exporter's sweeps;
- the series go into a promtool test file, minute 0 being the simulator's start. Values
  of `*_timestamp_seconds` series are shifted by the same start, as promtool's clock
  starts at 0 where the simulator's starts at its start time;
- promtool evaluates the shipped rule files (exporter/mixin/rules/) over them, every
  15 s as the demo Prometheus does, and checks which alerts are firing when.

"Within 10 minutes of `make demo`" is checked at minute 9, which leaves a minute for
Prometheus to start and scrape. The stalled rollout needs its 30-minute window of history
plus 5 minutes of `for:`: it is checked at minute 36, and shown pending, not firing, at 34.
Devices stuck since before the start need the stuck alert's 15 minutes of `for:`: checked
at minute 16, and shown pending, not firing, at 14.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import re
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.aws import JobSource, JobSummary
from exporter.collect.poller import TargetPoller
from exporter.config import Executions, load_config
from exporter.model import JobSnapshot
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from simulator import ScenarioError, Simulator, load_scenario, start_simulator
from tests.conftest import ROOT
from tests.e2e.test_rules import RULES, promtool
from tests.support import WallClock

SCENARIO = ROOT / "simulator" / "scenarios" / "demo.yaml"
EXPORTER_CONFIG = ROOT / "exporter" / "demo.yaml"
STEP = 15  # seconds between scrapes, as in the demo's Prometheus
MINUTES = 40
SCRAPE_LABELS = {"job": "aws-iot-jobs-exporter", "instance": "127.0.0.1:9947"}

# (alert, job of the story that must fire it, minute by which it fires)
WITHIN_TEN_MINUTES = 9
STORY = [
    ("AwsIotJobFailureRatioHigh", "firmware-v2-failing", WITHIN_TEN_MINUTES),
    ("AwsIotJobAbortThresholdApproaching", "modem-firmware-near-abort", WITHIN_TEN_MINUTES),
    ("AwsIotJobAborted", "firmware-v2-canary-aborted", WITHIN_TEN_MINUTES),
    ("AwsIotJobExecutionsTimingOut", "camera-config-timeouts", WITHIN_TEN_MINUTES),
    # Aborted by AWS once minNumberOfExecutedThings have executed, about 22 minutes in.
    ("AwsIotJobAborted", "modem-firmware-near-abort", 30),
    ("AwsIotJobRolloutStalled", "kiosk-os-update-stalled", 36),
    # Meters silent in progress for over an hour since before the start (no timeout).
    ("AwsIotJobExecutionsStuck", "meter-firmware-stuck-devices", 16),
]
# Every job with stuck executions in the story: the meters, the kiosks that stopped
# reporting, and sensors that hang in the continuous calibration. Jobs with an
# in-progress timeout never have any: AWS times their silent devices out first.
STUCK_JOBS = {"meter-firmware-stuck-devices", "kiosk-os-update-stalled", "sensor-calibration"}

Series = dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]]
Labels = tuple[tuple[str, str], ...]

# The families of the execution sweeps that the recording derives from the simulator.
STUCK = "aws_iot_job_executions_stuck"
SWEPT_AT = "aws_iot_job_executions_sweep_timestamp_seconds"
# A family with the identity labels only, whose series give a job's labels.
IDENTITY = "aws_iot_job_last_success_timestamp_seconds"


class SimulatedTimeSource:
    """The exporter's JobSource, with snapshots stamped in simulated time."""

    def __init__(self, source: JobSource, sim: Simulator) -> None:
        self.source = source
        self.sim = sim

    async def describe_job(self, job_id: str) -> JobSnapshot:
        snapshot = await self.source.describe_job(job_id)
        return dataclasses.replace(snapshot, fetched_at=self.sim.clock.now())

    async def list_jobs(self, params: dict[str, str]) -> list[JobSummary]:
        return await self.source.list_jobs(params)


def swept(sim: Simulator, job_id: str, settings: Executions) -> dict[str, int] | None:
    """The job's stuck executions by state, counted as a sweep now would count them.

    Read from the simulator's executions (what its ListJobExecutionsForJob lists), with
    the exporter's definition: in progress longer than the job's in-progress timeout, or
    than stuck_in_progress_after without one, since startedAt; queued longer than
    stuck_queued_after since queuedAt. None when nothing is queued or in progress: a sweep
    then costs nothing and finds nothing.
    """
    fleet = sim.fleet
    job = fleet.jobs.get(job_id)
    if job is None or not job.counts["QUEUED"] + job.counts["IN_PROGRESS"]:
        return None
    now = sim.clock.now()
    timeout = job.spec.timeout_minutes
    after = {
        "IN_PROGRESS": timeout * 60.0 if timeout else settings.stuck_in_progress_after,
        "QUEUED": settings.stuck_queued_after,
    }
    stuck = {"QUEUED": 0, "IN_PROGRESS": 0}
    for exe in fleet.executions(job):
        if exe.status not in stuck:
            continue
        since = exe.queued_at
        if exe.status == "IN_PROGRESS" and exe.started_at is not None:
            since = exe.started_at
        # The API's timestamps have millisecond precision.
        if now - round(since, 3) > after[exe.status]:
            stuck[exe.status] += 1
    return {"queued": stuck["QUEUED"], "in_progress": stuck["IN_PROGRESS"]}


async def record(sim: Simulator) -> Series:
    """The demo's job series at every step of MINUTES simulated minutes."""
    config = load_config(EXPORTER_CONFIG)
    target = dataclasses.replace(config.targets[0], endpoint_url=sim.url)
    # The request budget is a real-time rate; this run is faster than real time.
    settings = dataclasses.replace(config.collector, requests_per_second=10_000.0)
    store, telemetry = MetricsStore(), SelfMetrics()
    start = sim.clock.now()
    series: Series = defaultdict(dict)
    async with JobSource(target, settings, telemetry) as source:
        collector = TargetPoller(
            target,
            settings,
            SimulatedTimeSource(source, sim),
            store,
            telemetry,
            clock=WallClock(sim.clock.now),
        )
        swept_at: dict[str, float] = {}
        for step in range(MINUTES * 60 // STEP + 1):
            await collector.collect_once()
            jobs: dict[str, Labels] = {}
            for family in text_string_to_metric_families(store.body().decode()):
                for sample in family.samples:
                    if sample.name in (STUCK, SWEPT_AT):
                        continue  # derived below, from the simulator
                    value = float(sample.value)
                    if sample.name.endswith("_timestamp_seconds"):
                        value -= start
                    labels = tuple(sorted({**sample.labels, **SCRAPE_LABELS}.items()))
                    series[(sample.name, labels)][step] = value
                    if sample.name == IDENTITY:
                        jobs[sample.labels["job_id"]] = labels
            for job_id, labels in jobs.items():
                stuck = swept(sim, job_id, config.collector.executions)
                if stuck is not None:
                    swept_at[job_id] = sim.clock.now() - start
                elif job_id in swept_at:
                    # Swept before and now with nothing pending: emptied, nothing stuck.
                    stuck = {"queued": 0, "in_progress": 0}
                else:
                    continue
                series[(SWEPT_AT, labels)][step] = swept_at[job_id]
                for state, count in stuck.items():
                    series[(STUCK, tuple(sorted((*labels, ("state", state)))))][step] = float(count)
            sim.clock.advance(STEP)
    return series


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return repr(int(value)) if value.is_integer() else repr(value)


def encode(values: dict[int, float], steps: int) -> str:
    """promtool's expanding notation: `v xN` repeats, `_xN` gaps."""
    out: list[str] = []
    step = 0
    while step < steps:
        value = values.get(step)
        run = 1
        while step + run < steps and values.get(step + run) == value:
            run += 1
        token = "_" if value is None else _number(value)
        out.append(token if run == 1 else f"{token}x{run - 1}")
        step += run
    return " ".join(out)


def selector(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    # A JSON string is a valid PromQL string literal (Go escapes).
    inner = ", ".join(f"{k}={json.dumps(v)}" for k, v in labels)
    return f"{name}{{{inner}}}"


def firing(alert: str, job_id: str) -> str:
    return f'count(ALERTS{{alertname="{alert}", alertstate="firing", job_id="{job_id}"}})'


def promtool_tests(series: Series) -> dict[str, object]:
    steps = MINUTES * 60 // STEP + 1
    checks: list[dict[str, object]] = [
        {
            "expr": firing(alert, job_id),
            "eval_time": f"{minute}m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
        for alert, job_id, minute in STORY
    ]
    # Both sides of the stall alert's window plus for: pending at 34, not yet firing.
    checks.append(
        {
            "expr": firing("AwsIotJobRolloutStalled", "kiosk-os-update-stalled"),
            "eval_time": "34m",
            "exp_samples": [],
        }
    )
    checks.append(
        {
            "expr": 'count(ALERTS{alertname="AwsIotJobRolloutStalled", alertstate="pending", '
            'job_id="kiosk-os-update-stalled"})',
            "eval_time": "34m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
    )
    # Both sides of the stuck alert's for:, and only the jobs with stuck devices fire it.
    checks.append(
        {
            "expr": 'count(ALERTS{alertname="AwsIotJobExecutionsStuck", alertstate="pending", '
            'job_id="meter-firmware-stuck-devices"})',
            "eval_time": "14m",
            "exp_samples": [{"labels": "{}", "value": 1}],
        }
    )
    checks.append(
        {
            "expr": "count by (job_id) (max_over_time("
            f'ALERTS{{alertname="AwsIotJobExecutionsStuck", alertstate="firing"}}[{MINUTES}m]))',
            "eval_time": f"{MINUTES}m",
            "exp_samples": [
                {"labels": f'{{job_id="{job_id}"}}', "value": 1} for job_id in sorted(STUCK_JOBS)
            ],
        }
    )
    # The healthy rollout is judged on real numbers and stays quiet.
    for minute in (WITHIN_TEN_MINUTES, 36):
        checks.append(
            {
                "expr": 'ALERTS{alertstate="firing", job_id="firmware-v2-healthy"}',
                "eval_time": f"{minute}m",
                "exp_samples": [],
            }
        )
    return {
        "rule_files": [str(path) for path in RULES],
        "evaluation_interval": f"{STEP}s",
        "tests": [
            {
                "interval": f"{STEP}s",
                "input_series": [
                    {"series": selector(name, labels), "values": encode(values, steps)}
                    for (name, labels), values in sorted(series.items())
                ]
                + [
                    {
                        "series": selector("up", tuple(sorted(SCRAPE_LABELS.items()))),
                        "values": f"1x{steps - 1}",
                    }
                ],
                "promql_expr_test": checks,
            }
        ],
    }


@pytest.fixture
async def frozen_demo() -> AsyncIterator[Simulator]:
    # Frozen (speed 0): the recording moves the clock; no quota, as nothing runs in real time.
    sim = await start_simulator(SCENARIO, host="127.0.0.1", port=0, speed=0, no_quotas=True)
    try:
        yield sim
    finally:
        await sim.close()


async def test_demo_story_fires_the_shipped_alerts(frozen_demo: Simulator, tmp_path: Path) -> None:
    series = await record(frozen_demo)
    story_jobs = {job_id for _, job_id, _ in STORY}
    recorded_jobs = {dict(labels).get("job_id") for _, labels in series}
    assert story_jobs <= recorded_jobs
    # New jobs arrive during the demo: the repeated push gets a copy every 20 minutes.
    assert {"gateway-config-push-0002", "gateway-config-push-0003"} <= recorded_jobs
    test_file = tmp_path / "demo_story.test.yaml"
    test_file.write_text(yaml.safe_dump(promtool_tests(series), sort_keys=False, width=1000))
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool(), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


# --- what the story needs from the simulator: jobs and timeline steps that repeat -------

REPEATING = """\
seed: 3
speed: 0
groups:
  - {name: gateways, things: 12}
  - {name: sensors, things: 5}
jobs:
  - id: config-push
    targets: [group:gateways]
    created_minutes: -25
    every_minutes: 20
    rollout: {maximum_per_minute: 100}
  - id: calibration
    targets: [group:sensors]
    target_selection: CONTINUOUS
timeline:
  - {at_minutes: 5, action: add_things, group: sensors, count: 2, every_minutes: 10}
  - {at_minutes: 30, action: remove_things, group: sensors, count: 1, every_minutes: 30}
"""


async def test_repeated_jobs_and_timeline_steps_over_http(tmp_path: Path) -> None:
    scenario = tmp_path / "repeat.yaml"
    scenario.write_text(REPEATING)
    sim = await start_simulator(scenario, port=0, speed=0, no_quotas=True)
    try:
        config = load_config(EXPORTER_CONFIG)
        target = dataclasses.replace(config.targets[0], endpoint_url=sim.url)
        async with JobSource(target, config.collector, SelfMetrics()) as source:

            async def listed() -> dict[str, str | None]:
                return {s.job_id: s.status for s in await source.list_jobs({})}

            # Copies at -25 and -5 exist at the start; one more every 20 minutes.
            assert set(await listed()) == {"config-push-0001", "config-push-0002", "calibration"}
            sim.clock.advance(60 * 60)
            jobs = await listed()
            assert {j for j in jobs if j.startswith("config-push-")} == {
                f"config-push-{n:04d}" for n in range(1, 6)
            }
            assert jobs["config-push-0001"] == "COMPLETED"
            created = [
                (await source.describe_job(f"config-push-{n:04d}")).created_at for n in (1, 2, 3)
            ]
            assert [b - a for a, b in itertools.pairwise(created)] == [1200, 1200]
            # 5 sensors, +2 at 5, 15, 25, 35, 45, 55 and -1 at 30 and 60: all notified once.
            calibration = await source.describe_job("calibration")
        assert calibration.executions_created == 5 + 2 * 6
        assert len(sim.fleet.groups["sensors"]) == 5 + 2 * 6 - 2
    finally:
        await sim.close()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "jobs:\n  - {id: x, targets: ['thing:a'], every_minutes: 0.5}\n",
            "jobs[0].every_minutes: expected a number ≥ 1, got 0.5",
        ),
        (
            f"jobs:\n  - {{id: {'j' * 60}, targets: ['thing:a'], every_minutes: 5}}\n",
            "jobs[0].id: expected at most 59 characters for a repeated job "
            "(copies are named ID-0001, ID-0002, ...)",
        ),
        (
            "jobs:\n  - id: x\n    targets: ['thing:a']\n    every_minutes: 5\n"
            "    precomputed: {status: COMPLETED, counts: {succeeded: 1}}\n",
            "jobs[0].every_minutes: a precomputed job cannot repeat",
        ),
        (
            "jobs:\n  - {id: x, targets: ['thing:a']}\n"
            "timeline:\n  - {at_minutes: 1, action: delete_job, job: x, every_minutes: 5}\n",
            "timeline[0].every_minutes: "
            "only add_things, remove_things and report_version can repeat",
        ),
        (
            "groups: [{name: g, things: 1}]\n"
            "timeline:\n  - {at_minutes: 1, action: add_things, group: g, count: 1, "
            'every_minutes: "\\0\\e"}\n',
            "timeline[0].every_minutes: expected a number, got '\\x00\\x1b'",
        ),
    ],
)
def test_repeat_errors_name_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(yaml_text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(scenario)
    assert str(e.value) == f"{scenario}: {message}"


# --- the README tells the whole story ---------------------------------------------------


def readme_story() -> list[tuple[float, str, str]]:
    """(minute, alert, job id) of each row of the README's demo story that names an alert."""
    text = (ROOT / "README.md").read_text()
    header = text.index("| Minute | Job | What happens | Alert (shipped rules) |")
    table = text[header:].split("\n\n", 1)[0].splitlines()[2:]
    rows = []
    for line in table:
        minute, job, _, alert = (cell.strip() for cell in line.strip().strip("|").split("|"))
        when = re.fullmatch(r"(?:about )?(\d+(?:\.\d+)?)", minute)
        name = re.match(r"`(AwsIot\w+)`", alert)
        if when and name:
            job_id = re.fullmatch(r"`([\w-]+)`", job)
            assert job_id, f"README demo story: {line!r} names no single job"
            rows.append((float(when.group(1)), name.group(1), job_id.group(1)))
    return rows


def fired(alert: str, job_id: str, seconds: int) -> str:
    """1 when the alert has been firing for the job at any time in the last `seconds`."""
    return (
        f'max(max_over_time(ALERTS{{alertname="{alert}", alertstate="firing", '
        f'job_id="{job_id}"}}[{seconds}s]))'
    )


async def test_the_readme_story_is_every_alert_the_demo_fires(
    frozen_demo: Simulator, tmp_path: Path
) -> None:
    """Exactly the alerts of the README's story fire in the recorded minutes, each about
    when the README says: fired by a minute after it, not yet 1.5 minutes before it (the
    README's minutes are `make demo`'s, which starts Prometheus after the fleet)."""
    story = readme_story()
    expected = {(alert, job_id) for minute, alert, job_id in story if minute <= MINUTES}
    assert {(alert, job_id) for alert, job_id, _ in STORY} <= expected
    checks: list[dict[str, object]] = [
        {
            "expr": "max by (alertname, job_id) "
            f'(max_over_time(ALERTS{{alertstate="firing"}}[{MINUTES}m]))',
            "eval_time": f"{MINUTES}m",
            "exp_samples": [
                {"labels": f'{{alertname="{alert}", job_id="{job_id}"}}', "value": 1}
                for alert, job_id in sorted(expected)
            ],
        }
    ]
    for minute, alert, job_id in story:
        if minute > MINUTES:
            continue
        by = int((minute + 1) * 60)
        checks.append(
            {
                "expr": fired(alert, job_id, by),
                "eval_time": f"{by}s",
                "exp_samples": [{"labels": "{}", "value": 1}],
            }
        )
        before = int((minute - 1.5) * 60)
        if before > 0:
            checks.append(
                {"expr": fired(alert, job_id, before), "eval_time": f"{before}s", "exp_samples": []}
            )
    tests = promtool_tests(await record(frozen_demo))
    tests["tests"][0]["promql_expr_test"] = checks  # type: ignore[index]
    test_file = tmp_path / "readme_story.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool(), "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
