"""Failures that stay visible, readiness that means AWS answered, and the /status page.

Everything over real HTTP: the collector calls the simulator (or a canned IoT endpoint)
through botocore, and the tests read /readyz, /metrics and /status from the exporter's
aiohttp app the way curl and Python's HTTP clients do.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.supervisor import Supervisor
from exporter.config import Config, parse_config
from exporter.logs import escape_controls, sanitise
from exporter.selfmetrics import SelfMetrics
from exporter.server import STATUS_PAGES, build_app
from exporter.status import STATUS_REFRESH_SECONDS, wants_json
from exporter.store import MetricsStore
from exporter.webconfig import parse_web_config
from simulator import Simulator
from tests.hostile_aws import HostileAws, job_body, listing
from tests.integration.test_source_faults import job
from tests.iot_endpoint import IotEndpoint, Reply
from tests.simulator_client import Admin
from tests.support import until

HOSTILE = "<script>alert(1)</script>"


@dataclass
class Served:
    url: str
    collector: Supervisor
    telemetry: SelfMetrics
    app: web.Application | None = None


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[Served]]]:
    """Starts a Supervisor for a config and the exporter's app in front of it, on port 0."""
    runners: list[web.AppRunner] = []
    collectors: list[Supervisor] = []

    async def start(
        config: Config,
        web_config_text: str | None = None,
        status_refresh: float = STATUS_REFRESH_SECONDS,
    ) -> Served:
        store, telemetry = MetricsStore(), SelfMetrics()
        collector = Supervisor(config, store, telemetry)
        app = build_app(
            store,
            telemetry,
            lambda: collector.ready,
            status=collector.status,
            status_refresh=status_refresh,
        )
        if web_config_text is not None:
            parse_web_config(web_config_text, "web.yml", Path(".")).install(
                app, frozenset({"/healthz", "/readyz"})
            )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        await collector.start()
        collectors.append(collector)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return Served(f"http://127.0.0.1:{port}", collector, telemetry, app)

    yield start  # type: ignore[misc]
    for collector in collectors:
        await collector.stop()
    for runner in runners:
        await runner.cleanup()


def discovering(url: str, interval: str = "100ms", discovery: str = "1h") -> Config:
    return parse_config(
        f"collector: {{interval: {interval}, discovery_interval: {discovery}, "
        "request_timeout: 2s, max_attempts: 1}\n"
        f"targets:\n  - name: sim\n    region: us-east-1\n    endpoint_url: {url}\n"
        "    jobs: {discover: {}}\n"
    )


async def get(url: str, **headers: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as r:
        return r.status, await r.text(), r.headers


def gauge(metrics: str, name: str, target: str = "sim") -> float | None:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("target") == target:
                return sample.value
    return None


async def test_denied_discovery_stays_failed_and_unready_until_listing_works(
    sim: Simulator, admin: Admin, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    await admin.faults({"faults": {"denied": {"ratio": 1}}})
    # Discovery is due once an hour: every cycle after the first is describe-only, the
    # cycles that used to report success between discoveries.
    served = await serve(discovering(sim.url))
    target = lambda: served.collector.targets["sim"]  # noqa: E731
    seen: list[float | None] = []
    statuses: set[int] = set()
    start = target().cycles
    while target().cycles < start + 10:
        metrics = (await get(f"{served.url}/metrics"))[1]
        seen.append(gauge(metrics, "aws_iot_jobs_exporter_collection_success"))
        statuses.add((await get(f"{served.url}/readyz"))[0])
        await asyncio.sleep(0.03)
    assert set(seen) <= {0.0}, f"collection_success flapped: {seen}"
    assert statuses == {503}
    metrics = (await get(f"{served.url}/metrics"))[1]
    assert gauge(metrics, "aws_iot_jobs_exporter_discovery_last_success_timestamp_seconds") == 0
    assert gauge(metrics, "aws_iot_jobs_exporter_last_collection_success_timestamp_seconds") == 0

    status, body, headers = await get(f"{served.url}/status", Accept="application/json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    page = json.loads(body)
    assert page["ready"] is False
    (sim_status,) = page["targets"]
    assert sim_status["name"] == "sim" and sim_status["ready"] is False
    assert sim_status["collection_success"] is False
    assert sim_status["last_discovery_success"] is None
    error = sim_status["last_error"]
    assert error["class"] == "denied" and error["operation"] == "ListJobs"
    assert error["message"].startswith("AccessDeniedException")
    # A failed discovery is retried every cycle: at least one ListJobs per cycle.
    assert sim_status["api"]["calls"] >= 10 and sim_status["api"]["failed"] >= 10

    # Listing works again: the very next cycle discovers, and the target recovers.
    await admin.faults({"clear": True})
    await until(lambda: served.collector.ready, what="ready")
    assert (await get(f"{served.url}/readyz"))[0] == 200
    await until(
        lambda: served.telemetry.collection_success.labels("sim")._value.get() == 1,
        what="collection success",
    )
    page = json.loads((await get(f"{served.url}/status", Accept="application/json"))[1])
    (sim_status,) = page["targets"]
    assert sim_status["last_discovery_success"] is not None
    assert sum(sim_status["jobs_by_state"].values()) == len(sim.fleet.jobs)


async def test_healthy_target_is_ready_and_its_status_counts_its_jobs(
    sim: Simulator, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    # Long enough an interval that no job of a healthy target looks stale on a busy machine.
    served = await serve(discovering(sim.url, interval="2s", discovery="2s"))
    await until(lambda: served.collector.ready, what="ready")
    status, text, _ = await get(f"{served.url}/readyz")
    assert (status, text) == (200, "ready\n")
    await until(lambda: served.collector.targets["sim"].cycles >= 2, what="a successful cycle")
    page = json.loads((await get(f"{served.url}/status", Accept="application/json"))[1])
    assert page["ready"] is True
    (t,) = page["targets"]
    assert t["collection_success"] is True and t["last_error"] is None
    assert 0 < t["last_discovery_success"] <= time.time()
    assert 0 < t["last_collection_success"] <= time.time()
    assert set(t["jobs_by_state"]) == {"active", "frozen", "pending"}
    expected: dict[str, int] = {}
    for j in sim.fleet.jobs.values():
        expected[j.status] = expected.get(j.status, 0) + 1
    assert t["jobs_by_status"] == expected
    assert t["api"]["calls"] > 0 and t["api"]["throttled"] == 0
    assert t["stale"] == {"after_seconds": 4.0, "basis": "interval", "total": 0, "jobs": []}
    assert t["mode"] == "polling" and t["events"] is None
    assert t["failing"] == {"total": 0, "jobs": []}
    # The landing page links the status page.
    assert 'href="/status"' in (await get(f"{served.url}/"))[1]


async def test_explicit_ids_only_are_ready_once_aws_answers_a_describe(
    sim: Simulator, admin: Admin, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    await admin.faults({"faults": {"denied": {"ratio": 1}}})
    config = parse_config(
        "collector: {interval: 100ms, request_timeout: 2s, max_attempts: 1}\n"
        f"targets:\n  - name: sim\n    region: us-east-1\n    endpoint_url: {sim.url}\n"
        "    jobs: {ids: [firmware-v2-failing, no-such-job]}\n"
    )
    served = await serve(config)
    await until(lambda: served.collector.targets["sim"].cycles >= 3, what="cycles")
    assert (await get(f"{served.url}/readyz"))[0] == 503
    metrics = (await get(f"{served.url}/metrics"))[1]
    # No discovery, so no discovery timestamp to alert on.
    assert "aws_iot_jobs_exporter_discovery_last_success_timestamp_seconds{" not in metrics
    await admin.faults({"clear": True})
    await until(lambda: served.collector.ready, what="ready")
    # A job AWS does not know does not keep the target unready: AWS answered.
    assert gauge(metrics, "aws_iot_jobs_exporter_jobs_missing") is not None


@pytest.fixture
async def hostile() -> AsyncIterator[IotEndpoint]:
    ep = IotEndpoint()
    # A listed id CreateJob would refuse is never followed: it is in no status list.
    ep.jobs = {HOSTILE: job(HOSTILE), "second": job("second"), "fine": job("fine")}
    await ep.start()
    yield ep
    await ep.close()


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


async def test_hostile_job_ids_and_error_texts_are_escaped(
    hostile: IotEndpoint, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    config = parse_config(
        "collector: {interval: 100ms, discovery_interval: 1h, request_timeout: 2s, "
        "requests_per_second: 50, "
        "max_attempts: 1}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {hostile.url}\n"
        "    jobs: {discover: {}}\n"
    )
    served = await serve(config)
    await until(lambda: served.collector.ready, what="ready")
    message = json.dumps({"message": f"{HOSTILE} \x1b[31m\r\nforged=line"}).encode()
    hostile.queued["fine"] = [Reply(403, message, "AccessDeniedException")] * 1000
    hostile.queued["second"] = [Reply(500, b"{}", "InternalFailure")] * 1000
    await until(lambda: served.collector.targets["ep"].last_error is not None, what="the error")
    # Both jobs fail: they are listed as failing, each with its own error, not as stale.
    await until(
        lambda: served.collector.targets["ep"].status().failing_total == 2, what="failing jobs"
    )
    hostile.queued["second"] = []
    # The second job answers again; "fine" keeps failing, so its error becomes the last.
    target = served.collector.targets["ep"]
    await until(
        lambda: target.last_error is not None and target.last_error.job_id == "fine",
        what="fine's error last",
    )
    status, page, headers = await get(f"{served.url}/status", Accept="text/html")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "<script" not in page and "\x1b" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parser = _Elements()
    parser.feed(page)
    assert "script" not in parser.tags
    # The error text is there, as text, on one line: control characters are spaces, and
    # what followed a line break (a forged log line) is not shown at all.
    assert any(f"{HOSTILE}  [31m" in t for t in parser.text), parser.text
    assert "forged=line" not in page
    # A browser asking for everything gets the page, not JSON.
    assert not wants_json("text/html,application/xhtml+xml,*/*;q=0.8")
    assert wants_json("application/json")
    status, body, headers = await get(f"{served.url}/status", Accept="application/json")
    data = json.loads(body)
    assert body.isascii()
    (t,) = data["targets"]
    assert t["last_error"]["job_id"] == "fine"
    assert t["last_error"]["message"].startswith(f"AccessDeniedException: {HOSTILE}")
    # Each failing job with its own last error (the second may still be listed with its
    # 500 until its next describe).
    failing = {j["job_id"]: j for j in t["failing"]["jobs"]}["fine"]
    assert failing["error"]["class"] == "denied" and failing["error"]["job_id"] == "fine"
    assert t["stale"]["after_seconds"] == pytest.approx(0.2)
    assert set(served.collector.targets["ep"].jobs) == {"second", "fine"}
    assert all(j["job_id"] != HOSTILE for j in t["failing"]["jobs"])


def test_sanitise_removes_request_echoes_keys_and_tokens() -> None:
    echo = (
        "SignatureDoesNotMatch: The request signature we calculated does not match. "
        "The Canonical String for this request should have been 'GET\n/jobs\n"
        "x-amz-security-token:IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ'"
    )
    assert sanitise(echo) == (
        "SignatureDoesNotMatch: The request signature we calculated does not match. The "
        "[request details removed]"
    )
    assert sanitise("key AKIAIOSFODNN7EXAMPLE used") == "key [key id] used"
    assert "wJalrXUtnFEMI" not in sanitise("secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert len(sanitise("word " * 1000)) == 300
    arn = "arn:aws:iot:eu-west-1:123456789012:job/firmware-rollout-2024-06-eu-west-gateways"
    assert sanitise(f"job {arn} not found") == f"job {arn} not found"
    assert sanitise("a\x00b\x1b[0mc\u2028d") == "a b [0mc\u2028d"


async def test_status_page_is_behind_the_web_config(
    sim: Simulator, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    served = await serve(discovering(sim.url), f"basic_auth_users:\n  admin: '{hashed}'\n")
    assert (await get(f"{served.url}/status"))[0] == 401
    assert (await get(f"{served.url}/status", Accept="application/json"))[0] == 401
    auth = aiohttp.encode_basic_auth("admin", "pw")
    status, page, _ = await get(f"{served.url}/status", Authorization=auth)
    assert status == 200 and "AWS IoT Jobs Exporter status" in page


# Job ids (and a status) a hostile endpoint lists: bidi overrides and isolates, line and
# paragraph separators, C0 and C1 controls (and a lone surrogate in the error message,
# which would make the page fail to encode). The JSON escapes them; so must the HTML.
STATUS_IDS = [
    "rtl\u202eevil",
    "line\u2028sep\u2029end",
    "esc\x1b[2Jbel\x07nul\x00",
    "c1\x85\x9b2Jdel\x7f",
    "iso\u2066\u2067\u2068\u2069lrm\u200e\u200f\u202a\u202b\u202c\u202d\u061c",
    "x\ny\rz\tw",
]
VALID_IDS = ["job-a", "job-b"]
SHOWN_RAW = frozenset(
    [*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u061c", "\u200e", "\u200f",
     *map(chr, range(0x202A, 0x202F)), "\u2028", "\u2029", *map(chr, range(0x2066, 0x206A))]
)  # fmt: skip


async def test_status_html_shows_bidi_separators_and_controls_escaped(
    serve: Callable[..., asyncio.Future[Served]],
) -> None:
    # Ids with these characters are not job ids: listed, never followed. The jobs beside
    # them carry the characters in what AWS says of them: a status, an error message.
    page = listing(*STATUS_IDS, *VALID_IDS)
    aws = await HostileAws(list_page=lambda token: page).start()
    aws.describe[VALID_IDS[0]] = json.dumps(
        job_body(VALID_IDS[0], status="IN_PROGRESS\u202e\u2028")
    ).encode()
    try:
        served = await serve(discovering(aws.url))
        await until(lambda: served.collector.ready, what="ready")
        # Every describe fails from now on: each job is failing, one is the last error,
        # and the error message carries the same characters.
        failure = json.dumps(
            {"__type": "InternalFailure", "message": "down\u202e\u2028\x85now\ud800"}
        )
        for job_id in VALID_IDS:
            aws.describe[job_id] = (500, failure.encode())
        target = served.collector.targets["sim"]
        await until(
            lambda: (
                target.status().failing_total == len(VALID_IDS)
                and target.last_error is not None
                and target.last_error.job_id in VALID_IDS
            ),
            what="failing jobs and an error",
        )
        status, html_page, headers = await get(f"{served.url}/status", Accept="text/html")
        _, json_page, _ = await get(f"{served.url}/status", Accept="application/json")
    finally:
        await aws.close()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    # The page's own line breaks are its markup; no other of these characters is raw.
    raw = {f"U+{ord(c):04X}" for c in SHOWN_RAW.intersection(html_page) if c != "\n"}
    assert not raw, raw
    for job_id in STATUS_IDS:
        assert escape_controls(job_id) not in html_page, job_id
    for job_id in VALID_IDS:
        assert f"<code>{job_id}</code>" in html_page, job_id
    assert "IN_PROGRESS\\u202e\\u2028" in html_page
    assert "down\\u202e\\u2028 now\\ud800" in html_page
    # The JSON, already escaped, still gives the ids back whole.
    (t,) = json.loads(json_page)["targets"]
    assert {j["job_id"] for j in t["failing"]["jobs"]} == set(VALID_IDS)


async def test_status_is_rendered_once_per_interval_however_many_poll(
    serve: Callable[..., Any], sim: Simulator
) -> None:
    """Forty clients polling /status cost one render per format: they get the same bytes,
    and the event loop that serves /metrics is not spent rendering the page for each."""
    served = await serve(discovering(sim.url), status_refresh=3600.0)
    await until(lambda: served.collector.ready, 20, "ready")

    async def poll(as_json: bool) -> str:
        headers = {"Accept": "application/json"} if as_json else {}
        status, body, _ = await get(f"{served.url}/status", **headers)
        assert status == 200
        return body

    bodies = await asyncio.gather(*(poll(i % 2 == 0) for i in range(40)))
    assert len(set(bodies[0::2])) == 1 and len(set(bodies[1::2])) == 1
    assert json.loads(bodies[0])["generated_at"] > 0
    assert served.app is not None and served.app[STATUS_PAGES].renders == 2
    _, metrics, _ = await get(f"{served.url}/metrics")
    assert "aws_iot_job_info" in metrics


async def test_status_answers_whatever_a_thing_name_holds(serve: Callable[..., Any]) -> None:
    """A lone surrogate in a thing name (valid JSON from the endpoint) renders on both
    pages, as a visible escape, and the link to the thing stays a link."""
    aws = await HostileAws().start()
    aws.describe["fw"] = json.dumps(
        job_body("fw", jobProcessDetails={"numberOfInProgressThings": 1})
    ).encode()
    page = json.dumps(
        {
            "executionSummaries": [
                {
                    "thingArn": "arn:aws:iot:eu-west-1:123456789012:thing/bad\ud800\u0000",
                    "jobExecutionSummary": {"status": "IN_PROGRESS", "startedAt": 1.7e9},
                }
            ]
        }
    ).encode()
    aws.executions = lambda job_id, status, token: (
        page if status == "IN_PROGRESS" else b'{"executionSummaries": []}'
    )
    try:
        config = parse_config(
            "collector: {interval: 1s, request_timeout: 2s, max_attempts: 1, "
            "executions: {requests_per_second: 50}}\n"
            f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
            "    jobs: {ids: [fw]}\n"
        )
        served = await serve(config, status_refresh=0.0)

        async def listed() -> Any:
            status, body, _ = await get(f"{served.url}/status", Accept="application/json")
            assert status == 200, body
            stuck = json.loads(body)["targets"][0]["stuck"]
            return stuck and stuck[0]["oldest"]

        (row,) = await until(listed, 20, "the stuck execution on /status")
        assert row["thing_name"] == "bad\\ud800\x00"
        assert row["console_url"].isascii() and row["console_url"].endswith("bad%EF%BF%BD%00")
        status, html, _ = await get(f"{served.url}/status")
        assert status == 200 and "bad\\ud800\\u0000" in html
    finally:
        await aws.close()
