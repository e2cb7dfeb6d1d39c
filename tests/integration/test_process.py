"""The exporter as a user runs it: a process against moto, scraped over HTTP, stopped by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest

from tests.support import free_port, http_get, started

pytestmark = pytest.mark.slow


def test_process_serves_jobs_and_stops_on_sigterm(moto_url: str, tmp_path: Path) -> None:
    iot = boto3.client("iot", region_name="us-east-1", endpoint_url=moto_url)
    job_id = f"proc-{uuid.uuid4().hex[:8]}"
    thing = iot.create_thing(thingName=f"{job_id}-thing")["thingArn"]
    iot.create_job(jobId=job_id, targets=[thing], document="{}")
    config = tmp_path / "config.yaml"
    config.write_text(
        "collector: {interval: 1s}\n"
        f"targets:\n  - name: moto\n    region: us-east-1\n    endpoint_url: {moto_url}\n"
        f"    role_arn: arn:aws:iam::123456789012:role/reader\n"
        f"    sts_endpoint_url: {moto_url}\n"
        "    external_id: do-not-log-this-external-id\n"
        f"    jobs: {{ids: [{job_id}]}}\n"
    )
    port = free_port()
    with started(
        [sys.executable, "-m", "exporter", "--config.file", str(config),
         "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        http_get(f"{base}/healthz")
        http_get(f"{base}/readyz")
        body = http_get(f"{base}/metrics").decode()
        assert (
            f'aws_iot_job_info{{target="moto",region="us-east-1",account_id="123456789012",job_id="{job_id}"'
            in body
        )
        assert "aws_iot_jobs_exporter_build_info" in body
        begun = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        assert time.monotonic() - begun < 5
        assert process.returncode == 0, err
    assert "listening" in err and "shutting down" in err
    assert "Traceback" not in err
    # Secrets never reach logs or metrics.
    for secret in ("do-not-log-this-external-id", "testing"):
        assert secret not in err and secret not in out and secret not in body
