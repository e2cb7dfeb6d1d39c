"""Job events: parsing hostile bodies, de-duplication, reasons, and the event-driven collector.

The collector tests run the exporter in-process against the simulator over real HTTP:
the simulator's fleet publishes AWS's event payloads into its SQS-compatible queue, and
the exporter reads them through aiobotocore's real SQS client (the JSON protocol).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.supervisor import Supervisor
from exporter.config import ConfigError, parse_config
from exporter.events import (
    OTHER_REASON,
    MalformedEvent,
    ReasonCounts,
    RecentIds,
    parse_event,
    sanitise_reason,
)
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from simulator import Simulator, start_simulator
from tests.simulator_client import Admin
from tests.support import until

EXECUTION = {
    "eventType": "JOB_EXECUTION",
    "eventId": "5b4e2f3c-2f0a-4c5e-9a59-0c6c1c3a6e01",
    "timestamp": 1_700_000_000,
    "operation": "failed",
    "jobId": "fw-1",
    "thingArn": "arn:aws:iot:us-east-1:123456789012:thing/t-1",
    "status": "FAILED",
    "statusDetails": {"reason": "checksum_mismatch", "step": "verify"},
}
JOB_COMPLETED = {
    "eventType": "JOB",
    "eventId": "6c1e8a8a-0d55-4d4c-b5a6-1d2f3b4c5d6e",
    "timestamp": 1_700_000_100,
    "operation": "completed",
    "jobId": "fw-1",
    "status": "COMPLETED",
    "targetSelection": "SNAPSHOT",
    "completedAt": 1_700_000_100_000,
    "jobProcessDetails": {
        "numberOfCanceledThings": 0,
        "numberOfRejectedThings": 0,
        "numberOfFailedThings": 1,
        "numberOfRemovedThings": 0,
        "numberOfSucceededThings": 9,
    },
}


# --- parsing ------------------------------------------------------------------------------


def test_parse_execution_event_with_reason() -> None:
    event = parse_event(json.dumps(EXECUTION), reason_key="reason")
    assert (event.kind, event.name, event.job_id, event.status) == (
        "execution",
        "failed",
        "fw-1",
        "FAILED",
    )
    assert event.reason == "checksum_mismatch"
    assert event.is_failure and not event.deletes_job
    assert event.label == "execution_failed"
    assert event.timestamp == 1_700_000_000
    assert parse_event(json.dumps(EXECUTION)).reason is None  # no reason_key configured


def test_parse_job_event() -> None:
    event = parse_event(json.dumps(JOB_COMPLETED))
    assert (event.kind, event.label, event.is_failure) == ("job", "job_completed", False)
    deleted = parse_event(json.dumps({**JOB_COMPLETED, "operation": "deleted"}))
    assert deleted.deletes_job


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{oops", "not JSON"),
        ("[" * 60_000, "not JSON"),
        ("[]", "not a JSON object"),
        ("null", "not a JSON object"),
        (json.dumps({**EXECUTION, "eventType": "SOMETHING"}), "eventType"),
        (json.dumps({**EXECUTION, "jobId": "../../etc/passwd"}), "jobId"),
        (json.dumps({**EXECUTION, "jobId": "x" * 65}), "jobId"),
        (json.dumps({**EXECUTION, "jobId": 7}), "jobId"),
        (json.dumps({**EXECUTION, "eventId": ""}), "eventId"),
        (json.dumps({**EXECUTION, "eventId": "e" * 129}), "eventId"),
        ("x" * 70_000, "larger than"),
    ],
)
def test_parse_refuses_what_is_not_an_event(body: str, message: str) -> None:
    with pytest.raises(MalformedEvent, match=message):
        parse_event(body, reason_key="reason")


@pytest.mark.parametrize("stamp", [1e309, -1, float("nan"), "1700000000", True, 10**40])
def test_unusable_timestamps_are_dropped_not_fatal(stamp: Any) -> None:
    body = json.dumps({**EXECUTION, "timestamp": stamp}) if stamp == stamp else None
    if body is None:  # NaN is not JSON; Python writes it anyway, as a hostile peer might
        body = json.dumps({**EXECUTION, "timestamp": stamp}, allow_nan=True)
    assert parse_event(body).timestamp is None


def test_reasons_are_sanitised_and_cut() -> None:
    hostile = 'esc\x1b[2J"quote\\back\nnew\x00nul' + "é" * 10 + "y" * 100
    body = json.dumps({**EXECUTION, "statusDetails": {"reason": hostile}})
    reason = parse_event(body, reason_key="reason").reason
    assert reason is not None and len(reason) == 64
    assert all(" " <= c <= "~" for c in reason)
    assert sanitise_reason("ok_reason-1") == "ok_reason-1"
    # A reason that is not a string counts as no reason.
    body = json.dumps({**EXECUTION, "statusDetails": {"reason": {"nested": 1}}})
    assert parse_event(body, reason_key="reason").reason is None


def test_recent_ids_drop_duplicates_within_capacity() -> None:
    recent = RecentIds(capacity=3)
    assert [recent.seen(i) for i in ("a", "b", "a", "c", "d")] == [
        False,
        False,
        True,
        False,
        False,
    ]
    assert len(recent) == 3
    assert recent.seen("a")  # refreshed by its repeat, so still remembered
    assert not recent.seen("b")  # the oldest, forgotten


def test_reasons_per_job_are_bounded() -> None:
    counts = ReasonCounts(max_reasons=2)
    for reason in ("a", "b", "c", "d", "a"):
        counts.count("job", "FAILED", reason)
    counts.count("job", "TIMED_OUT", "")
    assert dict(((s, r), v) for s, r, v in counts.samples("job")) == {
        ("FAILED", "a"): 2,
        ("FAILED", "b"): 1,
        ("FAILED", OTHER_REASON): 2,
        ("TIMED_OUT", OTHER_REASON): 1,
    }
    counts.forget("job")
    assert list(counts.samples("job")) == []


# --- configuration ------------------------------------------------------------------------


def _config(events: str) -> str:
    return textwrap.dedent(
        """
        targets:
          - name: t
            region: us-east-1
            jobs: {discover: {}}
            events: EVENTS
        """
    ).replace("EVENTS", events)


def test_events_config_defaults_and_endpoint() -> None:
    config = parse_config(_config("{sqs_queue_url: 'http://127.0.0.1:9/123456789012/q'}"))
    events = config.targets[0].events
    assert events is not None
    assert events.sqs_endpoint == "http://127.0.0.1:9"
    assert events.reconcile_interval == 300 and events.max_reasons_per_job == 10
    aws = "https://sqs.us-east-1.amazonaws.com/123456789012/q"
    assert (
        parse_config(_config(f"{{sqs_queue_url: '{aws}'}}")).targets[0].events.sqs_endpoint is None
    )  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("events", "path"),
    [
        ("{}", "targets[0].events.sqs_queue_url"),
        ("{sqs_queue_url: 'not a url'}", "targets[0].events.sqs_queue_url"),
        (
            "{sqs_queue_url: 'http://h/123456789012/q', max_reasons_per_job: 0}",
            "targets[0].events.max_reasons_per_job",
        ),
        ("{sqs_queue_url: 'http://h/123456789012/q', bogus: 1}", "targets[0].events.bogus"),
    ],
)
def test_events_config_errors_name_the_field(events: str, path: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(_config(events), "exporter.yaml")
    assert error.value.path == path
    assert "exporter.yaml" in str(error.value)


# --- the event-driven collector against the simulator ---------------------------------------

SCENARIO = """
seed: 7
account_id: "123456789012"
region: us-east-1
devices:
  queued_minutes: [0.1, 0.2]
  in_progress_minutes: [1, 2]
groups:
  - {name: fleet, things: 40}
jobs:
  - id: fw-failing
    targets: [group:fleet]
    timeout_minutes: 30
    devices:
      failure_probability: 0.5
      failure_reasons: {checksum_mismatch: 3, low_battery: 1}
"""


@dataclass
class Running:
    sim: Simulator
    admin: Admin
    url: str
    telemetry: SelfMetrics
    collector: Supervisor

    async def series(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            text = await response.text()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    async def value(self, name: str, **labels: str) -> float | None:
        for (metric, pairs), v in (await self.series()).items():
            if metric == name and labels.items() <= dict(pairs).items():
                return v
        return None

    async def total(self, name: str, **labels: str) -> float:
        found = [
            v
            for (metric, pairs), v in (await self.series()).items()
            if metric == name and labels.items() <= dict(pairs).items()
        ]
        return sum(found)


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    interval = getattr(request, "param", {}).get("interval", "2m")
    reconcile = getattr(request, "param", {}).get("reconcile", "1h")
    scenario = tmp_path / "events.yaml"
    scenario.write_text(SCENARIO)
    sim = await start_simulator(scenario, speed=0, no_quotas=True)
    config = parse_config(
        textwrap.dedent(
            f"""
            collector:
              interval: {interval}
              discovery_interval: 1h
              requests_per_second: 50
              request_timeout: 5s
              max_attempts: 1
            targets:
              - name: sim
                region: us-east-1
                endpoint_url: {sim.url}
                jobs: {{discover: {{}}}}
                events:
                  sqs_queue_url: {sim.queue_url}
                  reason_key: reason
                  reconcile_interval: {reconcile}
                  min_describe_interval: 1ms
            """
        )
    )
    store, telemetry = MetricsStore(), SelfMetrics()
    collector = Supervisor(config, store, telemetry)
    app = build_app(store, telemetry, lambda: collector.ready)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await collector.start()
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, sim.url)
        run = Running(sim, admin, f"http://127.0.0.1:{port}/metrics", telemetry, collector)
        try:
            await until(lambda: _ready(collector), within=20)
            yield run
        finally:
            await collector.stop()
            await runner.cleanup()
            await sim.close()


async def _ready(collector: Supervisor) -> bool:
    return collector.ready


async def test_events_refresh_a_job_long_before_the_interval(running: Running) -> None:
    run = running
    before = await run.value("aws_iot_job_executions", job_id="fw-failing", state="failed")
    assert before == 0
    # Five simulated minutes: every execution finishes, about half of them failed. The
    # interval is two minutes of real time, so only events can show this in seconds.
    await run.admin.advance(5)
    truth = await run.admin.job("fw-failing")
    failed = truth["executions"]["failed"]
    assert failed > 0

    async def shown() -> bool:
        got = await run.value("aws_iot_job_executions", job_id="fw-failing", state="failed")
        # Every failure counted once, by reason.
        events = await run.total("aws_iot_job_execution_events_total", job_id="fw-failing")
        return got == failed and events == failed

    await until(shown, within=10)
    series = await run.series()
    reasons = {
        dict(pairs)["reason"]
        for (name, pairs), _ in series.items()
        if name == "aws_iot_job_execution_events_total"
    }
    assert reasons <= {"checksum_mismatch", "low_battery"} and reasons
    assert await run.value("aws_iot_jobs_exporter_events_driven", target="sim") == 1
    assert await run.value("aws_iot_jobs_exporter_events_describes_total", target="sim") >= 1  # type: ignore[operator]
    # The describes were events' doing: the periodic cycle has not run again.
    assert run.collector.targets["sim"].cycles == 1


async def test_duplicated_and_reordered_deliveries_change_no_value(running: Running) -> None:
    run = running
    await run.admin._call("POST", "/_sim/events", {"duplicate_probability": 1.0, "reorder": True})
    await run.admin.advance(5)
    truth = await run.admin.job("fw-failing")
    failed = truth["executions"]["failed"]
    queue = await run.admin._call("GET", "/_sim/events")
    published = queue["published"]

    async def drained() -> bool:
        q = await run.admin._call("GET", "/_sim/events")
        got = await run.value("aws_iot_job_executions", job_id="fw-failing", state="failed")
        return q["waiting"] == 0 and q["in_flight"] == 0 and got == failed

    await until(drained, within=15)
    assert await run.total("aws_iot_job_execution_events_total", job_id="fw-failing") == failed
    duplicates = await run.value("aws_iot_jobs_exporter_events_duplicates_total", target="sim")
    assert duplicates == published  # every event came twice, and counted once
    received = await run.total("aws_iot_jobs_exporter_events_received_total", target="sim")
    assert received == 2 * published


@pytest.mark.parametrize("running", [{"interval": "1s", "reconcile": "1h"}], indirect=True)
async def test_a_stopped_queue_falls_back_to_polling_and_recovers(running: Running) -> None:
    run = running

    async def driven() -> bool:
        return await run.value("aws_iot_jobs_exporter_events_driven", target="sim") == 1

    await until(driven, within=10)
    # Executions go from queued to in progress: AWS publishes no event for that, and with
    # events flowing the job waits for its reconcile (an hour here).
    await run.admin.advance(0.5)
    truth = await run.admin.job("fw-failing")
    in_progress = truth["executions"]["in_progress"]
    assert in_progress > 0
    cycles = run.collector.targets["sim"].cycles
    await until(lambda: _cycles_past(run, cycles + 2), within=10)
    got = await run.value("aws_iot_job_executions", job_id="fw-failing", state="in_progress")
    assert got == 0

    await run.admin._call("POST", "/_sim/events", {"stopped": True})

    async def polled() -> bool:
        driven = await run.value("aws_iot_jobs_exporter_events_driven", target="sim")
        got = await run.value("aws_iot_job_executions", job_id="fw-failing", state="in_progress")
        return driven == 0 and got == in_progress

    await until(polled, within=30)
    errors = await run.value("aws_iot_jobs_exporter_events_consumer_errors_total", target="sim")
    assert errors is not None and errors >= 1

    await run.admin._call("POST", "/_sim/events", {"stopped": False})

    await until(driven, within=40)


async def _cycles_past(run: Running, cycles: int) -> bool:
    return run.collector.targets["sim"].cycles >= cycles


async def test_an_unknown_job_is_described_at_once_and_a_deleted_one_dropped(
    running: Running,
) -> None:
    run = running
    await run.admin.create_job({"id": "fw-new", "targets": ["group:fleet"]})
    # Discovery is an hour away: the first execution event of the new job brings it in.
    await run.admin.advance(5)

    async def appeared() -> bool:
        return await run.value("aws_iot_job_info", job_id="fw-new") == 1

    await until(appeared, within=10)
    await run.admin.delete("fw-new")
    await run.admin.advance(30)  # past the deletion's duration: the `deleted` event

    async def gone() -> bool:
        return await run.value("aws_iot_job_info", job_id="fw-new") is None

    await until(gone, within=10)


# --- the same consumer against moto's SQS (contract) ---------------------------------------


async def test_consumer_against_motos_sqs(moto_url: str) -> None:
    """The consumer reads, de-duplicates and deletes through moto's SQS, as against AWS."""
    from aiobotocore.session import get_session

    session = get_session()
    async with (
        session.create_client("sqs", region_name="us-east-1", endpoint_url=moto_url) as sqs,
        session.create_client("iot", region_name="us-east-1", endpoint_url=moto_url) as iot,
    ):
        queue_url = (await sqs.create_queue(QueueName="iot-job-events-contract"))["QueueUrl"]
        await iot.create_thing(thingName="contract-thing")
        thing_arn = (await iot.describe_thing(thingName="contract-thing"))["thingArn"]
        await iot.create_job(jobId="contract-job", targets=[thing_arn], document="{}")
        failed = {**EXECUTION, "jobId": "contract-job", "eventId": "contract-1"}
        bodies = [
            json.dumps(failed),
            json.dumps(failed),  # a duplicate delivery
            json.dumps({**failed, "eventId": "contract-2", "statusDetails": {"reason": "x" * 99}}),
            "{not an event",
        ]
        for body in bodies:
            await sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        # moto names the queue by its own host; the account and name are what matter.
        path = "/" + "/".join(queue_url.rstrip("/").split("/")[-2:])
        config = parse_config(
            textwrap.dedent(
                f"""
                collector: {{interval: 2m, discovery_interval: 1h, request_timeout: 5s}}
                targets:
                  - name: moto
                    region: us-east-1
                    endpoint_url: {moto_url}
                    jobs: {{discover: {{}}}}
                    events:
                      sqs_queue_url: {moto_url}{path}
                      endpoint_url: {moto_url}
                      reason_key: reason
                """
            )
        )
        store, telemetry = MetricsStore(), SelfMetrics()
        collector = Supervisor(config, store, telemetry)
        await collector.start()
        try:

            async def consumed() -> dict[str, float] | None:
                attributes = await sqs.get_queue_attributes(
                    QueueUrl=queue_url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                    ],
                )
                left = sum(int(v) for v in attributes["Attributes"].values())
                snapshot = store.get(("moto", "contract-job"))
                events = snapshot.execution_events if snapshot is not None else ()
                counts = {reason: float(value) for _, reason, value in events}
                return counts if left == 0 and sum(counts.values()) == 2 else None

            counts = await until(consumed, within=30)
            assert counts == {"checksum_mismatch": 1.0, "x" * 64: 1.0}
            registry = telemetry.registry
            assert (
                registry.get_sample_value(
                    "aws_iot_jobs_exporter_events_duplicates_total", {"target": "moto"}
                )
                == 1
            )
            assert (
                registry.get_sample_value(
                    "aws_iot_jobs_exporter_events_received_total",
                    {"target": "moto", "event": "malformed"},
                )
                == 1
            )
            ok = registry.get_sample_value(
                "aws_iot_jobs_exporter_api_requests_total",
                {"target": "moto", "operation": "DeleteMessageBatch", "outcome": "ok"},
            )
            assert ok is not None and ok >= 1
        finally:
            await collector.stop()
