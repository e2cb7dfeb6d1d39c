"""`aws-iot-jobs-exporter demo` with Prometheus and Alertmanager, sped up, as a user runs it.

The demo is started as a process on free ports at 30 times real time (`--speed 0.5`), so
its Prometheus gets the mixin's rules with every window and `for:` divided by 30, and its
exporter intervals divided alike. The four job alerts the demo promises within ten
minutes must fire within a minute or so and reach Alertmanager; no alert about the
exporter itself may fire (the time-scaled rules once called the data of an exporter
that was not time-scaled stale); every URL the demo prints must answer; and Ctrl-C
(SIGINT) must stop every process the demo started and remove its temporary directory.
The real-time story with the shipped rules is checked by tests/e2e/test_demo_story.py.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import yaml

from tests.e2e.test_rules import RULES
from tests.support import free_port, get_json, wait

EXE = Path(sys.executable).parent / "aws-iot-jobs-exporter"
SPEED = 0.5  # simulated minutes per real second: 30 times real time
DEADLINE = 150.0
FOUR = {
    "AwsIotJobFailureRatioHigh",
    "AwsIotJobAbortThresholdApproaching",
    "AwsIotJobAborted",
    "AwsIotJobExecutionsTimingOut",
}


# Alerts about the exporter watched until this long after the demo's URLs appear: before
# the exporter's intervals were time-scaled, AwsIotJobsExporterDataStale fired 42 s in.
OBSERVE = 75.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an answer of its own, not the page printed


def printed_urls(text: str) -> list[str]:
    """Every URL in the demo's output, in order, once."""
    return list(dict.fromkeys(re.findall(r"https?://[^\s()<>,;]+", text)))


def status_of(url: str) -> int:
    """The status a GET of `url` answers, redirects not followed."""
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def assert_every_printed_url_answers(text: str) -> None:
    urls = printed_urls(text)
    assert urls, text
    answers = {url: status_of(url) for url in urls}
    assert all(code == 200 for code in answers.values()), answers


def _drain(stream: IO[str], into: list[str]) -> None:
    for line in stream:
        into.append(line)


def test_demo_starts_prometheus_and_alertmanager_and_stops_them(tmp_path: Path) -> None:
    assert shutil.which("prometheus"), "prometheus not found on PATH; run `make prometheus`"
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    ports = {name: free_port() for name in ("web", "sim", "prom", "am")}
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    process = subprocess.Popen(
        [str(EXE), "demo", "--speed", str(SPEED),
         "--web.listen-address", f"127.0.0.1:{ports['web']}",
         "--simulator.listen-address", f"127.0.0.1:{ports['sim']}",
         "--prometheus.listen-address", f"127.0.0.1:{ports['prom']}",
         "--alertmanager.listen-address", f"127.0.0.1:{ports['am']}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    out: list[str] = []
    err: list[str] = []
    assert process.stdout is not None and process.stderr is not None
    readers = [
        threading.Thread(target=_drain, args=(process.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(process.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    prometheus = f"http://127.0.0.1:{ports['prom']}"
    try:
        wait(lambda: any(line.startswith("alertmanager:") for line in out), 60, "the demo's URLs")
        started = time.monotonic()
        printed = "".join(out)
        assert f"prometheus:   {prometheus}/" in printed, printed
        shipped = [g for f in RULES for g in yaml.safe_load(f.read_text())["groups"]]
        count = sum(len(g["rules"]) for g in shipped)
        assert f"{count} rules in {len(shipped)} groups loaded" in printed, printed
        assert "at 30x real time" in printed
        if alertmanager:
            assert f"alertmanager: http://127.0.0.1:{ports['am']}/" in printed, printed
        else:
            assert "apt-get install prometheus prometheus-alertmanager" in printed, printed
        assert_every_printed_url_answers(printed)

        # The rules Prometheus loaded are the mixin's, time-scaled: 5m of for: is 10s.
        groups = get_json(f"{prometheus}/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert set(rules) >= FOUR
        assert rules["AwsIotJobFailureRatioHigh"]["duration"] == 10

        exporter_alerts: set[str] = set()

        def firing() -> set[str]:
            alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
            names = {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}
            exporter_alerts.update(n for n in names if n.startswith("AwsIotJobsExporter"))
            return names if names >= FOUR else set()

        wait(firing, DEADLINE, "the four job alerts firing in Prometheus")
        if alertmanager:

            def received() -> set[str]:
                alerts = get_json(f"http://127.0.0.1:{ports['am']}/api/v2/alerts")
                names = {a["labels"]["alertname"] for a in alerts}
                return names if names >= FOUR else set()

            wait(received, 60, "the four job alerts in Alertmanager")
        # Nothing is wrong with the exporter: none of its own alerts may fire.
        while time.monotonic() < started + OBSERVE:
            firing()
            time.sleep(1)
        assert not exporter_alerts, exporter_alerts
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        for reader in readers:
            reader.join(timeout=5)
    logs = "".join(err)
    assert code == 0, logs[-3000:]
    started = re.findall(r"msg=started name=(\w+) pid=(\d+) log=(\S+)", logs)
    assert {name for name, _, _ in started} == (
        {"prometheus", "alertmanager"} if alertmanager else {"prometheus"}
    )
    for name, pid, log in started:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            pass
        else:
            raise AssertionError(f"{name} (pid {pid}) still running after Ctrl-C")
        assert not Path(log).parent.exists(), "temporary directory left behind"


def test_demo_bad_flags_and_scenarios_exit_2_naming_them(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - {id: x, targets: ['thing:a'], every_minutes: -1}\n")
    cases = [
        (["--speed", "-1"], "error: --speed -1.0: expected a number ≥ 0 (1/60 is real time)"),
        (["--speed", "nan"], "error: --speed nan: expected a number ≥ 0 (1/60 is real time)"),
        (
            ["--prometheus.listen-address", "127.0.0.1:\x1b[2J"],
            "error: --prometheus.listen-address '127.0.0.1:\\x1b[2J': expected [host]:port",
        ),
        (
            ["--scenario", str(bad), "--simulator.listen-address", "127.0.0.1:0"],
            f"error: {bad}: jobs[0].every_minutes: expected a number ≥ 1, got -1",
        ),
    ]
    for args, message in cases:
        result = subprocess.run(
            [str(EXE), "demo", "--web.listen-address", "127.0.0.1:0", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.strip().splitlines()[-1] == message, (args, result.stderr)
        assert "Traceback" not in result.stderr
