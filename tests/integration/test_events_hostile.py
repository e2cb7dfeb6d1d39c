"""The event path against a hostile SQS and IoT endpoint over real HTTP and botocore: no
message, answer or flood stops a target, grows memory or floods the logs (issue 18)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.collect.poller import TargetPoller
from exporter.collect.supervisor import Supervisor
from exporter.config import parse_config
from exporter.events import JobEvent, MalformedEvent, parse_event
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from tests.hostile_aws import HostileAws, listing
from tests.hostile_sqs import HostileSqs, Stream, event_body, messages
from tests.support import until


@pytest.fixture
async def aws() -> AsyncIterator[HostileAws]:
    server = await HostileAws().start()
    yield server
    await server.close()


@pytest.fixture
async def sqs() -> AsyncIterator[HostileSqs]:
    server = await HostileSqs().start()
    yield server
    await server.close()


class Running:
    """The real Supervisor of one target `ep` with events, started until the block ends."""

    def __init__(
        self,
        aws: HostileAws,
        sqs: HostileSqs,
        jobs: str = "discover: {}",
        events: str = "",
        rate: float = 200,
    ) -> None:
        self.config = parse_config(
            "collector: {interval: 500ms, discovery_interval: 1s, request_timeout: 2s, "
            f"max_attempts: 1, requests_per_second: {rate:g}}}\n"
            f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
            f"    jobs: {{{jobs}}}\n"
            f"    events: {{sqs_queue_url: '{sqs.queue_url}', {events}}}\n"
        )
        self.telemetry, self.store = SelfMetrics(), MetricsStore()
        self.collector = Supervisor(self.config, self.store, self.telemetry)

    async def __aenter__(self) -> Running:
        await self.collector.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.collector.stop()

    @property
    def target(self) -> TargetPoller:
        return self.collector.targets["ep"]

    def value(self, metric: str, **labels: str) -> float:
        found = self.telemetry.registry.get_sample_value(metric, {"target": "ep", **labels})
        return 0.0 if found is None else found


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- D1: one message never stops a target --------------------------------------------------


async def test_a_huge_integer_timestamp_is_malformed_deleted_and_the_target_polls_on(
    aws: HostileAws, sqs: HostileSqs, caplog: pytest.LogCaptureFixture
) -> None:
    aws.list_page = lambda token: listing("job-1")
    # A failure event like any other, but for its 401-digit timestamp.
    poison = event_body("job-1", "e1", timestamp=10**400)
    sqs.receive = lambda data: [] if "p-handle-0" in sqs.deleted else messages(poison, prefix="p")
    async with Running(aws, sqs) as run:
        await until(lambda: "p-handle-0" in sqs.deleted, what="the poison message deleted")
        # Read as an event without a usable timestamp: applied, and its job described.
        assert run.value("aws_iot_jobs_exporter_events_received_total", event="execution_failed")
        await until(lambda: run.value("aws_iot_jobs_exporter_events_describes_total") >= 1)
        cycles = run.target.cycles
        await until(lambda: run.target.cycles >= cycles + 2, what="the poller cycling on")
        assert run.value("aws_iot_jobs_exporter_collection_success") == 1
    assert not lines(caplog, "cannot create the AWS client")
    assert not lines(caplog, "event path stopped")


async def test_an_exception_in_applying_an_event_never_stops_the_consumer(
    aws: HostileAws, sqs: HostileSqs, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    # Not a parsing gap this time: the sink itself fails. The message is still deleted and
    # the consumer and the poller go on.
    aws.list_page = lambda token: listing("job-1")
    sqs.receive = lambda data: (
        [] if "b-handle-0" in sqs.deleted else messages(event_body("job-1", "e1"), prefix="b")
    )

    def broken(self: TargetPoller, job_id: str) -> bool:
        raise RuntimeError("a bug")

    monkeypatch.setattr(TargetPoller, "job_changed", broken)
    async with Running(aws, sqs) as run:
        await until(lambda: "b-handle-0" in sqs.deleted, what="the message deleted")
        cycles = run.target.cycles
        await until(lambda: run.target.cycles >= cycles + 2, what="the poller cycling on")
        assert run.target.consumer is not None
    assert not lines(caplog, "cannot create the AWS client")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=80),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)  # fmt: skip
FIELDS = ("eventType", "eventId", "jobId", "operation", "status", "timestamp", "statusDetails")


@settings(max_examples=400, deadline=None)
@given(
    base=st.fixed_dictionaries(
        {},
        optional={
            "eventType": st.sampled_from(["JOB", "JOB_EXECUTION"]) | JSON,
            "eventId": st.text(min_size=1, max_size=40) | JSON,
            "jobId": st.from_regex(r"[a-zA-Z0-9_-]{1,64}\n?", fullmatch=True) | JSON,
            "operation": st.sampled_from(["failed", "completed", "deleted"]) | JSON,
            "status": st.sampled_from(["FAILED", "TIMED_OUT"]) | JSON,
            "timestamp": JSON,
            "statusDetails": st.dictionaries(st.text(max_size=8), JSON, max_size=3) | JSON,
        },
    ),
    whole=JSON,
    raw=st.binary(max_size=200),
)
def test_the_parser_only_ever_returns_an_event_or_raises_malformed(
    base: dict[str, Any], whole: Any, raw: bytes
) -> None:
    bodies: list[str | bytes] = [raw]
    for value in (base, whole):
        try:
            bodies.append(json.dumps(value))
        except (ValueError, OverflowError):
            continue
    for body in bodies:
        for reason_key in (None, "reason"):
            try:
                event = parse_event(body, reason_key)
            except MalformedEvent:
                continue
            assert isinstance(event, JobEvent)
            assert event.job_id.isascii() and "\n" not in event.job_id
            assert event.timestamp is None or 0 < event.timestamp < 1e11


@pytest.mark.parametrize(
    "timestamp",
    ["1" + "0" * 400, "-" + "9" * 400, "1e999", "-1e999", "1" + "0" * 5000, "true", "[1]"],
)
def test_timestamps_of_any_size_or_type_are_read_or_ignored(timestamp: str) -> None:
    body = '{"eventType": "JOB", "eventId": "e", "jobId": "j", "timestamp": ' + timestamp + "}"
    try:
        event = parse_event(body)
    except MalformedEvent:
        return  # 5,000 digits: Python refuses to read it; a malformed message
    assert event.timestamp is None


# --- D2: events naming jobs that do not exist ------------------------------------------


async def test_a_flood_of_unknown_job_ids_is_bounded_and_known_jobs_stay_fresh(
    aws: HostileAws, sqs: HostileSqs
) -> None:
    aws.list_page = lambda token: listing("known")
    not_found = (404, b'{"__type": "ResourceNotFoundException", "message": "no such job"}')

    class Ghosts(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            return not_found if key.startswith("ghost-") else default

    aws.describe = Ghosts()
    ids = itertools.count()
    # Every receive: ten failure events for ids nobody ever created.
    sqs.receive = lambda data: messages(
        *(event_body(f"ghost-{n}", f"g{n}") for n in itertools.islice(ids, 10)),
        prefix=f"g{next(ids)}-",
    )
    async with Running(aws, sqs, events="max_unknown_jobs: 20, reconcile_interval: 1h") as run:
        target = run.target
        await until(
            lambda: (
                run.value("aws_iot_jobs_exporter_jobs_dropped_total", reason="unknown_limit") > 500
            ),
            what="unknown ids dropped",
        )
        await until(lambda: target.jobs.get("known") is not None, what="the known job described")
        # What the flood can make the exporter hold: the cap, whatever the rate.
        for _ in range(20):
            assert len(target.events.unknown) <= 20
            assert len(target.jobs) == 1  # the ghosts are never tracked jobs
            await asyncio.sleep(0.05)
        # A real failure event for the known job is described within seconds, flood or not.
        before = aws.calls["DescribeJob:known"]
        flood = sqs.receive
        sqs.receive = lambda data: messages(event_body("known", "real-1"), prefix="k")
        await asyncio.sleep(0.2)
        sqs.receive = flood
        await until(lambda: aws.calls["DescribeJob:known"] > before, within=5, what="known")
        assert run.value("aws_iot_jobs_exporter_events_unknown_jobs") <= 20
        assert run.value("aws_iot_jobs_exporter_collection_success") == 1


async def test_at_the_default_budget_a_known_job_event_is_not_held_behind_a_flood(
    aws: HostileAws, sqs: HostileSqs
) -> None:
    # The default budget (5/s) and cap (100): unknown ids have their own queue and one call
    # at a time, so a known job's failure event is described within a couple of tokens.
    aws.list_page = lambda token: listing("known")
    not_found = (404, b'{"__type": "ResourceNotFoundException", "message": "no such job"}')

    class Ghosts(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            return not_found if key.startswith("ghost-") else default

    aws.describe = Ghosts()
    ids = itertools.count()
    flood = lambda data: messages(  # noqa: E731
        *(event_body(f"ghost-{n}", f"g{n}") for n in itertools.islice(ids, 10)),
        prefix=f"g{next(ids)}-",
    )
    sqs.receive = flood
    async with Running(aws, sqs, events="reconcile_interval: 1h", rate=5) as run:
        await until(lambda: run.target.jobs.get("known") is not None, what="described once")
        await until(lambda: len(run.target.events.unknown) >= 100, what="the unknown ids full")
        before = aws.calls["DescribeJob:known"]
        sqs.receive = lambda data: messages(event_body("known", "real-1"), prefix="k")
        await asyncio.sleep(0.3)
        sqs.receive = flood
        # Queued behind the 100 unknown ids, at 5/s it would wait 20 s.
        await until(lambda: aws.calls["DescribeJob:known"] > before, within=10, what="known")


# --- D4: ids that are not ids -------------------------------------------------------------


def test_a_job_id_ending_in_a_newline_is_not_a_job_id() -> None:
    with pytest.raises(MalformedEvent):
        parse_event('{"eventType": "JOB", "eventId": "e", "jobId": "job-a\\n"}')


async def test_a_job_id_aws_refuses_as_invalid_is_dropped_once_and_the_target_recovers(
    aws: HostileAws, sqs: HostileSqs, caplog: pytest.LogCaptureFixture
) -> None:
    aws.list_page = lambda token: listing("good", "bad")
    aws.describe["bad"] = (
        400,
        b'{"__type": "InvalidRequestException", "message": "jobId is not valid"}',
    )
    async with Running(aws, sqs) as run:
        await until(
            lambda: run.value("aws_iot_jobs_exporter_jobs_dropped_total", reason="invalid") == 1,
            what="the invalid job dropped",
        )
        cycles = run.target.cycles
        await until(lambda: run.target.cycles >= cycles + 3, what="more cycles")
        await until(
            lambda: run.value("aws_iot_jobs_exporter_collection_success") == 1, what="success"
        )
        # Discovery still lists it; it is not asked for again.
        assert aws.calls["DescribeJob:bad"] == 1
        assert "bad" not in run.target.jobs
        assert run.value("aws_iot_jobs_exporter_jobs_dropped_total", reason="invalid") == 1
    assert len(lines(caplog, "refused as invalid")) == 1


# --- D6, D7: junk and failed deletes do not flood the logs --------------------------------


async def test_a_queue_of_junk_logs_one_line_then_summaries(
    aws: HostileAws, sqs: HostileSqs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    aws.list_page = lambda token: listing("job-1")
    counter = itertools.count()
    sqs.receive = lambda data: messages(*["not json"] * 10, prefix=f"j{next(counter)}-")
    async with Running(aws, sqs) as run:
        await until(
            lambda: (
                run.value("aws_iot_jobs_exporter_events_received_total", event="malformed") >= 2000
            ),
            what="2,000 junk messages",
        )
    assert 1 <= len(lines(caplog, "malformed event")) <= 3


async def test_deletes_answered_failed_are_counted_and_logged_once(
    aws: HostileAws, sqs: HostileSqs, caplog: pytest.LogCaptureFixture
) -> None:
    aws.list_page = lambda token: listing("job-1")
    sqs.fail_deletes = True
    counter = itertools.count()
    sqs.receive = lambda data: messages(
        *(event_body("job-1", f"e{next(counter)}") for _ in range(3)), prefix=f"d{next(counter)}-"
    )
    async with Running(aws, sqs) as run:
        await until(
            lambda: run.value("aws_iot_jobs_exporter_events_consumer_errors_total") >= 30,
            what="failed entries counted",
        )
        consumer = run.target.consumer
        assert consumer is not None and consumer.last_error is not None
        assert "InternalError" in consumer.last_error[2]
    assert 1 <= len(lines(caplog, "not deleted")) <= 2


# --- D11, D12: answers too large, answers too fast ------------------------------------------


async def test_a_receive_answer_larger_than_the_cap_is_not_read_and_the_next_asks_for_one(
    aws: HostileAws, sqs: HostileSqs
) -> None:
    aws.list_page = lambda token: listing("job-1")
    streams: list[Stream] = []

    def receive(data: dict[str, Any]) -> Any:
        if data.get("MaxNumberOfMessages") == 1:
            return messages(event_body("job-1", "small"), prefix="s")
        # 40 MB of one JSON answer, in 1 MiB chunks without a length.
        stream = Stream(b"[" + b" " * (1024 * 1024 - 1), 40)
        streams.append(stream)
        return stream

    sqs.receive = receive
    async with Running(aws, sqs, events="max_receive_bytes: 2097152") as run:
        await until(lambda: "s-handle-0" in sqs.deleted, what="a one-message receive")
        assert run.value(
            "aws_iot_jobs_exporter_api_requests_total",
            operation="ReceiveMessage",
            outcome="malformed",
        )
    assert streams
    # Each oversize answer was dropped after the cap, not read to its end.
    assert all(s.sent < 10 for s in streams), [s.sent for s in streams]


async def test_a_queue_that_answers_empty_at_once_does_not_make_the_consumer_spin(
    aws: HostileAws, sqs: HostileSqs
) -> None:
    aws.list_page = lambda token: listing("job-1")
    sqs.empty_wait = 0.0
    async with Running(aws, sqs):
        await asyncio.sleep(4)
    # Four receivers backing off 1, 2, 5 s: a handful of calls, not thousands.
    assert sqs.calls["ReceiveMessage"] <= 20, sqs.calls


# --- D3: one target's events never starve another on the same account ----------------------


async def test_an_event_storm_on_one_target_leaves_the_other_half_the_budget(
    aws: HostileAws, sqs: HostileSqs
) -> None:
    # Both targets on one endpoint: one account, one DescribeJob bucket of 20/s. t1's 100
    # jobs have events all the time; t2 polls 100 jobs every second: both want it all.
    jobs1 = [f"storm-{i}" for i in range(100)]
    jobs2 = [f"quiet-{i}" for i in range(100)]
    counter = itertools.count()
    sqs.receive = lambda data: messages(
        *(event_body(jobs1[next(counter) % 100], f"s{next(counter)}") for _ in range(10)),
        prefix=f"s{next(counter)}-",
    )
    config = parse_config(
        "collector: {interval: 1s, discovery_interval: 1h, request_timeout: 2s, "
        "max_attempts: 1, requests_per_second: 20}\n"
        "targets:\n"
        f"  - name: t1\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        f"    jobs: {{ids: [{', '.join(jobs1)}]}}\n"
        f"    events: {{sqs_queue_url: '{sqs.queue_url}', min_describe_interval: 100ms}}\n"
        f"  - name: t2\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        f"    jobs: {{ids: [{', '.join(jobs2)}]}}\n"
    )
    telemetry = SelfMetrics()
    collector = Supervisor(config, MetricsStore(), telemetry)
    await collector.start()
    try:
        await until(lambda: collector.ready, what="both targets described once")

        def described(prefix: str) -> int:
            return sum(v for k, v in aws.calls.items() if k.startswith(f"DescribeJob:{prefix}"))

        before = described("storm"), described("quiet")
        await asyncio.sleep(4)
        storm, quiet = described("storm") - before[0], described("quiet") - before[1]
    finally:
        await collector.stop()
    assert storm > 10, (storm, quiet)  # the storm really asked for describes
    # Strict priority gave t2 almost nothing; a fair share is half (within scheduling noise).
    assert quiet >= 0.4 * (storm + quiet), (storm, quiet)
