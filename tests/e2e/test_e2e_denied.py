"""End to end with denied calls: simulator (every call AccessDenied) → exporter → Prometheus.

The target's `collection_success` must stay 0 on every scrape, `/readyz` must answer 503,
and AwsIotJobsExporterCollectionFailing and AwsIotJobsExporterDiscoveryFailing must fire in
a real Prometheus with the mixin's expressions. The rules are a copy with `for: 0s` so the
alerts fire within seconds; the real `for:` is covered by the promtool unit tests.
When the calls are allowed again, the target recovers without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_e2e_prometheus import DEADLINE, query, start
from tests.e2e.test_rules import load_generator
from tests.support import free_port, http_ok, stop, wait

EXE = Path(sys.executable).parent / "aws-iot-jobs-exporter"
SCENARIO = "demo"  # the bundled scenario

pytestmark = pytest.mark.slow
SELECTOR_JOB = "aws-iot-jobs-exporter"


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def set_faults(sim: str, body: dict[str, object]) -> None:
    request = urllib.request.Request(
        f"{sim}/_sim/faults", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def firing(prometheus: str, alert: str) -> list[dict[str, object]]:
    return query(prometheus, f'ALERTS{{alertname="{alert}", alertstate="firing", target="demo"}}')


def test_denied_target_stays_failed_and_its_alerts_fire(tmp_path: Path) -> None:
    prometheus_bin = shutil.which("prometheus")
    assert prometheus_bin, "prometheus not found on PATH; run `make prometheus`"
    assert EXE.exists(), f"{EXE} missing; install the project (make test does)"
    sim_port, exporter_port, prometheus_port = free_port(), free_port(), free_port()
    sim = f"http://127.0.0.1:{sim_port}"
    exporter = f"http://127.0.0.1:{exporter_port}"
    prometheus = f"http://127.0.0.1:{prometheus_port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    config = tmp_path / "exporter.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                # The default discovery interval: the cycles between discoveries are the
                # ones that used to report success.
                "collector": {"interval": "1s", "request_timeout": "2s", "max_attempts": 1},
                "targets": [
                    {
                        "name": "demo",
                        "region": "us-east-1",
                        "endpoint_url": sim,
                        "jobs": {"discover": {}},
                    }
                ],
            }
        )
    )
    generate = load_generator()
    rules = tmp_path / "rules"
    generate.write(generate.with_for(generate.load_config(), "0s"), rules)
    prometheus_config = tmp_path / "prometheus.yml"
    prometheus_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules / "*.rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": SELECTOR_JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                    }
                ],
            }
        )
    )
    processes = []
    try:
        processes.append(
            start(
                [
                    prometheus_bin,
                    f"--config.file={prometheus_config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                tmp_path / "prometheus.log",
            )
        )
        processes.append(
            start(
                [str(EXE), "simulator", "--listen", f"127.0.0.1:{sim_port}",
                 "--scenario", str(SCENARIO)],
                tmp_path / "simulator.log",
                env,
            )
        )  # fmt: skip
        wait(lambda: http_ok(f"{sim}/_sim/stats"), DEADLINE, "the simulator")
        set_faults(sim, {"faults": {"denied": {"ratio": 1}}})
        processes.append(
            start(
                [str(EXE), "--config.file", str(config),
                 "--web.listen-address", f"127.0.0.1:{exporter_port}"],
                tmp_path / "exporter.log",
                env,
            )
        )  # fmt: skip
        wait(lambda: http_ok(f"{exporter}/healthz"), DEADLINE, "the exporter")
        wait(lambda: http_ok(f"{prometheus}/-/ready"), DEADLINE, "Prometheus")

        for alert in ("AwsIotJobsExporterCollectionFailing", "AwsIotJobsExporterDiscoveryFailing"):
            (series, *_) = wait(lambda a=alert: firing(prometheus, a), DEADLINE, f"{alert} firing")
            assert series["metric"]["severity"] == "warning"
        # Ten scrapes, ten cycles and not one of them reported success.
        success = 'aws_iot_jobs_exporter_collection_success{target="demo"}'
        wait(
            lambda: [
                s for s in query(prometheus, f"count_over_time({success}[1m])")
                if float(s["value"][1]) >= 10
            ],
            DEADLINE,
            "ten scrapes",
        )  # fmt: skip
        (most,) = query(prometheus, f"max_over_time({success}[1m])")
        assert float(most["value"][1]) == 0
        # Ten scrapes of a second are not ten cycles when the machine is busy: the count
        # of refused listings is polled for.
        wait(
            lambda: query(
                prometheus,
                'aws_iot_jobs_exporter_api_requests_total{target="demo", operation="ListJobs", '
                'outcome="denied"} >= 10',
            ),
            DEADLINE,
            "ListJobs retried every cycle while it fails",
        )
        assert not query(prometheus, 'aws_iot_job_info{target="demo"}')
        assert status_of(f"{exporter}/readyz") == 503

        # Allowed again: ready, successful, and the discovery alert resolves.
        set_faults(sim, {"clear": True})
        wait(lambda: status_of(f"{exporter}/readyz") == 200, DEADLINE, "ready")
        wait(lambda: query(prometheus, f"{success} == 1"), DEADLINE, "success")
        wait(
            lambda: not firing(prometheus, "AwsIotJobsExporterDiscoveryFailing"),
            DEADLINE,
            "the discovery alert to resolve",
        )
        assert query(prometheus, 'aws_iot_job_info{target="demo"}')
    finally:
        for process in processes:
            stop(process)
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
