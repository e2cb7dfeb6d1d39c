"""check-config and the exporter's command line on bad configs: exit 2, no traceback (processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.table import FAMILIES
from tests.support import ROOT

BASE_TARGET = """
  - name: a
    region: us-east-1
    jobs: {ids: [job-1]}
"""


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config.file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    good = _check_config(ROOT / "config" / "example.yaml")
    assert good.returncode == 0, good.stderr
    assert "valid" in good.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "targets:\n  - name: a\n    region: us-east-1\n    jobs: {discover: {status: RUNNING}}\n"
    )
    result = _check_config(bad)
    assert result.returncode == 2
    assert f"{bad}: targets[0].jobs.discover.status: 'RUNNING' is not one of" in result.stderr
    assert "Traceback" not in result.stderr

    missing = _check_config(tmp_path / "nope.yaml")
    assert missing.returncode == 2
    assert "nope.yaml: cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_running_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("collector: {interval: soon}\ntargets: []\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "collector.interval: expected a duration" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--web.telemetry-path", "metrics"], "--web.telemetry-path 'metrics': expected a path"),
        (["--web.max-requests", "0"], "--web.max-requests must be at least 1"),
        (["--web.listen-address", "localhost"], "expected [host]:port"),
    ],
)
def test_bad_web_flags_exit_2_without_traceback(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(ROOT / "config/example.yaml"),
         *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_and_run_refuse_a_bad_selection_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("metrics:\n  deny: [aws_iot_job_nope]\ntargets:" + BASE_TARGET)
    for argv in (["check-config", "--config.file", str(bad)], ["--config.file", str(bad)]):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", *argv], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result
        assert f"{bad}: metrics.deny[0]: 'aws_iot_job_nope' is not a job metric family" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr

    good = tmp_path / "good.yaml"
    good.write_text("metrics:\n  deny: [aws_iot_job_target_info]\ntargets:" + BASE_TARGET)
    result = _check_config(good)
    assert result.returncode == 0, result.stderr
    assert f"{len(FAMILIES) - 1} of {len(FAMILIES)} job metric families" in result.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--metrics.deny", "aws_iot_job_info,aws_iot_job_target_infos"],
            "--metrics.deny: 'aws_iot_job_target_infos' is not a job metric family; did you mean "
            "'aws_iot_job_target_info'?",
        ),
        (
            ["--metrics.allow", "aws_iot_job_status", "--metrics.deny", "aws_iot_job_info"],
            "--metrics.allow and --metrics.deny: set one or the other, not both",
        ),
        (
            ["--metrics.allow", "aws_iot_jobs_exporter_build_info"],
            "--metrics.allow: 'aws_iot_jobs_exporter_build_info' is one of the exporter's own",
        ),
    ],
)
def test_bad_metric_flags_exit_2_without_traceback(flags: list[str], message: str) -> None:
    for command in ([], ["demo"]):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", *command, "--config.file",
             str(ROOT / "config/example.yaml"), *flags],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result
        assert f"error: {message}" in result.stderr
        assert "Traceback" not in result.stderr
