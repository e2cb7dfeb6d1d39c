"""check-config: optional packages named with file and field; --probe against real endpoints.

The probe runs as the real command in a subprocess, against the simulator (IoT, with its
faults) and moto's server (STS for the identity and the role, and IoT), over real HTTP
with botocore's signing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path

import boto3
import pytest

from exporter.logs import escape_controls
from simulator import Simulator
from tests.hostile_aws import HostileAws, listing
from tests.simulator_client import Admin
from tests.support import ROOT, free_port

SECRET = "probe-secret-key-must-not-show-0123456789"


async def check(config: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "check-config", "--config.file", str(config), *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env or dict(os.environ, AWS_SECRET_ACCESS_KEY=SECRET),
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, out.decode()


def write(tmp_path: Path, body: str, request_timeout: str = "2s") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"collector: {{request_timeout: {request_timeout}, max_attempts: 1}}\n"
        + textwrap.dedent(body)
    )
    return path


def line_of(out: str, target: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith(f"{target}: ")]
    return line


async def test_probe_reports_ok_with_account_and_identity(
    sim: Simulator, moto_url: str, tmp_path: Path
) -> None:
    config = write(
        tmp_path,
        f"""\
        targets:
          - name: sim
            region: us-east-1
            endpoint_url: {sim.url}
            sts_endpoint_url: {moto_url}
            jobs: {{discover: {{}}}}
          - name: explicit
            region: us-east-1
            endpoint_url: {sim.url}
            sts_endpoint_url: {moto_url}
            jobs: {{ids: [firmware-v2-failing]}}
        """,
    )
    code, out = await check(config, "--probe")
    assert code == 0, out
    sim_line = line_of(out, "sim")
    assert "region=us-east-1 account=123456789012 identity=arn:aws:sts::123456789012:" in sim_line
    assert sim_line.endswith(")") and " OK (ListJobs 1 job, DescribeJob " in sim_line
    assert "OK (DescribeJob firmware-v2-failing, ListJobExecutionsForJob)" in line_of(
        out, "explicit"
    )
    assert "probe: 2 of 2 target(s) OK" in out
    assert SECRET not in out and "Traceback" not in out


@pytest.mark.parametrize(
    ("faults", "failure", "step"),
    [
        ({"denied": {"ratio": 1}}, "denied", "ListJobs"),
        ({"denied": {"ratio": 1, "operations": ["DescribeJob"]}}, "denied", "DescribeJob"),
        ({"unavailable": {"ratio": 1}}, "unavailable", "ListJobs"),
        ({"reset": {"ratio": 1}}, "unreachable", "ListJobs"),
    ],
)
async def test_probe_names_each_simulated_fault(
    sim: Simulator,
    admin: Admin,
    moto_url: str,
    tmp_path: Path,
    faults: dict[str, object],
    failure: str,
    step: str,
) -> None:
    await admin.faults({"faults": faults})
    config = write(
        tmp_path,
        f"""\
        targets:
          - name: sim
            region: us-east-1
            endpoint_url: {sim.url}
            sts_endpoint_url: {moto_url}
            jobs: {{discover: {{}}}}
        """,
    )
    code, out = await check(config, "--probe")
    assert code == 1, out
    line = line_of(out, "sim")
    assert f" FAILED {failure} at {step}: " in line, line
    # The identity was found before IoT failed: the operator sees whose calls are refused.
    assert "account=123456789012" in line
    assert "probe: 0 of 1 target(s) OK" in out
    assert SECRET not in out and "Traceback" not in out


async def test_probe_throttled_by_the_simulators_quota(
    sim: Simulator, admin: Admin, moto_url: str, tmp_path: Path
) -> None:
    # A quota of one ListJobs per 100 s.
    await admin.faults({"quotas": {"ListJobs": 0.01, "enabled": True}})
    config = write(
        tmp_path,
        f"""\
        targets:
          - name: sim
            region: us-east-1
            endpoint_url: {sim.url}
            sts_endpoint_url: {moto_url}
            jobs: {{discover: {{}}}}
        """,
    )
    # The first probe spends the quota's one token; the second is refused.
    await check(config, "--probe")
    code, out = await check(config, "--probe")
    assert code == 1, out
    assert " FAILED throttled at ListJobs: ThrottlingException" in line_of(out, "sim")


async def test_probe_against_moto_with_a_role_and_every_failure_kind(
    moto_url: str, tmp_path: Path
) -> None:
    iot = boto3.client("iot", region_name="us-east-1", endpoint_url=moto_url)
    job_id = f"probe-{uuid.uuid4().hex[:8]}"
    thing = iot.create_thing(thingName=f"{job_id}-thing")["thingArn"]
    iot.create_job(jobId=job_id, targets=[thing], document="{}")
    closed = free_port()
    config = write(
        tmp_path,
        f"""\
        targets:
          - name: role
            region: us-east-1
            endpoint_url: {moto_url}
            sts_endpoint_url: {moto_url}
            role_arn: arn:aws:iam::123456789012:role/reader
            external_id: probe-external-id-not-shown
            jobs: {{ids: [{job_id}]}}
          - name: missing-job
            region: us-east-1
            endpoint_url: {moto_url}
            sts_endpoint_url: {moto_url}
            jobs: {{ids: [no-such-job-{job_id}]}}
          - name: closed-port
            region: us-east-1
            endpoint_url: http://127.0.0.1:{closed}
            sts_endpoint_url: {moto_url}
            jobs: {{discover: {{}}}}
          - name: bad-region
            region: xx-nowhere-1
            sts_endpoint_url: {moto_url}
            jobs: {{discover: {{}}}}
        """,
    )
    code, out = await check(config, "--probe")
    assert code == 1, out
    role = line_of(out, "role")
    assert "identity=arn:aws:sts::123456789012:assumed-role/reader/" in role, role
    assert f"OK (DescribeJob {job_id}, ListJobExecutionsForJob)" in role
    assert " FAILED not_found at DescribeJob: ResourceNotFoundException" in line_of(
        out, "missing-job"
    )
    assert " FAILED unreachable at ListJobs: " in line_of(out, "closed-port")
    assert " FAILED region at ListJobs: 'xx-nowhere-1' is not a region" in line_of(
        out, "bad-region"
    )
    assert "probe: 1 of 4 target(s) OK" in out
    for secret in (SECRET, "probe-external-id-not-shown"):
        assert secret not in out
    assert "Traceback" not in out


async def test_probe_without_any_credentials(sim: Simulator, tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""\
        targets:
          - name: sim
            region: us-east-1
            endpoint_url: {sim.url}
            jobs: {{discover: {{}}}}
        """,
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_DEFAULT_REGION"
    }
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    code, out = await check(config, "--probe", env=env)
    assert code == 1, out
    assert " FAILED credentials at credentials: no credentials found" in line_of(out, "sim")


async def test_without_probe_no_call_is_made(sim: Simulator, admin: Admin, tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""\
        targets:
          - name: sim
            region: us-east-1
            endpoint_url: {sim.url}
            jobs: {{discover: {{}}}}
        """,
    )
    code, out = await check(config)
    assert code == 0, out
    assert out.strip().startswith(
        f"{config}: valid: 1 target(s), 0 explicit job id(s), 1 target(s) with discovery"
    )
    requests = (await admin.stats())["requests"]
    assert not any(sum(outcomes.values()) for outcomes in requests.values()), requests


# Hides the OpenTelemetry packages from the interpreter, as if they were not installed.
HIDE_OTEL = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from exporter.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", [["check-config"], []])
def test_otel_enabled_without_its_packages_names_file_and_field(
    tmp_path: Path, command: list[str]
) -> None:
    import subprocess

    config = tmp_path / "otel.yaml"
    config.write_text(
        "otel: {enabled: true, endpoint: 'http://127.0.0.1:1'}\n"
        "targets:\n  - {name: a, region: us-east-1, jobs: {ids: [x]}}\n"
    )
    flags = [] if command else ["--web.listen-address", f"127.0.0.1:{free_port()}"]
    result = subprocess.run(
        [sys.executable, "-c", HIDE_OTEL, *command, "--config.file", str(config), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {config}: otel.enabled: true needs "), result.stderr
    assert "pip install '.[otel]'" in result.stderr
    assert "Traceback" not in result.stderr


# Job ids a hostile IoT endpoint lists: screen clears, window titles (OSC ended by BEL),
# right-to-left overrides, and line breaks of every kind followed by a forged result line.
HOSTILE_IDS = [
    "a\x1b[2Jb",
    "\x1b]0;title\x07",
    "\u202eKO :1t",
    "x\n t1: OK",
    "x\rt1: OK",
    "x\x85t1: OK\u2028t1: OK\u2029t1: OK\x0bt1: OK",
    "\x9b2J\u2066\u200f\x7f\x00\u061c\ufeff",
    "\ud800",
]
FORGED_IDENTITY = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<GetCallerIdentityResult>"
    "<Arn>arn:aws:sts::123456789012:assumed-role/r/\u202eKO :1t\u2028t1: OK\x85\x9b2J</Arn>"
    "<UserId>AROAHOSTILE</UserId><Account>123456789012\u2029t1: OK</Account>"
    "</GetCallerIdentityResult></GetCallerIdentityResponse>"
).encode()
RAW_CONTROLS = frozenset(
    [*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u061c", "\u200b", "\u200e",
     "\u200f", *map(chr, range(0x202A, 0x202F)), "\u2028", "\u2029",
     *map(chr, range(0x2066, 0x206A)), "\ufeff", "\ud800"]
)  # fmt: skip


async def test_probe_escapes_what_a_hostile_endpoint_lists(tmp_path: Path) -> None:
    async def endpoint(job_id: str) -> HostileAws:
        page = listing(job_id)
        return await HostileAws(list_page=lambda token: page, sts=FORGED_IDENTITY).start()

    servers = [await endpoint(job_id) for job_id in ["fw-1", *HOSTILE_IDS]]
    # t1 fails, with an error message that forges another target's success.
    message = "no such job \u202e\u2028t2: OK\x1b]0;owned\x07\x85t2: OK\ud800"
    error = json.dumps({"__type": "InvalidRequestException", "message": message}).encode()
    servers[0].describe["fw-1"] = (400, error)
    names = ["t1", *(f"h{i}" for i in range(len(HOSTILE_IDS)))]
    targets = "".join(
        f"  - name: {name}\n    region: us-east-1\n    endpoint_url: {s.url}\n"
        f"    sts_endpoint_url: {s.url}\n    jobs: {{discover: {{}}}}\n"
        for name, s in zip(names, servers, strict=True)
    )
    try:
        # The targets are probed at once, their clients built on one loop: on a loaded
        # machine a connection can wait seconds for it, and 2 s would read as unreachable.
        config = write(tmp_path, "targets:\n" + targets, request_timeout="15s")
        code, out = await check(config, "--probe")
    finally:
        for server in servers:
            await server.close()
    assert code == 1, ascii(out)
    lines = out.removesuffix("\n").split("\n")
    assert not RAW_CONTROLS.intersection("".join(lines)), ascii(out)
    assert lines[0].startswith(f"{tmp_path / 'config.yaml'}: valid: "), ascii(out)
    assert lines[-1] == f"probe: {len(names) - 2} of {len(names)} target(s) OK", ascii(out)
    # One line per target, in order, each starting with its own name: no line reads as
    # a result that no target gave.
    assert [line.split(": region=", 1)[0] for line in lines[1:-1]] == names, ascii(out)
    t1 = lines[1]
    assert " FAILED " in t1 and " at DescribeJob: InvalidRequestException: no such job " in t1
    assert "\\u202e\\u2028t2: OK" in t1 and "t2: OK\\ud800" in t1, t1
    # Each id shown whole and escaped; botocore cannot send the lone surrogate at all.
    for line, job_id in zip(lines[2:-2], HOSTILE_IDS[:-1], strict=True):
        assert line.endswith(
            f" OK (ListJobs 1 job, DescribeJob {escape_controls(job_id)}, ListJobExecutionsForJob)"
        )
        assert "identity=arn:aws:sts::123456789012:assumed-role/r/\\u202eKO :1t\\u2028" in line
    assert " FAILED " in lines[-2] and "\\ud800" in lines[-2], lines[-2]


async def test_probe_checks_each_event_queue_without_consuming(
    sim: Simulator, moto_url: str, tmp_path: Path
) -> None:
    missing = sim.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    config = write(
        tmp_path,
        f"""\
        targets:
          - name: events
            region: us-east-1
            endpoint_url: {sim.url}
            sts_endpoint_url: {moto_url}
            jobs: {{discover: {{}}}}
            events: {{sqs_queue_url: '{sim.queue_url}'}}
          - name: nowhere
            region: us-east-1
            endpoint_url: {sim.url}
            sts_endpoint_url: {moto_url}
            jobs: {{discover: {{}}}}
            events: {{sqs_queue_url: '{missing}'}}
        """,
    )
    waiting = sim.events.stats.delivered
    code, out = await check(config, "--probe")
    assert code != 0, out
    assert line_of(out, "events").endswith(f", queue {sim.queue_url})")
    nowhere = line_of(out, "nowhere")
    assert f"FAILED not_found at GetQueueAttributes: queue {missing}: QueueDoesNotExist" in nowhere
    assert "probe: 1 of 2 target(s) OK" in out
    # Nothing was received: the running exporter's messages stay where they are.
    assert sim.events.stats.delivered == waiting


async def test_probe_calls_list_job_executions_and_reports_it_denied(tmp_path: Path) -> None:
    """Every sweep calls ListJobExecutionsForJob: a role allowed DescribeJob only must not
    pass the probe. With sweeps turned off the call is not made."""
    denied = json.dumps(
        {
            "__type": "AccessDeniedException",
            "message": "not authorized: iot:ListJobExecutionsForJob",
        }
    ).encode()
    server = await HostileAws(
        executions=lambda job_id, status, token: (403, denied), sts=FORGED_IDENTITY
    ).start()
    target = (
        f"targets:\n  - name: t\n    region: us-east-1\n    endpoint_url: {server.url}\n"
        f"    sts_endpoint_url: {server.url}\n    jobs: {{ids: [fw-1]}}\n"
    )
    try:
        code, out = await check(write(tmp_path, target), "--probe")
        off = tmp_path / "off"
        off.mkdir()
        path = off / "config.yaml"
        path.write_text(
            "collector: {request_timeout: 2s, max_attempts: 1, "
            "executions: {requests_per_second: 0}}\n" + target
        )
        off_code, off_out = await check(path, "--probe")
    finally:
        await server.close()
    assert code == 1, out
    line = line_of(out, "t")
    assert " FAILED denied at ListJobExecutionsForJob: AccessDeniedException" in line, line
    assert server.calls["ListJobExecutionsForJob:fw-1"] == 1
    assert off_code == 0, off_out
    assert line_of(off_out, "t").endswith(" OK (DescribeJob fw-1)")
