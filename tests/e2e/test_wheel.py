"""The installed wheel, not the checkout: built, installed in a fresh venv, run from elsewhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import botocore.session
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.mixin import RULE_FILES
from tests.e2e.test_demo_launcher import FOUR, assert_every_printed_url_answers
from tests.support import ROOT, SCENARIOS, free_port, get_json, stop, wait

# Building pulls setuptools into an isolated build environment and installing resolves the
# runtime dependencies, both through pip's index and cache: minutes on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

STARTUP = 60.0  # seconds for a command to print its URL
DISCOVERY = 60.0  # seconds for the demo's jobs to reach /metrics
ALERTING = 150.0  # seconds for the sped-up demo's job alerts to reach Alertmanager
MIXIN = ROOT / "exporter" / "mixin"


def _env() -> dict[str, str]:
    """The environment of a user's shell: nothing that points back at this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(*argv: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system or checkout packages) with the wheel and its dependencies."""
    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools writes build/ and *.egg-info beside its sources.
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("exporter", "simulator"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    dist = work / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src, cwd=work)
    (wheel,) = dist.glob("aws_iot_jobs_exporter-*.whl")
    _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    _run(work / "venv" / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=work)
    return work / "venv"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """An empty working directory outside the repository."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    assert ROOT not in folder.resolve().parents
    return folder


class Running:
    """A command of the installed wheel, its output in files that the test polls."""

    def __init__(self, argv: list[str | Path], cwd: Path) -> None:
        self.out = cwd / "stdout.txt"
        self.err = cwd / "stderr.txt"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(a) for a in argv], cwd=cwd, env=_env(), stdout=out, stderr=err
            )

    def wait_for(self, pattern: str, deadline: float = STARTUP) -> str:
        """The first match of `pattern` in stdout or stderr, polled with a deadline."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            text = self.out.read_text() + self.err.read_text()
            match = re.search(pattern, text)
            if match:
                return match.group(1)
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{text[-3000:]}"
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {deadline} s:\n{self.err.read_text()[-3000:]}")

    def stop(self) -> int:
        return stop(self.proc, within=30)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    started: list[Running] = []
    yield started
    for command in started:
        if command.proc.poll() is None:
            command.proc.kill()
            command.proc.wait()


def test_the_wheel_carries_every_scenario_and_imports_from_the_venv(
    venv: Path, elsewhere: Path
) -> None:
    probe = (
        "import exporter, exporter.cli.demo as c, simulator; "
        "from simulator.scenario import bundled_scenarios, load_scenario; "
        "print(exporter.__file__); print(simulator.__file__); print(c.DEMO_CONFIG); "
        "[print(n, load_scenario(n).file) for n in bundled_scenarios()]"
    )
    lines = _run(venv / "bin" / "python", "-c", probe, cwd=elsewhere).splitlines()
    module, simulator_module, demo_config, *scenarios = lines
    site = venv.resolve()
    assert site in Path(module).resolve().parents, module
    # The simulator is a top-level package of its own in the same wheel.
    assert site in Path(simulator_module).resolve().parents, simulator_module
    assert site in Path(demo_config).resolve().parents, demo_config
    # Every scenario of the source tree made it into the wheel, and loads from there.
    assert [line.split()[0] for line in scenarios] == sorted(
        p.stem for p in SCENARIOS.glob("*.yaml")
    )
    assert all(site in Path(line.split()[1]).resolve().parents for line in scenarios)


def test_a_pip_user_gets_the_example_config_from_the_installed_command(
    venv: Path, elsewhere: Path
) -> None:
    # No checkout around: the command prints the example, which is the checkout's, and the
    # file it makes is a valid configuration as it stands.
    command = venv / "bin" / "aws-iot-jobs-exporter"
    printed = _run(command, "example-config", cwd=elsewhere)
    assert printed == (ROOT / "config" / "example.yaml").read_text()
    (elsewhere / "config.yaml").write_text(printed)
    checked = _run(command, "check-config", "--config.file", "config.yaml", cwd=elsewhere)
    assert checked.startswith("config.yaml: valid: ")


def test_the_wheel_carries_the_mixin_the_demo_loads(venv: Path, elsewhere: Path) -> None:
    # What the demo reads through importlib.resources, read the same way from the wheel,
    # is the checkout's: every rule file, the Alertmanager config and the thresholds.
    probe = (
        "import json; from exporter.mixin import shipped, shipped_rules; "
        "from exporter.mixin import generate; "
        "print(json.dumps({'rules': shipped_rules(), 'alertmanager': shipped('alertmanager.yml'),"
        " 'config': generate.load_config(), 'file': generate.__file__}))"
    )
    found = json.loads(_run(venv / "bin" / "python", "-c", probe, cwd=elsewhere))
    assert venv.resolve() in Path(found["file"]).resolve().parents, found["file"]
    assert found["rules"] == {name: (MIXIN / "rules" / name).read_text() for name in RULE_FILES}
    assert found["alertmanager"] == (MIXIN / "alertmanager.yml").read_text()
    assert found["config"] == yaml.safe_load((MIXIN / "mixin.yaml").read_text())


def test_installed_demo_serves_jobs_and_fires_alerts_from_another_folder(
    venv: Path, elsewhere: Path, running: list[Running]
) -> None:
    # The whole demo as a user of the wheel gets it, sped up (30 times real time) so that
    # its job alerts fire within a minute: Prometheus with the rule groups, Alertmanager
    # receiving the alerts, and every URL printed answering.
    assert shutil.which("prometheus"), "prometheus not found on PATH; run `make prometheus`"
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert alertmanager, "prometheus-alertmanager not found on PATH; run `make prometheus`"
    prometheus, am = (f"127.0.0.1:{free_port()}" for _ in range(2))
    demo = Running(
        [
            venv / "bin" / "aws-iot-jobs-exporter",
            "demo",
            "--speed",
            "0.5",
            "--web.listen-address",
            "127.0.0.1:0",
            "--simulator.listen-address",
            "127.0.0.1:0",
            "--prometheus.listen-address",
            prometheus,
            "--alertmanager.listen-address",
            am,
        ],
        elsewhere,
    )
    running.append(demo)
    url = demo.wait_for(r"metrics:\s+(http://127\.0\.0\.1:\d+/metrics)")
    log = demo.err.read_text()
    assert re.search(r"scenario=\S*site-packages/simulator/scenarios/demo\.yaml", log)
    demo.wait_for(r"(?m)^(alertmanager: .*)$")
    printed = demo.out.read_text()
    assert "did not start" not in printed and "no rules loaded" not in printed, printed
    assert_every_printed_url_answers(printed)
    # The rule groups of the shipped files, loaded.
    groups = get_json(f"http://{prometheus}/api/v1/rules")["data"]["groups"]
    shipped = [
        g for f in RULE_FILES for g in yaml.safe_load((MIXIN / "rules" / f).read_text())["groups"]
    ]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in shipped)

    wanted = {"firmware-v2-failing", "firmware-v2-healthy"}

    def discovered() -> bool:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        jobs = {
            s.labels["job_id"]
            for family in text_string_to_metric_families(text)
            if family.name == "aws_iot_job_info"
            for s in family.samples
        }
        return wanted <= jobs

    # The demo scenario's jobs, discovered through the simulator the command started: they
    # appear as they are described, a few a second at the default budget.
    wait(discovered, DISCOVERY, f"{sorted(wanted)} in /metrics")

    def received() -> set[str]:
        names = {a["labels"]["alertname"] for a in get_json(f"http://{am}/api/v2/alerts")}
        return names if names >= FOUR else set()

    # The story's job alerts, through Prometheus into the Alertmanager the demo started.
    wait(received, ALERTING, "the job alerts in Alertmanager")
    assert demo.stop() == 0


def test_installed_simulator_serves_a_bundled_scenario(
    venv: Path, elsewhere: Path, running: list[Running]
) -> None:
    sim = Running(
        [
            venv / "bin" / "aws-iot-jobs-exporter",
            "simulator",
            "--listen",
            "127.0.0.1:0",
            "--scenario",
            "abort",
        ],
        elsewhere,
    )
    running.append(sim)
    url = sim.wait_for(r"url=(http://127\.0\.0\.1:\d+)")
    client = botocore.session.get_session().create_client(
        "iot",
        region_name="eu-west-1",
        endpoint_url=url,
        aws_access_key_id="wheel",
        aws_secret_access_key="wheel",
    )
    try:
        jobs = {job["jobId"] for job in client.list_jobs()["jobs"]}
    finally:
        client.close()
    assert {"canary-aborted", "fleet-healthy"} <= jobs, jobs
    assert sim.stop() == 0


def test_installed_simulator_names_the_bundled_scenarios_for_a_missing_one(
    venv: Path, elsewhere: Path
) -> None:
    result = subprocess.run(
        [str(venv / "bin" / "aws-iot-jobs-exporter"), "simulator", "--scenario", "demo.yml"],
        cwd=elsewhere,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: demo.yml: cannot read: no such file, nor a bundled scenario "
        "(abort, demo, packages, scale)"
    )
