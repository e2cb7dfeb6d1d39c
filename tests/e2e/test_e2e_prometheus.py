"""End to end with a real Prometheus: simulator → exporter → Prometheus with the mixin's rules.

Every recording rule and every dashboard query must return data from the demo fleet, and
the failure alerts must fire for the failing rollout and stay quiet for the healthy one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_dashboards import dashboards, data_panels, queries, substitute
from tests.e2e.test_rules import load_generator
from tests.support import ROOT, free_port, http_ok, stop, wait

pytestmark = pytest.mark.slow

EXE = Path(sys.executable).parent / "aws-iot-jobs-exporter"
SCENARIO = ROOT / "simulator" / "scenarios" / "demo.yaml"
FAILING = "firmware-v2-failing"
HEALTHY = "firmware-v2-healthy"
# 15 times the scenario's real time, with rules whose for: is 0s: the failing rollout's FAILED
# ratio starts at about 83 % of its abort threshold and sinks under the 80 % warning level
# within a few simulated minutes as retries succeed. At this speed the alert has
# tens of real seconds to be seen, on a slow CI machine too.
SPEED = 0.25
DEADLINE = 45.0  # seconds, for everything to show up once the processes run

# Dashboard queries that legitimately return nothing on the demo fleet, with why.
# Keyed by (dashboard file, panel title, query refId).
NEEDS_AN_EVENT = {
    # The demo's maintenance windows are cron recurrences, exported as
    # aws_iot_job_maintenance_window_info; only a date-time start becomes a timestamp.
    ("aws-iot-job-detail.json", "Scheduling windows", "D"): "no date-time maintenance window",
    # The demo's exponential rollout raises its rate per notified things; the per-succeeded
    # criterion is the alternative AWS allows, and the demo has no job using it.
    ("aws-iot-job-detail.json", "Exponential rollout", "D"): "no succeeded-things criterion",
}


@dataclass
class Stack:
    prometheus: str
    exporter: str


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = shutil.which("prometheus")
    # Fail, not skip: this is the only test of the rules against live data.
    assert prometheus_bin, "prometheus not found on PATH; run `make prometheus`"
    assert EXE.exists(), f"{EXE} missing; install the project (make test does)"
    tmp = tmp_path_factory.mktemp("e2e")
    sim_port, exporter_port, prometheus_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }

    config = tmp / "exporter.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "collector": {
                    "interval": "1s",
                    "discovery_interval": "2s",
                    "request_timeout": "5s",
                    "concurrency": 8,
                    "terminal_job_retention": "24h",
                    "packages": {"interval": "1s"},
                },
                "targets": [
                    {
                        "name": "demo",
                        "region": "us-east-1",
                        "endpoint_url": f"http://127.0.0.1:{sim_port}",
                        "labels": {"env": "demo"},
                        "jobs": {"discover": {}},
                        # The package version panels: the demo's catalog and index.
                        "packages": {"discover": True},
                        # Event-driven, as the demo runs; reconciled every second so the
                        # series move as fast as with polling alone.
                        "events": {
                            "sqs_queue_url": (
                                f"http://127.0.0.1:{sim_port}/123456789012/aws-iot-jobs-events"
                            ),
                            "reason_key": "reason",
                            "reconcile_interval": "1s",
                        },
                    }
                ],
            }
        )
    )

    # The production rules with every for: at 0s, so alerts are visible within seconds;
    # expressions and thresholds are unchanged.
    generate = load_generator()
    rules = tmp / "rules"
    generate.write(generate.with_for(generate.load_config(), "0s"), rules)
    selector_job = "aws-iot-jobs-exporter"
    assert f'job="{selector_job}"' in generate.load_config()["exporter_selector"]
    prometheus_config = tmp / "prometheus.yml"
    prometheus_config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules / "*.rules.yml")],
                "scrape_configs": [
                    {
                        "job_name": selector_job,
                        "honor_labels": False,
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                    }
                ],
            }
        )
    )

    processes: list[subprocess.Popen[bytes]] = []
    try:
        # Prometheus first: it is the slowest to start, and the failing rollout's
        # abort-approaching window begins with the simulator.
        processes.append(
            start(
                [
                    prometheus_bin,
                    f"--config.file={prometheus_config}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    # The time-in-state histograms' exemplars name the devices.
                    "--enable-feature=exemplar-storage",
                    "--log.level=warn",
                ],
                tmp / "prometheus.log",
            )
        )
        processes.append(
            start(
                [
                    str(EXE),
                    "simulator",
                    "--listen",
                    f"127.0.0.1:{sim_port}",
                    "--scenario",
                    str(SCENARIO),
                    "--speed",
                    str(SPEED),
                ],
                tmp / "simulator.log",
                env,
            )
        )
        wait(lambda: http_ok(f"http://127.0.0.1:{sim_port}/_sim/stats"), DEADLINE, "the simulator")
        processes.append(
            start(
                [
                    str(EXE),
                    "--config.file",
                    str(config),
                    "--web.listen-address",
                    f"127.0.0.1:{exporter_port}",
                ],
                tmp / "exporter.log",
                env,
            )
        )
        exporter = f"http://127.0.0.1:{exporter_port}"
        prometheus = f"http://127.0.0.1:{prometheus_port}"
        wait(lambda: http_ok(f"{exporter}/readyz"), DEADLINE, "the exporter's first collection")
        wait(lambda: http_ok(f"{prometheus}/-/ready"), DEADLINE, "Prometheus")
        wait(lambda: query(prometheus, f'up{{job="{selector_job}"}} == 1'), DEADLINE, "a scrape")
        yield Stack(prometheus=prometheus, exporter=exporter)
    finally:
        for process in processes:
            stop(process)
        for log in sorted(tmp.glob("*.log")):
            # Shown by pytest only when a test failed.
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def test_failure_alerts_fire_for_the_failing_rollout_only(stack: Stack) -> None:
    # Ever pending or firing during the run: the abort-approaching condition holds only
    # for the first simulated minutes, so "now" could miss it.
    def seen(alert: str, job_id: str) -> list[dict[str, Any]]:
        return query(
            stack.prometheus,
            f'max_over_time(ALERTS{{alertname="{alert}", job_id="{job_id}"}}[10m])',
        )

    for alert in ("AwsIotJobFailureRatioHigh", "AwsIotJobAbortThresholdApproaching"):
        (series, *_) = wait(lambda a=alert: seen(a, FAILING), DEADLINE, f"{alert} for {FAILING}")
        assert series["metric"]["alertstate"] in {"pending", "firing"}
        assert series["metric"]["target"] == "demo"
        assert series["metric"]["region"] == "us-east-1"
    (approaching,) = {
        s["metric"]["failure_type"] for s in seen("AwsIotJobAbortThresholdApproaching", FAILING)
    }
    assert approaching == "FAILED", "the failing rollout's only abort criterion is FAILED"

    # The healthy rollout was judged on real numbers, and found healthy.
    terminal = query(stack.prometheus, f'aws_iot_job:executions_terminal:sum{{job_id="{HEALTHY}"}}')
    assert terminal and float(terminal[0]["value"][1]) >= 10
    for alert in ("AwsIotJobFailureRatioHigh", "AwsIotJobAbortThresholdApproaching"):
        assert not seen(alert, HEALTHY), f"{alert} fired for {HEALTHY}"


def test_exemplars_of_time_in_state_reach_prometheus_and_name_a_device(stack: Stack) -> None:
    """Prometheus scrapes OpenMetrics and stores the exemplars: a slow bucket leads to the
    thing behind it, which no series label carries."""

    def exemplars() -> list[dict[str, Any]] | None:
        now = time.time()
        url = f"{stack.prometheus}/api/v1/query_exemplars?" + urllib.parse.urlencode(
            {
                "query": "aws_iot_job_execution_queued_duration_seconds_bucket",
                "start": now - 600,
                "end": now,
            }
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            found = json.loads(response.read())["data"]
        return [e for series in found for e in series["exemplars"]] or None

    found = wait(exemplars, DEADLINE, "exemplars of the queued-time histogram")
    assert all(e["labels"]["thing_name"] for e in found)
    names = {e["labels"]["thing_name"] for e in found}
    series = query(stack.prometheus, "aws_iot_job_execution_queued_duration_seconds_bucket")
    assert series and not any(names & set(s["metric"].values()) for s in series)


def test_every_recording_rule_yields_series(stack: Stack) -> None:
    names = {
        rule["record"]
        for path in sorted((ROOT / "exporter" / "mixin" / "rules").glob("*.rules.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    for name in sorted(names):
        wait(lambda n=name: query(stack.prometheus, f'{{__name__="{n}"}}'), DEADLINE, name)


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    pending = {
        (name, p["title"], t["refId"]): (
            substitute(t["expr"]),
            bool(p["fieldConfig"]["defaults"].get("links")),
        )
        for name, board in dashboards().items()
        for p in data_panels(board)
        for t in p["targets"]
    }
    unlinked: set[tuple[str, str]] = set()
    end = time.monotonic() + DEADLINE
    while set(pending) - set(NEEDS_AN_EVENT) and time.monotonic() < end:
        for key, (expr, linked) in list(pending.items()):
            result = query(stack.prometheus, expr)
            if result:
                del pending[key]
                # A panel that shows one series per job must link to it.
                if any("job_id" in s["metric"] for s in result) and not linked:
                    unlinked.add(key[:2])
        time.sleep(0.5)
    assert set(pending) <= set(NEEDS_AN_EVENT), f"queries without data: {sorted(pending)}"
    # The variables' selectors too: an empty variable empties every panel.
    for where, selector in queries():
        if where.split(": ", 1)[1].startswith("$"):
            assert query(stack.prometheus, selector), f"{where}: {selector} returns nothing"
    assert not unlinked, f"panels with per-job series but no job links: {sorted(unlinked)}"


def test_every_legend_names_labels_its_query_returns(stack: Stack) -> None:
    """A legend such as `{{max_age}}` names a label of the query's series: a heatmap whose
    bucket label the query summed away draws one cell, a legend of an absent label blanks."""
    checked = 0
    for name, board in dashboards().items():
        for p in data_panels(board):
            for t in p["targets"]:
                labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
                if not labels:
                    continue
                # Whether each query has data is the test above's; this one reads those
                # that do.
                series = query(stack.prometheus, substitute(t["expr"]))
                if not series:
                    continue
                for label in labels:
                    assert any(label in s["metric"] for s in series), (name, p["title"], label)
                if p["type"] == "heatmap":
                    # One series per bucket, not one summed over them.
                    assert len(series) > 1, (name, p["title"])
                checked += 1
    assert checked
