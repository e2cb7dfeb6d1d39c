"""The exporter process pushes OTLP metrics and traces its real collection cycles."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import boto3
import pytest

from tests.integration.test_otel import Receiver, attrs, receiver  # noqa: F401 (fixture)
from tests.support import free_port, until

pytestmark = pytest.mark.slow


async def test_process_pushes_metrics_and_spans(
    moto_url: str,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811 (the fixture imported above)
) -> None:
    iot = boto3.client("iot", region_name="us-east-1", endpoint_url=moto_url)
    job_id = f"otel-{uuid.uuid4().hex[:8]}"
    thing = iot.create_thing(thingName=f"{job_id}-thing")["thingArn"]
    iot.create_job(jobId=job_id, targets=[thing], document="{}")
    config = tmp_path / "config.yaml"
    config.write_text(
        "collector: {interval: 300ms}\n"
        f"otel: {{enabled: true, endpoint: '{receiver.url}', interval: 200ms, tracing: true}}\n"
        f"targets:\n  - name: moto\n    region: us-east-1\n    endpoint_url: {moto_url}\n"
        f"    jobs: {{ids: [{job_id}]}}\n"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "--config.file", str(config),
        "--web.listen-address", f"127.0.0.1:{port}",
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    try:

        def pushed_job() -> bool:
            for request in receiver.of("/v1/metrics"):
                for rm in request.body.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            if metric.name != "aws_iot_job_info":
                                continue
                            for point in metric.gauge.data_points:
                                if attrs(point.attributes).get("job_id") == job_id:
                                    return True
            return False

        def traced_describe() -> bool:
            for request in receiver.of("/v1/traces"):
                for rs in request.body.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            a = attrs(span.attributes)
                            if a.get("job_id") == job_id and a.get("outcome") == "ok":
                                return True
            return False

        await until(pushed_job, within=30, what="an OTLP push with the job")
        await until(traced_describe, within=30, what="a DescribeJob span of the job")
        # The push's own health is on /metrics.
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
            body = await response.text()
        assert "aws_iot_jobs_exporter_otel_push_failures_total 0.0" in body
        assert "aws_iot_jobs_exporter_otel_last_push_success_timestamp_seconds " in body
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), timeout=10)
    assert process.returncode == 0, err.decode()
