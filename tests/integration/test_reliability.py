"""Faults injected for real (simulator switches, a stopped endpoint, a real STS) and what they cost.

Each test runs the exporter's own Supervisor against a real HTTP endpoint through botocore's
real signing and parsing, then reads the outcome the way an operator does: from the parsed
exposition (job series plus self-metrics).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.supervisor import Supervisor
from exporter.config import Config, parse_config
from exporter.selfmetrics import SelfMetrics
from exporter.store import MetricsStore
from simulator import SimulatorThread
from tests.iot_endpoint import IotEndpoint
from tests.simulator_client import Admin
from tests.support import ROOT, free_port, until

pytestmark = pytest.mark.slow

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())
JOBS = ("alpha", "beta", "gamma", "delta")

# Four small jobs; beta carries every optional config so missing_field can drop members
# botocore's shape marks required. Quotas start off: tests switch them on.
SCENARIO = """
seed: 11
speed: 1
deletion_minutes: 1
devices: {queued_minutes: [0.2, 1], in_progress_minutes: [0.5, 3]}
groups:
  - {name: fleet, things: 40}
jobs:
  - {id: alpha, targets: [group:fleet], rollout: {maximum_per_minute: 10}}
  - id: beta
    targets: [group:fleet]
    rollout:
      maximum_per_minute: 20
      exponential_rate:
        base_rate_per_minute: 5
        increment_factor: 2
        rate_increase_criteria: {number_of_notified_things: 10}
    abort:
      - {failure_type: ALL, threshold_percentage: 50, min_number_of_executed_things: 10}
    retry:
      - {failure_type: FAILED, number_of_retries: 1}
    timeout_minutes: 20
  - {id: gamma, targets: [group:fleet], rollout: {maximum_per_minute: 10}}
  - {id: delta, targets: [group:fleet], rollout: {maximum_per_minute: 10}}
quotas: {enabled: false}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# --- harness -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim_scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario") / "reliability.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture
def sim(sim_scenario: Path) -> Iterator[SimulatorThread]:
    with SimulatorThread(sim_scenario) as thread:
        yield thread


@pytest.fixture
async def admin(sim: SimulatorThread) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, sim.url)


def target(
    name: str,
    url: str,
    ids: tuple[str, ...] = JOBS,
    discover: bool = False,
    extra: str = "",
) -> str:
    jobs = f"ids: [{', '.join(ids)}]" if ids else ""
    if discover:
        jobs = f"{jobs}, discover: {{}}" if jobs else "discover: {}"
    return (
        f"  - name: {name}\n    region: eu-west-1\n    endpoint_url: {url}\n"
        f"    jobs: {{{jobs}}}\n{extra}"
    )


def config(*targets: str, collector: str = "") -> Config:
    settings = (
        "interval: 300ms, discovery_interval: 1s, request_timeout: 1s, max_attempts: 2, "
        f"requests_per_second: 20, {collector}"
    )
    return parse_config(f"collector: {{{settings}}}\ntargets:\n" + "".join(targets))


class Running:
    """The exporter's collector in this event loop, read through its parsed exposition."""

    def __init__(self, cfg: Config) -> None:
        self.store = MetricsStore()
        self.telemetry = SelfMetrics()
        self.collector = Supervisor(cfg, self.store, self.telemetry)

    async def __aenter__(self) -> Running:
        await self.collector.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.collector.stop()

    def text(self) -> str:
        return (self.store.body() + generate_latest(self.telemetry.registry)).decode()

    def samples(self) -> Samples:
        out: Samples = {}
        for family in text_string_to_metric_families(self.text()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def last_success(self, job_id: str, target: str = "sim") -> float | None:
        for (name, labels), value in self.samples().items():
            if name == "aws_iot_job_last_success_timestamp_seconds":
                found = dict(labels)
                if found["job_id"] == job_id and found["target"] == target:
                    return value
        return None

    def api(self, outcome: str, operation: str = "DescribeJob", target: str = "sim") -> float:
        name = "aws_iot_jobs_exporter_api_requests_total"
        found = self.value(name, target=target, operation=operation, outcome=outcome)
        return found or 0.0

    def success(self, target: str = "sim") -> float | None:
        return self.value("aws_iot_jobs_exporter_collection_success", target=target)

    def job_ids(self, target: str = "sim") -> set[str]:
        return {
            dict(labels)["job_id"]
            for name, labels in self.samples()
            if name == "aws_iot_job_info" and dict(labels)["target"] == target
        }


async def all_fresh(running: Running, since: float, jobs: tuple[str, ...] = JOBS) -> None:
    await until(
        lambda: all((running.last_success(j) or 0) > since for j in jobs),
        what=f"every job of {jobs} described after {since}",
    )


def total_requests(stats: dict[str, Any]) -> int:
    return sum(op["total"] for op in stats["requests"].values())


# --- throttling ------------------------------------------------------------------------------


async def test_throttling_storm_is_paced_keeps_values_and_recovers(
    sim: SimulatorThread, admin: Admin
) -> None:
    cfg = config(target("sim", sim.url, discover=True), collector="requests_per_second: 10")
    async with Running(cfg) as running:
        await all_fresh(running, 0)
        await until(lambda: running.success() == 1, what="a clean cycle before the storm")

        # The storm: one DescribeJob and one ListJobs per 100 s; everything else is a 429.
        await admin.faults({"quotas": {"enabled": True, "DescribeJob": 0.01, "ListJobs": 0.01}})
        storm_started = time.time()
        before = {j: running.last_success(j) for j in JOBS}
        rates = []
        previous, previous_at = total_requests(await admin.stats()), time.monotonic()
        for _ in range(8):
            await asyncio.sleep(0.5)  # a sampling period of the call rate, not a wait for state
            now_total, now = total_requests(await admin.stats()), time.monotonic()
            rates.append((now_total - previous) / (now - previous_at))
            previous, previous_at = now_total, now
        # No tight retry loop: the call rate stays near the budget (10/s per operation,
        # plus the bucket's one-call burst), far below what an unpaced client would send.
        assert max(rates) < 30, rates

        # botocore's adaptive mode slows the client after each 429: on a loaded machine the
        # third can take longer than the sampling above, so it is polled for.
        async def three_throttled() -> bool:
            stats = await admin.stats()
            return sum(op["throttled"] for op in stats["requests"].values()) >= 3

        await until(three_throttled, within=20, what="three 429s", interval=0.2)
        assert running.api("throttled") > 0
        # A cycle under the storm ends once botocore's retries give up: poll for it.
        await until(lambda: running.success() == 0, what="a failed cycle during the storm")
        # Last good values stay exported; at most one describe got through the storm, so
        # every other job's last_success stopped advancing and its age is visible.
        assert running.job_ids() == set(JOBS)
        advanced = [j for j in JOBS if (running.last_success(j) or 0) > (before[j] or 0)]
        assert len(advanced) <= 1, advanced
        for job_id in set(JOBS) - set(advanced):
            assert (running.last_success(job_id) or 0) < storm_started

        # After the storm every series is fresh again and cycles succeed.
        await admin.faults({"quotas": {"enabled": False}})
        storm_ended = time.time()
        await all_fresh(running, storm_ended)
        await until(lambda: running.success() == 1, what="collection_success back to 1")
        last = running.value(
            "aws_iot_jobs_exporter_last_collection_success_timestamp_seconds", target="sim"
        )
        assert last is not None and last > storm_ended


# --- endpoint down and back ------------------------------------------------------------------


async def test_endpoint_down_then_back_on_the_same_port(sim: SimulatorThread) -> None:
    async with Running(config(target("sim", sim.url, discover=True))) as running:
        await all_fresh(running, 0)
        port = sim.port
        await asyncio.to_thread(sim.stop)
        down_at = time.time()
        network = running.api("network")
        await until(lambda: running.api("network") > network + 4, what="network errors counted")
        await until(lambda: running.success() == 0, what="collection_success 0 while down")
        assert running.job_ids() == set(JOBS)
        assert all((running.last_success(j) or 0) < down_at + 1 for j in JOBS)

        await asyncio.to_thread(sim.restart)
        assert sim.port == port
        back_at = time.time()
        await all_fresh(running, back_at)
        await until(lambda: running.success() == 1, what="collection_success back to 1")


# --- faults on one job -----------------------------------------------------------------------

# fault switch, outcomes beta's failed describes may be counted as, and how beta fares:
# "fails" (every describe of beta fails), "mixed" (some do: wrong_type picks among fields,
# and botocore reads a few wrong types silently), "tolerated" (a missing member or a new
# enum value: the tolerant reader keeps beta fresh and the call counts as ok).
ONE_JOB_FAULTS: dict[str, tuple[dict[str, Any], set[str], str]] = {
    "reset": ({"reset": {"ratio": 1}}, {"network"}, "fails"),
    "latency": ({"latency": {"fixed_ms": 2500}}, {"network"}, "fails"),
    "unavailable_503": ({"unavailable": {"ratio": 1}}, {"unavailable"}, "fails"),
    "unavailable_500": (
        {"unavailable": {"ratio": 1}, "unavailable_status": 500},
        {"unavailable"},
        "fails",
    ),
    "malformed": ({"malformed": {"ratio": 1}}, {"malformed"}, "fails"),
    "truncated": ({"truncated": {"ratio": 1}}, {"network"}, "fails"),
    "wrong_type": ({"wrong_type": {"ratio": 1}}, {"malformed"}, "mixed"),
    "missing_field": ({"missing_field": {"ratio": 1}}, set(), "tolerated"),
    "unknown_enum": ({"unknown_enum": {"ratio": 1}}, set(), "tolerated"),
}


SIM_OUTCOME = {
    "reset": "reset",
    "latency": "delayed",
    "unavailable": "unavailable",
    "malformed": "malformed",
    "truncated": "truncated",
}


@pytest.mark.parametrize("fault", list(ONE_JOB_FAULTS))
async def test_fault_on_one_job_leaves_the_others_intact(
    sim: SimulatorThread, admin: Admin, fault: str
) -> None:
    switch, outcomes, fares = ONE_JOB_FAULTS[fault]
    rules = {
        k: ({**v, "job_ids": ["beta"], "operations": ["DescribeJob"]} if isinstance(v, dict) else v)
        for k, v in switch.items()
    }
    async with Running(config(target("sim", sim.url, discover=True))) as running:
        await all_fresh(running, 0)
        before = {o: running.api(o) for o in ("network", "unavailable", "malformed", "error")}
        await admin.faults({"faults": rules})
        started = time.time()
        others = tuple(j for j in JOBS if j != "beta")
        # Other jobs keep being described through the fault...
        await all_fresh(running, started, others)
        await all_fresh(running, time.time(), others)
        # The fault did hit beta (the simulator counts it by outcome).
        seen = (await admin.stats())["requests"]["DescribeJob"]
        assert seen[SIM_OUTCOME.get(fault.split("_")[0], "bad_fields")] > 0, seen
        if fares == "tolerated":
            # ...and a reader tolerant of absent members and new enum values keeps beta fresh.
            await all_fresh(running, started, ("beta",))
            assert running.api("error") == before["error"]
            if fault == "unknown_enum":
                # The new value is exported as it arrives (docs/metrics.md).
                await until(
                    lambda: any(
                        v in running.text()
                        for v in ('status="PAUSED"', '"ADAPTIVE"', 'failure_type="THROTTLED"')
                    ),
                    what="the unknown enum value exported",
                )
            return
        await until(
            lambda: sum(running.api(o) - before[o] for o in outcomes) >= 2,
            what=f"{fault} counted as {outcomes}",
        )
        # beta's last good values stay exported; when every describe fails they are frozen
        # at the time of the fault and the target's cycles report the failure.
        assert "beta" in running.job_ids()
        if fares == "fails":
            assert running.success() == 0
            beta = running.last_success("beta")
            assert beta is not None and beta < started + 1
        assert running.job_ids() == set(JOBS)
        assert running.api("error") == before["error"]


# --- credentials -----------------------------------------------------------------------------


class FakeSts:
    """AssumeRole over botocore's query protocol: short-lived keys, numbered as issued."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.issued = 0
        self.requests: list[dict[str, str]] = []
        self.signed_with: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(form)
        self.signed_with.append(access_key(request))
        if form.get("Action") != "AssumeRole":
            return web.Response(status=400, text="unsupported")
        self.issued += 1
        n = self.issued
        # botocore refreshes 15 minutes before expiry: this much past that is the real life.
        expires = datetime.now(UTC) + timedelta(seconds=15 * 60 + self.lifetime)
        body = f"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAROLE{n:08d}</AccessKeyId>
      <SecretAccessKey>role-secret-{n}-do-not-log</SecretAccessKey>
      <SessionToken>role-session-token-{n}-do-not-log</SessionToken>
      <Expiration>{expires.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]}Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROAROLE:{form.get("RoleSessionName", "")}</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/reader/{form.get("RoleSessionName", "")}</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>req-{n}</RequestId></ResponseMetadata>
</AssumeRoleResponse>"""
        return web.Response(text=body, content_type="text/xml")

    async def start(self) -> FakeSts:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


_CREDENTIAL = re.compile(r"Credential=([^/]+)/")


def access_key(request: web.Request) -> str:
    match = _CREDENTIAL.search(request.headers.get("Authorization", ""))
    return match.group(1) if match else ""


class SigningEndpoint(IotEndpoint):
    """IotEndpoint that also records the access key each DescribeJob was signed with."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.tokens: list[str] = []

    async def _describe(self, request: web.Request) -> web.Response:
        self.keys.append(access_key(request))
        self.tokens.append(request.headers.get("X-Amz-Security-Token", ""))
        return await super()._describe(request)


def full_job(job_id: str) -> dict[str, Any]:
    body = json.loads(json.dumps(FULL))
    body["job"].update(jobId=job_id, jobArn=f"arn:aws:iot:eu-west-1:123456789012:job/{job_id}")
    return body


@pytest.fixture
async def sts() -> AsyncIterator[FakeSts]:
    server = await FakeSts(lifetime=2.0).start()
    yield server
    await server.close()


@pytest.fixture
async def signing() -> AsyncIterator[SigningEndpoint]:
    endpoint = SigningEndpoint()
    endpoint.jobs = {"role-job": full_job("role-job")}
    await endpoint.start()
    yield endpoint
    await endpoint.close()


async def test_assumed_role_credentials_are_refreshed_before_they_expire(
    sts: FakeSts, signing: SigningEndpoint
) -> None:
    extra = (
        "    role_arn: arn:aws:iam::123456789012:role/reader\n"
        f"    sts_endpoint_url: {sts.url}\n    external_id: ext-0123\n"
        "    session_name: reliability\n"
    )
    cfg = config(target("sim", signing.url, ids=("role-job",), extra=extra))
    async with Running(cfg) as running:
        await until(lambda: "ASIAROLE00000001" in signing.keys, what="first role key used")
        await until(lambda: sts.issued >= 3, within=30, what="credentials refreshed twice")
        await until(
            lambda: f"ASIAROLE{sts.issued:08d}" in signing.keys, what="newest role key used"
        )
        assert running.success() == 1
        assert running.api("denied") == 0
    # Every IoT call was signed with a role key and carried its session token; the source
    # credentials signed only the AssumeRole calls.
    assert signing.keys and all(k.startswith("ASIAROLE") for k in signing.keys)
    assert all(t.startswith("role-session-token-") for t in signing.tokens)
    assert set(sts.signed_with) == {"testing"}
    # Keys are used in the order they were issued: no call goes back to an expired one.
    order = [int(k[len("ASIAROLE") :]) for k in signing.keys]
    assert order == sorted(order)
    first = sts.requests[0]
    assert first["RoleArn"] == "arn:aws:iam::123456789012:role/reader"
    assert first["ExternalId"] == "ext-0123"
    assert first["RoleSessionName"] == "reliability"


async def test_denied_target_is_reported_without_stopping_another(
    sim: SimulatorThread, admin: Admin
) -> None:
    await admin.faults({"faults": {"denied": {"ratio": 1, "job_ids": ["alpha", "beta"]}}})
    cfg = config(
        target("locked", sim.url, ids=("alpha", "beta")),
        target("open", sim.url, ids=("gamma", "delta")),
    )
    async with Running(cfg) as running:
        await until(
            lambda: running.api("denied", target="locked") >= 4, what="denied calls counted"
        )
        await until(lambda: running.success("open") == 1, what="the open target succeeds")
        started = time.time()
        await until(
            lambda: all(
                (running.last_success(j, "open") or 0) > started for j in ("gamma", "delta")
            ),
            what="the open target keeps collecting",
        )
        assert running.success("locked") == 0
        assert running.job_ids("locked") == set()
        assert running.api("denied", target="open") == 0


# --- missing and deleted jobs ----------------------------------------------------------------


async def test_missing_job_is_reported_and_deleted_jobs_disappear(
    sim: SimulatorThread, admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="exporter.collect.supervisor")
    cfg = config(target("sim", sim.url, ids=("ghost-job",), discover=True))
    async with Running(cfg) as running:
        await all_fresh(running, 0)
        await until(
            lambda: running.value("aws_iot_jobs_exporter_jobs_missing", target="sim") == 1,
            what="jobs_missing 1",
        )
        assert "job not found target=sim job_id=ghost-job" in caplog.text
        assert running.job_ids() == set(JOBS)

        await admin.delete("delta")
        await admin.advance(2)  # past deletion_minutes: DescribeJob now answers NotFound
        await until(lambda: "delta" not in running.job_ids(), what="deleted job dropped")
        assert 'job_id="delta"' not in running.text()
        # A discovered job that AWS deleted is gone, not missing; the explicit ghost stays.
        await until(lambda: running.success() is not None)
        assert running.value("aws_iot_jobs_exporter_jobs_missing", target="sim") == 1
        started = time.time()
        await all_fresh(running, started, ("alpha", "beta", "gamma"))


# --- secrets ---------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_secrets_stay_out_of_every_output(
    tmp_path: Path, sts: FakeSts, signing: SigningEndpoint
) -> None:
    external_id = "ext-id-5ecret-91c2"
    session_token = "source-session-token-5ecret-77aa"
    secret_key = "source-secret-key-5ecret-3b4f"
    otlp_secret = "otlp-api-key-5ecret-0d1e"
    password = "basic-auth-password-5ecret"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    dead_port = free_port()
    config_file = tmp_path / "config.yaml"
    body = (
        "collector: {interval: 500ms, request_timeout: 1s, max_attempts: 2}\n"
        "otel:\n  enabled: true\n"
        f"  endpoint: http://127.0.0.1:{dead_port}\n  interval: 1s\n  timeout: 1s\n"
        f"  headers: {{x-api-key: {otlp_secret}}}\n"
        "targets:\n"
        + target(
            "sim",
            signing.url,
            ids=("role-job", "absent-job"),
            extra=(
                "    role_arn: arn:aws:iam::123456789012:role/reader\n"
                f"    sts_endpoint_url: {sts.url}\n    external_id: {external_id}\n"
            ),
        )
    )
    config_file.write_text(body)
    web_config = tmp_path / "web.yaml"
    web_config.write_text(f"basic_auth_users:\n  admin: '{hashed}'\n")
    port = free_port()
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="AKIASOURCE",
        AWS_SECRET_ACCESS_KEY=secret_key,
        AWS_SESSION_TOKEN=session_token,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--config.file", str(config_file),
        "--web.listen-address", f"127.0.0.1:{port}", "--web.config.file", str(web_config),
        "--web.enable-lifecycle", "--log.level", "debug",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    seen: list[str] = []
    auth = {"Authorization": basic("admin", password)}
    try:
        async with aiohttp.ClientSession() as http:

            async def get(path: str, **kwargs: Any) -> tuple[int, str]:
                async with http.get(base + path, **kwargs) as r:
                    text = await r.text()
                    seen.append(f"{path} {r.status} {dict(r.headers)}\n{text}")
                    return r.status, text

            async def ready() -> bool:
                assert process.returncode is None, "exporter exited"
                try:
                    return (await get("/readyz"))[0] == 200
                except aiohttp.ClientError:
                    return False

            await until(ready, within=30, what="exporter ready", interval=0.1)
            # Credentials expire and are refreshed at least once while it runs.
            await until(lambda: sts.issued >= 2, within=30, what="a credential refresh")
            status, metrics = await get("/metrics", headers=auth)
            assert status == 200 and 'job_id="role-job"' in metrics
            assert (await get("/"))[0] in (200, 401)
            assert (await get("/", headers=auth))[0] == 200
            assert (await get("/metrics"))[0] == 401
            assert (await get("/metrics", headers={"Authorization": basic("admin", "wrong")}))[
                0
            ] == 401
            assert (await get("/nothing-here", headers=auth))[0] == 404
            # A reload that fails on a secret-bearing key answers an error body.
            config_file.write_text(
                body.replace(f"x-api-key: {otlp_secret}", f"x-api-key: [{otlp_secret}]").replace(
                    f"external_id: {external_id}", f"external_id: [{external_id}]"
                )
            )
            async with http.post(base + "/-/reload", headers=auth) as r:
                seen.append(f"reload {r.status}\n{await r.text()}")
                assert r.status == 500
            config_file.write_text(body.replace("role_arn: arn:aws:iam::", "role_arn: arn:x::"))
            async with http.post(base + "/-/reload", headers=auth) as r:
                seen.append(f"reload {r.status}\n{await r.text()}")
                assert r.status == 500
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            out, err = await asyncio.wait_for(process.communicate(), 15)
        except TimeoutError:
            process.kill()
            out, err = await process.communicate()
    outputs = {
        "stdout": out.decode(),
        "stderr": err.decode(),
        "http": "\n".join(seen),
        "iot-requests": "\n".join(signing.keys),
    }
    assert "reload failed" in outputs["stderr"]
    assert "job not found" in outputs["stderr"]
    assert process.returncode == 0, outputs["stderr"][-2000:]
    secrets = {
        "external_id": external_id,
        "session token": session_token,
        "secret key": secret_key,
        "otlp header": otlp_secret,
        "basic auth password": password,
        "basic auth hash": hashed,
        "role secret": "role-secret-",
        "role session token": "role-session-token-",
    }
    leaks = [
        f"{what} in {where}"
        for what, secret in secrets.items()
        for where, text in outputs.items()
        if secret in text
    ]
    assert not leaks, leaks


# --- one unreadable value must not cost the other jobs ----------------------------------------


async def test_out_of_range_count_on_one_job_leaves_the_others_intact() -> None:
    endpoint = IotEndpoint()
    endpoint.jobs = {"huge": full_job("huge"), "fine": full_job("fine")}
    await endpoint.start()
    try:
        async with Running(config(target("sim", endpoint.url, ids=("huge", "fine")))) as running:
            await all_fresh(running, 0, ("huge", "fine"))
            # JSON allows any integer; one beyond a float's range is not a count AWS sends,
            # but a reader of untrusted input must refuse it for that job only.
            body = full_job("huge")
            body["job"]["jobProcessDetails"]["numberOfQueuedThings"] = 10**400
            endpoint.raw("huge", json.dumps(body).encode(), times=10_000)
            started = time.time()
            await all_fresh(running, started, ("fine",))
            await all_fresh(running, time.time(), ("fine",))
            await until(lambda: running.api("malformed") >= 2, what="counted as malformed")
            assert running.job_ids() == {"huge", "fine"}
            assert (running.last_success("huge") or 0) < started
    finally:
        await endpoint.close()
