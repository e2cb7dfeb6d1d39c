"""Hostile ListJobExecutionsForJob answers over real HTTP and botocore: a sweep that cannot
read its pages costs that sweep only, the last good counts stay exported, and whatever a
thing name holds reaches no label and is escaped on the status page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.aws import JobSource
from exporter.collect.poller import TargetPoller
from exporter.config import Config, parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.status import Status, render_html, render_json
from exporter.store import MetricsStore
from tests.hostile_aws import Answer, HostileAws, execution, executions_page, job_body
from tests.integration.test_hostile_aws import no_tracebacks
from tests.support import until

JOB = "fw-rollout"
NOW = time.time()
GOOD = {
    "IN_PROGRESS": executions_page(
        execution("silent-1", "IN_PROGRESS", NOW - 7200),
        execution("silent-2", "IN_PROGRESS", NOW - 5400, retry=2),
        execution("busy-1", "IN_PROGRESS", NOW - 60),
    ),
    "QUEUED": executions_page(execution("waiting-1", "QUEUED", NOW - 600)),
}


@pytest.fixture
async def aws() -> AsyncIterator[HostileAws]:
    server = await HostileAws().start()
    server.describe[JOB] = json.dumps(
        job_body(JOB, jobProcessDetails={"numberOfInProgressThings": 3, "numberOfQueuedThings": 1})
    ).encode()
    yield server
    await server.close()


def cfg(aws: HostileAws, executions: str = "") -> Config:
    return parse_config(
        "collector: {interval: 1s, request_timeout: 1s, max_attempts: 1, "
        f"executions: {{requests_per_second: 100, {executions}}}}}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        f"    jobs: {{ids: [{JOB}]}}\n"
    )


class Running:
    """A target's collector and sweeper on the real source, until the block ends."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.telemetry, self.store = SelfMetrics(), MetricsStore()
        self.source = JobSource(config.targets[0], config.collector, self.telemetry)
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Running:
        source = await self.source.__aenter__()
        self.collector = TargetPoller(
            self.config.targets[0], self.config.collector, source, self.store, self.telemetry
        )
        self.tasks = [
            asyncio.create_task(self.collector.run()),
            asyncio.create_task(self.collector.sweeper.run()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.wait(self.tasks)
        await self.source.__aexit__(None, None, None)

    def calls(self, outcome: str) -> float:
        metric = self.telemetry.api_requests.labels("ep", "ListJobExecutionsForJob", outcome)
        return float(metric._value.get())

    def stuck(self) -> dict[str, int] | None:
        snapshot = self.collector.snapshots().get(JOB)
        if snapshot is None or snapshot.sweep is None:
            return None
        return {state: counts.stuck for state, counts in snapshot.sweep.states}


def serve(aws: HostileAws, answer: Callable[[str, str | None], Answer]) -> None:
    aws.executions = lambda job_id, status, token: answer(status, token)


async def swept_good(run: Running) -> None:
    await until(lambda: run.stuck() is not None, 15, "a first good sweep")
    assert run.stuck() == {"queued": 0, "in_progress": 2}


UNREADABLE = [
    b"[" * 100_000,
    b'{"executionSummaries": "all of them"}',
    b'{"executionSummaries": [], "nextToken": 5}',
    b'{"executionSummaries": [], "nextToken": "' + b"t" * 5000 + b'"}',
    b"\xff\xfe not json",
    b"",
]


@pytest.mark.parametrize("body", UNREADABLE, ids=range(len(UNREADABLE)))
async def test_an_unreadable_page_keeps_the_last_good_sweep(
    aws: HostileAws, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {"on": False}
    serve(aws, lambda status, token: body if bad["on"] else GOOD[status])
    async with Running(cfg(aws)) as run:
        await swept_good(run)
        good = run.collector.snapshots()[JOB].sweep
        bad["on"] = True
        failed = run.calls("malformed") + run.calls("error")
        run.collector.sweeper.mark(JOB)
        await until(
            lambda: run.calls("malformed") + run.calls("error") > failed, 15, "a failed sweep"
        )
        assert run.collector.snapshots()[JOB].sweep is good
        text = run.store.body().decode()
        assert 'state="in_progress"} 2' in text
    no_tracebacks(caplog)


async def test_odd_entries_cost_themselves_only(aws: HostileAws) -> None:
    odd: list[dict[str, Any]] = [
        {"thingArn": 7, "jobExecutionSummary": {"status": "IN_PROGRESS"}},
        {"thingArn": "arn:aws:iot:eu-west-1:1:thing/no-summary"},
        {"thingArn": "arn:aws:iot:eu-west-1:1:thing/no-status", "jobExecutionSummary": {}},
        {
            "thingArn": "arn:aws:iot:eu-west-1:1:thing/infinite-start",
            "jobExecutionSummary": {"status": "IN_PROGRESS", "startedAt": 1e309},
        },
        {
            "thingArn": "arn:aws:iot:eu-west-1:1:thing/huge-retry",
            "jobExecutionSummary": {
                "status": "IN_PROGRESS",
                "startedAt": NOW - 7200,
                "retryAttempt": 10**30,
                "executionNumber": -5,
            },
        },
        {
            "thingArn": "arn:aws:iot:eu-west-1:1:thing/no-start",
            "jobExecutionSummary": {"status": "IN_PROGRESS"},
        },
    ]
    page = json.dumps({"executionSummaries": odd}).encode()
    serve(aws, lambda status, token: page if status == "IN_PROGRESS" else GOOD[status])
    async with Running(cfg(aws)) as run:
        await until(lambda: run.stuck() is not None, 15, "a sweep")
        sweep = run.collector.snapshots()[JOB].sweep
        assert sweep is not None
        counts = sweep.counts("in_progress")
        assert counts is not None
        # Of the odd entries, three are executions: one stuck (its retry attempt is beyond
        # AWS's ten and counts as ten), two without a usable start (counted, never stuck).
        assert counts.by_age[-1] == 3 and counts.stuck == 1
        assert counts.retries[10] == 1
        assert [r.thing_name for r in sweep.oldest_stuck] == ["huge-retry"]


async def test_a_repeated_token_stops_the_sweep(aws: HostileAws) -> None:
    calls = {"n": 0}

    def answer(status: str, token: str | None) -> bytes:
        calls["n"] += 1
        if status == "QUEUED":
            return GOOD[status]
        return executions_page(execution("loop", "IN_PROGRESS", NOW - 7200), token="again")

    serve(aws, answer)
    async with Running(cfg(aws)) as run:
        await until(lambda: run.calls("malformed") >= 1, 15, "the loop refused")
        assert run.stuck() is None  # no partial sweep was published
        assert calls["n"] <= 4


async def test_an_endless_paginator_stops_at_max_executions_per_job(aws: HostileAws) -> None:
    served = {"pages": 0}

    def answer(status: str, token: str | None) -> bytes:
        if status == "QUEUED":
            return GOOD[status]
        served["pages"] += 1
        n = served["pages"]
        rows = [execution(f"t-{n}-{i}", "IN_PROGRESS", NOW - 7200) for i in range(250)]
        return executions_page(*rows, token=f"page-{n}")

    serve(aws, answer)
    async with Running(cfg(aws, "max_executions_per_job: 600")) as run:
        await until(lambda: run.stuck() is not None, 15, "a truncated sweep")
        sweep = run.collector.snapshots()[JOB].sweep
        assert sweep is not None and sweep.truncated
        # Three pages reach 600; the sweep stops there, counts a lower bound.
        assert served["pages"] == 3
        assert sweep.counts("in_progress").by_age[-1] == 750  # type: ignore[union-attr]


HOSTILE_THINGS = [
    "<script>alert(1)</script>",
    "\u202eevil\u0000name\x1b[31m",
    'quote"back\\slash\nnewline',
]


async def test_hostile_thing_names_reach_no_label_and_are_escaped(aws: HostileAws) -> None:
    page = executions_page(
        *(
            {
                "thingArn": f"arn:aws:iot:eu-west-1:1:thing/{name}",
                "jobExecutionSummary": {"status": "IN_PROGRESS", "startedAt": NOW - 7200},
            }
            for name in HOSTILE_THINGS
        )
    )
    serve(aws, lambda status, token: page if status == "IN_PROGRESS" else GOOD[status])
    async with Running(cfg(aws)) as run:
        await until(lambda: run.stuck() is not None, 15, "a sweep")
        assert run.stuck() == {"queued": 0, "in_progress": 3}
        for family in text_string_to_metric_families(run.store.body().decode()):
            for sample in family.samples:
                for value in sample.labels.values():
                    assert not any(part in value for part in ("script", "evil", "quote"))
        status = Status(time.time(), True, (run.collector.status(),))
        html = render_html(status).decode()
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert "\u202e" not in html and "\x1b" not in html and "\x00" not in html
        data = render_json(status)
        assert data.isascii()
        names = {
            r["thing_name"] for j in json.loads(data)["targets"][0]["stuck"] for r in j["oldest"]
        }
        assert names == set(HOSTILE_THINGS)


def _arn(name: str) -> str:
    return f"arn:aws:iot:eu-west-1:123456789012:thing/{name}"


def _running(name: str, since: float, queued: float | None = None) -> dict[str, Any]:
    return {
        "thingArn": _arn(name),
        "jobExecutionSummary": {
            "status": "IN_PROGRESS",
            "queuedAt": since - 30 if queued is None else queued,
            "startedAt": since,
            "executionNumber": 1,
        },
    }


def _describe(aws: HostileAws, in_progress: int, queued: int = 0) -> None:
    aws.describe[JOB] = json.dumps(
        job_body(
            JOB,
            jobProcessDetails={
                "numberOfInProgressThings": in_progress,
                "numberOfQueuedThings": queued,
            },
        )
    ).encode()


def _series(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


@pytest.mark.parametrize("name", ["bad\ud800", "nul\x00name", "\udfff", "c1\x85\x9b[2J"])
async def test_a_thing_name_no_output_can_carry_costs_nothing(
    aws: HostileAws, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone surrogate (valid JSON) or a NUL in a thing name: the job's counts are still
    published, both expositions render and parse, and the status page renders."""
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as openmetrics_families,
    )

    _describe(aws, 7)
    rows = [_running(f"ok-{i}", NOW - 7200) for i in range(6)] + [_running(name, NOW - 7200)]
    page = executions_page(*rows)
    serve(aws, lambda status, token: page if status == "IN_PROGRESS" else GOOD[status])
    async with Running(cfg(aws)) as run:
        await until(lambda: run.stuck() == {"queued": 0, "in_progress": 7}, 15, "a sweep")
        await until(
            lambda: (
                _series(
                    run.store.body().decode(), "aws_iot_job_executions_stuck", state="in_progress"
                )
                == 7
            ),
            15,
            "7 stuck exported",
        )
        om = run.store.body(openmetrics=True).decode()
        exemplars = [
            s.exemplar
            for f in openmetrics_families(om + "# EOF\n")
            for s in f.samples
            if s.exemplar is not None
        ]
        assert exemplars and all(len(e.labels["thing_name"]) <= 118 for e in exemplars)
        # Later describes of the job go on: none crashes on the name.
        described = aws.calls[f"DescribeJob:{JOB}"]
        await until(lambda: aws.calls[f"DescribeJob:{JOB}"] > described + 1, 15, "describes")
        status = Status(time.time(), True, (run.collector.status(),))
        html = render_html(status).decode()
        assert "\x00" not in html
        data = json.loads(render_json(status))
        things = [r["thing_name"] for j in data["targets"][0]["stuck"] for r in j["oldest"]]
        assert len(things) == 7
    assert "crashed" not in caplog.text
    no_tracebacks(caplog)


async def test_an_endless_listing_of_empty_pages_stops_at_the_page_bound(aws: HostileAws) -> None:
    """Empty pages, or pages of another status, each with a fresh token: a state reads at
    most max_executions_per_job / 250 + 1 pages, and every entry read counts."""
    served = {"IN_PROGRESS": 0, "QUEUED": 0}

    def answer(status: str, token: str | None) -> bytes:
        served[status] += 1
        n = served[status]
        if status == "QUEUED":
            # Entries of another status count towards the limit too.
            rows = [execution(f"q-{n}-{i}", "SUCCEEDED", NOW) for i in range(250)]
            return executions_page(*rows, token=f"q-{n}")
        return executions_page(token=f"empty-{n}")

    serve(aws, answer)
    async with Running(cfg(aws, "max_executions_per_job: 500")) as run:
        await until(lambda: run.stuck() is not None, 15, "a sweep that ends")
        sweep = run.collector.snapshots()[JOB].sweep
        assert sweep is not None and sweep.truncated
        assert served["IN_PROGRESS"] == 3  # 500 / 250 + 1
        assert served["QUEUED"] == 2  # 500 entries read
        assert sweep.counts("queued").by_age[-1] == 0  # type: ignore[union-attr]


BAD_ENTRIES = [
    b'"queuedAt": ' + b"9" * 401,
    b'"retryAttempt": "x"',
    b'"retryAttempt": NaN',
    b'"retryAttempt": []',
    b'"executionNumber": 1e400',
    b'"startedAt": -1e400',
    b'"lastUpdatedAt": {"a": 1}',
]


@pytest.mark.parametrize("bad", BAD_ENTRIES, ids=range(len(BAD_ENTRIES)))
async def test_one_bad_entry_costs_that_entry_only(aws: HostileAws, bad: bytes) -> None:
    good = [json.dumps(_running(f"ok-{i}", NOW - 7200)).encode() for i in range(3)]
    odd = (
        b'{"thingArn": "' + _arn("odd").encode() + b'", "jobExecutionSummary": '
        b'{"status": "IN_PROGRESS", "startedAt": ' + str(NOW - 7200).encode() + b", " + bad + b"}}"
    )
    page = b'{"executionSummaries": [' + b", ".join([*good, odd]) + b"]}"
    serve(aws, lambda status, token: page if status == "IN_PROGRESS" else GOOD[status])
    async with Running(cfg(aws)) as run:
        await until(lambda: run.stuck() is not None, 15, "a sweep")
        assert run.calls("malformed") == 0
        counts = run.collector.snapshots()[JOB].sweep.counts("in_progress")  # type: ignore[union-attr]
        assert counts is not None and counts.by_age[-1] in (3, 4)
        assert counts.stuck >= 3


async def test_duplicates_across_pages_count_once_and_never_past_the_jobs_count(
    aws: HostileAws,
) -> None:
    _describe(aws, 1)

    def answer(status: str, token: str | None) -> bytes:
        if status == "QUEUED":
            return GOOD[status]
        n = int(token or "0")
        rows = [_running("same", NOW - 7200) for _ in range(250)]
        rows.append(_running(f"other-{n}", NOW - 7200))
        return executions_page(*rows, token=str(n + 1) if n < 2 else None)

    serve(aws, answer)
    async with Running(cfg(aws)) as run:
        await until(lambda: run.stuck() is not None, 15, "a sweep")
        sweep = run.collector.snapshots()[JOB].sweep
        assert sweep is not None
        counts = sweep.counts("in_progress")
        assert counts is not None
        # 753 entries, four things; AWS says one execution is in progress.
        assert counts.stuck == 1 and counts.by_age[-1] <= 4
        assert len(sweep.oldest_stuck) == 1


async def test_a_page_larger_than_asked_for_is_cut_to_max_results(aws: HostileAws) -> None:
    _describe(aws, 30_000)
    rows = [_running(f"t-{i}", NOW - 7200) for i in range(30_000)]
    big = executions_page(*rows)
    serve(aws, lambda status, token: big if status == "IN_PROGRESS" else GOOD[status])
    async with Running(cfg(aws, "max_executions_per_job: 500")) as run:
        await until(lambda: run.stuck() is not None, 30, "a sweep")
        counts = run.collector.snapshots()[JOB].sweep.counts("in_progress")  # type: ignore[union-attr]
        assert counts is not None and counts.by_age[-1] == 250


def _queued_observations(run: Running) -> int:
    snapshot = run.collector.snapshots().get(JOB)
    if snapshot is None or snapshot.time_in_state is None:
        return 0
    return snapshot.time_in_state.queued.count


def _dates_ignored(run: Running) -> float:
    return float(run.telemetry.sweep_date_ignored_total.labels("ep")._value.get())


async def test_an_answer_dated_2100_is_not_believed(aws: HostileAws) -> None:
    _describe(aws, 2)
    rows = [_running("recent", NOW - 600)]
    serve(
        aws,
        lambda status, token: executions_page(*rows) if status == "IN_PROGRESS" else GOOD[status],
    )
    aws.executions_date = "Fri, 01 Jan 2100 00:00:00 GMT"
    async with Running(cfg(aws)) as run:
        await until(lambda: run.stuck() is not None, 15, "a sweep")
        # Ten minutes in progress, against an hour: not stuck, whatever the answer says.
        assert run.stuck() == {"queued": 0, "in_progress": 0}
        assert _dates_ignored(run) >= 1
        assert _queued_observations(run) == 1
        # The next execution that starts has its queue time recorded too.
        aws.executions_date = None
        rows.append(_running("next", time.time() + 2))
        run.collector.sweeper.mark(JOB)
        await until(lambda: _queued_observations(run) == 2, 15, "the next queue time")


async def test_an_answer_dated_1970_hides_no_stuck_execution(aws: HostileAws) -> None:
    _describe(aws, 1)
    page = executions_page(_running("three-days", NOW - 3 * 86400))
    serve(aws, lambda status, token: page if status == "IN_PROGRESS" else GOOD[status])
    aws.executions_date = "Thu, 01 Jan 1970 00:00:00 GMT"
    async with Running(cfg(aws, "max_clock_skew: 5m")) as run:
        await until(lambda: run.stuck() is not None, 15, "a sweep")
        assert run.stuck() == {"queued": 0, "in_progress": 1}
        assert _dates_ignored(run) >= 1


async def test_a_reload_mid_sweep_does_not_make_the_job_wait_an_interval(
    aws: HostileAws,
) -> None:
    from exporter.collect.supervisor import Supervisor

    serve(aws, lambda status, token: GOOD[status])
    gate = aws.executions_gate = asyncio.Event()

    def config(timeout: str) -> Config:
        return parse_config(
            f"collector: {{interval: 45s, request_timeout: {timeout}, max_attempts: 1, "
            "executions: {requests_per_second: 100}}\n"
            f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
            f"    jobs: {{ids: [{JOB}]}}\n"
        )

    store = MetricsStore()
    collector = Supervisor(config("5s"), store, SelfMetrics())
    await collector.start()
    try:
        calls = f"ListJobExecutionsForJob:{JOB}"
        await until(lambda: aws.calls[calls] >= 1, 15, "a sweep under way")
        # A setting every target uses: each target restarts, its state kept.
        await collector.apply(config("6s"))
        gate.set()

        def swept() -> bool:
            poller = collector.targets.get("ep")
            snapshot = poller.snapshots().get(JOB) if poller is not None else None
            return snapshot is not None and snapshot.sweep is not None

        # Well within the 45 s interval.
        await until(swept, 15, "the sweep, right after the reload")
    finally:
        await collector.stop()


def _rate_limiter(client: Any, operation: str) -> Any:
    """The adaptive-mode rate limiter botocore registered on the client for `operation`."""
    from aiobotocore.retries.adaptive import AsyncClientRateLimiter

    handlers = client.meta.events._emitter._handlers.prefix_search(f"before-send.iot.{operation}")
    (limiter,) = {
        h.__self__
        for h in handlers
        if isinstance(getattr(h, "__self__", None), AsyncClientRateLimiter)
    }
    return limiter


async def test_throttled_sweeps_do_not_meter_describe_job_down(aws: HostileAws) -> None:
    """AWS gives each operation its own quota: a throttled ListJobExecutionsForJob engages
    its own retry limiter (adaptive mode's AIMD), never the one DescribeJob sends through."""
    throttled = (400, b'{"__type": "ThrottlingException", "message": "Rate exceeded"}')
    serve(aws, lambda status, token: throttled)
    async with Running(cfg(aws)) as run:
        await until(lambda: run.calls("throttled") >= 1, 15, "a throttled sweep")
        await until(lambda: aws.calls[f"DescribeJob:{JOB}"] >= 2, 15, "describes")
        source = run.source
        sweeps = _rate_limiter(source.client("ListJobExecutionsForJob"), "ListJobExecutionsForJob")
        describes = _rate_limiter(source.client("DescribeJob"), "DescribeJob")
        assert sweeps is not describes
        assert sweeps._enabled  # throttling seen: this client is metered down
        assert not describes._enabled  # DescribeJob's client saw none


async def test_a_job_that_keeps_failing_is_not_retried_per_mark(aws: HostileAws) -> None:
    """Every page answers 500 while the job is marked ten times a second, as a stream of
    its execution events would: over real HTTP and botocore, one try and then none until
    RETRY_SECONDS (30 s) have passed, not a try per mark or per 5 s gap."""
    serve(aws, lambda status, token: (500, b'{"message": "internal"}'))
    async with Running(cfg(aws)) as run:

        def failed() -> float:
            return run.calls("error") + run.calls("unavailable")

        await until(lambda: failed() >= 1, 15, "a first try")
        await asyncio.sleep(1)  # the try's other state, if it reads it
        tried = failed()
        end = time.monotonic() + 8
        while time.monotonic() < end:
            run.collector.sweeper.mark(JOB)
            await asyncio.sleep(0.1)
        # No second try in 8 s; without the retry delay, the 5 s gap would allow one.
        assert failed() == tried
        assert 1 <= tried <= 2 and run.calls("ok") == 0
