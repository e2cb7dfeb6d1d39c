"""A hostile AWS endpoint over real HTTP and botocore: every answer classified and counted,
bounded in time and size, kept to what it concerns, and never written out with a secret."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from exporter.aws import ApiError, JobSource
from exporter.collect.poller import TargetPoller
from exporter.config import Config, parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from tests.hostile_aws import (
    SECRET_KEY,
    SESSION_TOKEN,
    Drip,
    HostileAws,
    job_body,
    listing,
)
from tests.support import free_port, until

ROLE = "arn:aws:iam::123456789012:role/reader"


@pytest.fixture
async def aws() -> AsyncIterator[HostileAws]:
    server = await HostileAws().start()
    yield server
    await server.close()


def cfg(aws: HostileAws, jobs: str, collector: str = "", extra: str = "") -> Config:
    return parse_config(
        "collector: {interval: 300ms, discovery_interval: 300ms, request_timeout: 1s, "
        f"max_attempts: 2, {collector}}}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        f"{extra}    jobs: {{{jobs}}}\n"
    )


def count(telemetry: SelfMetrics, operation: str, outcome: str) -> float:
    return float(telemetry.api_requests.labels("ep", operation, outcome)._value.get())


class InProcess:
    """A target's collector on the real source, cycling in a task until the block ends."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.telemetry, self.store = SelfMetrics(), MetricsStore()
        self.telemetry.init_target("ep")
        self._source = JobSource(config.targets[0], config.collector, self.telemetry)
        self.collector: TargetPoller | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TargetPoller:
        source = await self._source.__aenter__()
        target = self.config.targets[0]
        self.collector = TargetPoller(
            target, self.config.collector, source, self.store, self.telemetry
        )
        return self.collector

    def start(self) -> None:
        assert self.collector is not None
        self._task = asyncio.create_task(self.collector.run())

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        elif self.collector is not None:
            await self.collector.close()
        await self._source.__aexit__(None, None, None)

    def tracked(self, state: str) -> float:
        return float(self.telemetry.jobs_tracked.labels("ep", state)._value.get())


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    crashed = [r.getMessage() for r in caplog.records if r.exc_info or "crashed" in r.msg]
    assert not crashed, crashed


# --- D4: every exception of a call is classified and stays with what it concerns ---------


@pytest.mark.parametrize(
    ("body", "outcomes"),
    [
        # botocore: RuntimeError (timezone of inf), OverflowError, RecursionError.
        (b'{"job": {"jobId": "bad", "createdAt": 1e309}}', {"malformed"}),
        (b'{"job": {"jobId": "bad", "createdAt": 1' + b"0" * 40 + b"}}", {"ok", "malformed"}),
        (b'{"job": {"jobId": "bad", "createdAt": -1e20}}', {"ok", "malformed"}),
        (b'{"job": {"jobId": "bad", "jobProcessDetails": {"numberOfQueuedThings": 1e309}}}',
         {"malformed"}),
        (b"[" * 100_000, {"malformed"}),
        (b'{"job": {"jobId": "bad", "createdAt": "yesterday"}}', {"malformed"}),
    ],
)  # fmt: skip
async def test_hostile_describe_bodies_are_counted_per_job(
    aws: HostileAws, caplog: pytest.LogCaptureFixture, body: bytes, outcomes: set[str]
) -> None:
    aws.describe["bad"] = body
    async with InProcess(cfg(aws, "ids: [bad, good]")) as collector:
        await collector.collect_once()
        telemetry = collector.telemetry
        counted = {o for o in ("ok", "malformed", "error") if count(telemetry, "DescribeJob", o)}
    # The good job is described; the bad one has exactly one counted outcome of its own.
    assert collector.jobs["good"] is not None
    total = sum(count(telemetry, "DescribeJob", o) for o in ("ok", "malformed", "error"))
    assert total == 2 and counted <= outcomes | {"ok"}
    assert "error" not in counted
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    "item",
    [
        b'{"jobId": "x", "createdAt": 1e309}',
        b'{"jobId": "x", "createdAt": 1' + b"0" * 40 + b"}",
        b'{"jobId": "x", "createdAt": -1e20, "completedAt": 1e309}',
        b'{"jobId": "x", "lastUpdatedAt": "not a date"}',
    ],
)
async def test_hostile_listing_costs_one_discovery_not_the_target(
    aws: HostileAws, caplog: pytest.LogCaptureFixture, item: bytes
) -> None:
    aws.list_page = lambda token: b'{"jobs": [' + item + b"]}"
    async with InProcess(cfg(aws, "ids: [explicit], discover: {}")) as collector:
        await collector.collect_once()
        telemetry = collector.telemetry
    # Explicit ids are described whatever the listing did, and ListJobs is counted.
    assert collector.jobs["explicit"] is not None
    assert count(telemetry, "ListJobs", "ok") + count(telemetry, "ListJobs", "malformed") == 1
    no_tracebacks(caplog)


async def test_unreadable_listing_bodies_are_malformed(
    aws: HostileAws, caplog: pytest.LogCaptureFixture
) -> None:
    for body in (b"[" * 100_000, b'{"jobs": 7}', b'{"jobs": [], "nextToken": 5}'):
        aws.list_page = lambda token, body=body: body  # type: ignore[misc]
        async with InProcess(cfg(aws, "discover: {}")) as collector:
            await collector.collect_once()
            assert count(collector.telemetry, "ListJobs", "malformed") == 1, body[:20]
            assert collector.telemetry.collection_success.labels("ep")._value.get() == 0
    no_tracebacks(caplog)


async def test_malformed_sts_reply_is_counted_not_crashed(
    aws: HostileAws, caplog: pytest.LogCaptureFixture
) -> None:
    extra = f"    role_arn: {ROLE}\n    sts_endpoint_url: {aws.url}\n"
    config = cfg(aws, "ids: [a]", extra=extra)
    telemetry = SelfMetrics()
    async with JobSource(config.targets[0], config.collector, telemetry) as source:
        with pytest.raises(ApiError) as info:
            await source.describe_job("a")
    assert info.value.outcome == "malformed"
    assert count(telemetry, "DescribeJob", "malformed") == 1
    assert SECRET_KEY not in info.value.detail and SESSION_TOKEN not in info.value.detail
    assert aws.calls["AssumeRole"] >= 1 and aws.calls["DescribeJob:a"] == 0


# --- D10: an unreadable or keyless listing is never an empty account --------------------


@pytest.mark.parametrize("body", [b"{oops", b"{}", b'{"message": "hi"}', b"null"])
async def test_listing_without_jobs_keeps_the_known_jobs(aws: HostileAws, body: bytes) -> None:
    pages = {"body": listing("a", "b", status="COMPLETED", completedAt=time.time())}
    aws.list_page = lambda token: pages["body"]
    done = job_body("b", status="COMPLETED", completedAt=time.time())
    done["job"]["jobProcessDetails"] = {"numberOfSucceededThings": 3}
    aws.describe["b"] = json.dumps(done).encode()
    async with InProcess(cfg(aws, "discover: {}")) as collector:
        await collector.collect_once()
        assert set(collector.jobs) == {"a", "b"}
        frozen = collector.jobs["b"]
        assert frozen is not None and frozen.frozen
        pages["body"] = body
        collector.state.next_discovery = 0
        await collector.collect_once()
        telemetry = collector.telemetry
        assert count(telemetry, "ListJobs", "malformed") == 1
        assert count(telemetry, "ListJobs", "ok") == 1
        # Nothing was taken as "the account has no jobs": the frozen job is not rechecked.
        assert set(collector.jobs) == {"a", "b"}
        assert aws.calls["DescribeJob:b"] == 1


# --- D5: a discovery is bounded in pages and jobs ----------------------------------------


async def test_endless_paginator_is_cut_and_describing_goes_on(
    aws: HostileAws, caplog: pytest.LogCaptureFixture
) -> None:
    mode = {"endless": False}

    def page(token: str | None) -> bytes:
        if not mode["endless"]:
            return listing("a", "b")
        n = int(token or 0)
        # A fresh token and 1,000 new ids per page, forever.
        return listing(*(f"j{n}-{i}" for i in range(1000)), token=str(n + 1))

    aws.list_page = page
    config = cfg(aws, "discover: {}", collector="discovery_max_pages: 4")
    async with InProcess(config) as collector:
        await collector.collect_once()
        described = aws.calls["DescribeJob:a"]
        mode["endless"] = True
        collector.state.next_discovery = 0
        await collector.collect_once()
        telemetry = collector.telemetry
        assert count(telemetry, "ListJobs", "malformed") == 1
        assert aws.calls["ListJobs"] == 1 + 4
        # The previous job set stays, and its jobs were described meanwhile.
        assert set(collector.jobs) == {"a", "b"}
        assert aws.calls["DescribeJob:a"] > described
    assert "discovery_max_pages (4)" in caplog.text


async def test_too_many_jobs_fail_the_discovery(aws: HostileAws) -> None:
    def page(token: str | None) -> bytes:
        n = int(token or 0)
        return listing(*(f"j{n}-{i}" for i in range(100)), token=str(n + 1) if n < 5 else None)

    aws.list_page = page
    config = cfg(aws, "ids: [a], discover: {}", collector="discovery_max_jobs: 250")
    async with InProcess(config) as collector:
        await collector.collect_once()
        assert count(collector.telemetry, "ListJobs", "malformed") == 1
        assert set(collector.jobs) == {"a"}


# --- D7: a dripping answer ends at the attempt deadline and holds nothing else ----------


async def test_slow_drip_holds_neither_healthy_jobs_nor_discovery(aws: HostileAws) -> None:
    aws.list_page = lambda token: listing("a", "b", "slow")
    aws.describe["slow"] = Drip(json.dumps(job_body("slow")).encode(), every=0.5)
    running = InProcess(cfg(aws, "discover: {}", collector="attempt_timeout: 1s"))
    async with running:
        collector = running.collector
        assert collector is not None
        running.start()
        await until(lambda: collector.cycles >= 1, what="first cycle")
        started = aws.calls.copy()
        telemetry = running.telemetry

        def since(call: str) -> int:
            return aws.calls[call] - started[call]

        # Each attempt ended at its 1 s deadline, counted as a network failure...
        await until(lambda: count(telemetry, "DescribeJob", "network") >= 2, what="timeouts")

        # ...while the healthy jobs kept their pace (300 ms interval) and discovery its own.
        # Counted, not timed: held behind the slow job, a healthy one would be described
        # once per slow attempt; at its own pace it is described at least twice as often.
        def paced() -> bool:
            wanted = max(5, 2 * since("DescribeJob:slow"))
            return all(since(f"DescribeJob:{job}") >= wanted for job in ("a", "b"))

        await until(lambda: paced() and since("ListJobs") >= 3, 30, "healthy jobs at their pace")
        assert telemetry.collection_success.labels("ep")._value.get() == 0


# --- Minor: pending jobs show while a long first cycle runs -------------------------------


async def test_pending_jobs_are_tracked_during_the_first_cycle(aws: HostileAws) -> None:
    ids = [f"p{i}" for i in range(12)]
    aws.list_page = lambda token: listing(*ids)
    for job_id in ids:
        aws.describe[job_id] = Drip(b"{}", every=0.3)  # slow, then unreadable: still pending
    running = InProcess(cfg(aws, "discover: {}", collector="concurrency: 1, interval: 60s"))
    async with running:
        running.start()
        await until(lambda: running.tracked("pending") >= 10, what="pending jobs tracked")
        collector = running.collector
        assert collector is not None and collector.cycles == 0


# --- D1 and D9: every output of a running exporter, read as a terminal would ---------------


async def run_exporter(
    tmp_path: Path, config: str, fmt: str, act: Callable[[str], Awaitable[list[str]]]
) -> tuple[str, str, list[str]]:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--config.file", str(config_file),
        "--web.listen-address", f"127.0.0.1:{port}", "--web.enable-lifecycle",
        "--log.level", "debug", "--log.format", fmt,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                assert process.returncode is None, "the exporter exited"
                try:
                    async with http.get(base + "/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            # Up, not ready: a target whose every call fails is never ready.
            await until(up, within=30, what="/healthz", interval=0.1)
        seen = await act(base)
        config_file.write_text(config.replace("region: eu-west-1", "region: [eu"))
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/-/reload") as r:
                seen.append(await r.text())
            async with http.get(base + "/metrics") as r:
                seen.append(await r.text())
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 15)
    return out.decode(), err.decode("utf-8", "replace"), seen


def exporter_config(aws: HostileAws, extra: str = "", jobs: str = "ids: [a]") -> str:
    return (
        "collector: {interval: 300ms, request_timeout: 1s, max_attempts: 2}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        f"{extra}    jobs: {{{jobs}}}\n"
    )


async def test_sts_credentials_in_a_parser_error_reach_no_output(
    tmp_path: Path, aws: HostileAws
) -> None:
    extra = f"    role_arn: {ROLE}\n    sts_endpoint_url: {aws.url}\n"

    async def act(base: str) -> list[str]:
        await until(lambda: aws.calls["AssumeRole"] >= 3, what="AssumeRole retried")
        return []

    out, err, seen = await run_exporter(tmp_path, exporter_config(aws, extra), "logfmt", act)
    # The path was taken: aiobotocore's refresh warning and our classified failure.
    assert "Refreshing temporary credentials failed" in err
    assert "outcome=malformed" in err and "ResponseParserError" in err
    assert any('outcome="malformed"' in s and 'operation="DescribeJob"' in s for s in seen)
    outputs = {"stdout": out, "stderr": err, "http": "\n".join(seen)}
    for where, text in outputs.items():
        for secret in (SECRET_KEY, SESSION_TOKEN, "hostile-secret", "hostile-session"):
            assert secret not in text, f"{secret} in {where}"
    assert "Traceback" not in err
    # One line per event, each a logfmt line.
    assert all(line.startswith("ts=") for line in err.splitlines()), err[-2000:]


HOSTILE_IDS = [
    "esc\x1b[2Jcleared",
    "nul\x00byte",
    "cr\rlf",
    "csi\x9b31m",
    "ls\u2028sep",
    "lone\ud800surrogate",
    "x" * 65,
]


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
async def test_listed_ids_that_are_not_job_ids_are_never_followed(
    tmp_path: Path, aws: HostileAws, fmt: str
) -> None:
    """ListJobs entries whose jobId CreateJob would refuse (control characters, a lone
    surrogate, 65 characters) are not jobs: never described, in no label, in no log line;
    the real job beside them is followed as usual."""
    aws.list_page = lambda token: listing(*HOSTILE_IDS, "real-job")

    async def act(base: str) -> list[str]:
        await until(lambda: aws.calls["DescribeJob:real-job"] >= 1, what="the real job described")
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
            return [await response.text()]

    _, err, bodies = await run_exporter(
        tmp_path, exporter_config(aws, jobs="discover: {}"), fmt, act
    )
    described = {key for key in aws.calls if key.startswith("DescribeJob:")}
    assert described == {"DescribeJob:real-job"}
    assert 'job_id="real-job"' in bodies[0]
    for char in ("\x1b", "\x00", "\r", "\x9b", "\u2028", "\ud800"):
        assert char not in err, repr(char)
        assert char not in bodies[0], repr(char)
    for line in err.splitlines():
        if fmt == "json":
            json.loads(line)
        else:
            assert line.startswith("ts=")


async def test_malformed_requests_log_no_tracebacks(tmp_path: Path, aws: HostileAws) -> None:
    async def act(base: str) -> list[str]:
        host, port = base.removeprefix("http://").split(":")
        for request in (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        ) * 10:
            with socket.create_connection((host, int(port))) as s:
                s.sendall(request)
                s.settimeout(5)
                with contextlib.suppress(OSError):
                    s.recv(1024)
        return []

    _, err, _ = await run_exporter(tmp_path, exporter_config(aws), "logfmt", act)
    assert "Traceback" not in err and "Error handling request" not in err
    refused = [line for line in err.splitlines() if "bad request refused" in line]
    # At debug, one short line per request; none above debug.
    assert refused and all(" level=debug " in line and len(line) < 600 for line in refused)
    assert not [line for line in err.splitlines() if "level=error" in line and "reload" not in line]


# --- Log levels: one spelling in flags and lines, the exporter and the simulator alike -----


def test_warn_is_spelled_warn(capsys: pytest.CaptureFixture[str]) -> None:
    from exporter.logs import setup_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging("warn", "logfmt")
        logging.getLogger("exporter.test").warning("careful target=%s", "x")
        logging.getLogger("exporter.test").info("hidden")
    finally:
        root.handlers[:], root.level = handlers, level
    err = capsys.readouterr().err
    assert "level=warn " in err and "hidden" not in err and "warning" not in err


async def test_simulator_logs_like_the_exporter(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "simulator", "--listen", "127.0.0.1:0",
        "--scenario", "demo",
        "--log.level", "info", "--log.format", "logfmt",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), 15)
    assert line.startswith("ts=") and " level=info logger=simulator " in line
    assert 'msg="simulator listening" url=http://127.0.0.1:' in line


async def test_an_answer_larger_than_the_cap_is_refused_unread(aws: HostileAws) -> None:
    # 9 MiB of a DescribeJob answer: over MAX_ANSWER_BYTES, refused from its length alone.
    padding = "x" * (9 * 1024 * 1024)
    aws.describe["huge"] = json.dumps(job_body("huge", description=padding)).encode()
    async with InProcess(cfg(aws, "ids: [huge, good]")) as collector:
        await collector.collect_once()
        telemetry = collector.telemetry
        assert collector.jobs["good"] is not None and collector.jobs["huge"] is None
        assert count(telemetry, "DescribeJob", "malformed") >= 1
        assert collector.last_error is not None and "larger than" in collector.last_error.message
