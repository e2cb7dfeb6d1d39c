"""The Prometheus rules of the mixin: generated output current, valid, unit-tested, conventional."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from exporter.mixin import generate
from tests.conftest import ROOT

PROM = ROOT / "exporter" / "mixin"
RULES = sorted((PROM / "rules").glob("*.rules.yml"))
RULE_TESTS = sorted((PROM / "tests").glob("*.yaml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
# Alerts whose value is a ratio, shown as a percentage in the description.
RATIO_ALERTS = {
    "AwsIotJobFailureRatioHigh",
    "AwsIotJobAbortThresholdApproaching",
    "AwsIotJobExecutionsTimingOut",
    "AwsIotJobsExporterThrottled",
}


# The links the promtool test files expect in every alert's annotations. The tests run on
# rules generated with these, so a copy of the mixin whose mixin.yaml points at its own
# Grafana and runbook (as it should) still passes them.
TEST_LINKS = {"grafana_url": "http://localhost:3000", "runbook_url": "docs/runbook.md"}


def load_generator() -> ModuleType:
    return generate


def promtool() -> str:
    path = shutil.which("promtool")
    # Fail rather than skip: untested rules must not pass CI (`make prometheus` installs it).
    assert path, "promtool not found on PATH; run `make prometheus`"
    return path


def run_promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def rules() -> list[dict[str, Any]]:
    return [r for f in RULES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def recordings() -> list[dict[str, Any]]:
    return [r for r in rules() if "record" in r]


def test_rule_files_are_where_packaging_expects_them() -> None:
    assert [f.name for f in RULES] == ["alerts.rules.yml", "recording.rules.yml"]


def test_committed_rules_are_generated_from_mixin_yaml() -> None:
    generate = load_generator()
    for name, text in generate.render(generate.load_config()).items():
        committed = (PROM / "rules" / name).read_text()
        assert committed == text, f"rules/{name} is stale: run exporter/mixin/generate.py"


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", *(str(f) for f in RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(tmp_path: Path) -> None:
    # The test files beside rules generated from mixin.yaml with the links they expect
    # (their rule_files are ../rules/*.rules.yml).
    assert RULE_TESTS
    generate.write({**generate.load_config(), **TEST_LINKS}, tmp_path / "rules")
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    result = run_promtool("test", "rules", *(f"tests/{f.name}" for f in RULE_TESTS), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_links_follow_the_mixin_settings() -> None:
    # grafana_url and runbook_url are settings: every link starts with them, and nothing
    # else in the rules names a Grafana.
    links = {"grafana_url": "https://grafana.example.com", "runbook_url": "https://wiki/rb"}
    texts = generate.render({**generate.load_config(), **links}).values()
    notes = [
        rule["annotations"]
        for text in texts
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert notes
    for note in notes:
        assert note["dashboard_url"].startswith("https://grafana.example.com/d/"), note
        assert note["runbook_url"].startswith("https://wiki/rb#"), note
    assert not any("localhost" in text or ":3000" in text for text in texts)


def test_alertmanager_config_inhibits_only_alerts_that_exist() -> None:
    config = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    names = {a["alert"] for a in alerts()}
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            name, op, value = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher).groups()  # type: ignore[union-attr]
            assert name == "alertname"
            pattern = value if op == "=~" else re.escape(value)
            assert any(re.fullmatch(pattern, n) for n in names), matcher


def _alert_tests() -> dict[str, list[tuple[str, float, bool]]]:
    """Alert name → (test group index, eval time in seconds, fires?) for every check."""
    generate = load_generator()
    checks: dict[str, list[tuple[str, float, bool]]] = defaultdict(list)
    for path in RULE_TESTS:
        for index, test in enumerate(yaml.safe_load(path.read_text())["tests"]):
            for check in test.get("alert_rule_test", []):
                checks[check["alertname"]].append(
                    (
                        f"{path.name}#{index}",
                        generate.seconds(check["eval_time"]),
                        bool(check.get("exp_alerts")),
                    )
                )
    return checks


def test_every_alert_is_tested_on_both_sides_of_its_for_boundary() -> None:
    # A firing check at t and a silent one a minute earlier in the same input: with the
    # condition true from the start of `for:`, that is the boundary itself.
    checks = _alert_tests()
    for alert in alerts():
        name = alert["alert"]
        assert name in checks, f"{name}: no promtool test"
        firing = {(group, t) for group, t, fires in checks[name] if fires}
        silent = {(group, t) for group, t, fires in checks[name] if not fires}
        assert firing, f"{name}: never tested firing"
        assert any((group, t - 60) in silent for group, t in firing), (
            f"{name}: no silent check one evaluation before a firing one"
        )


def test_every_recording_rule_is_tested() -> None:
    tested = {
        check["expr"]
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for check in test.get("promql_expr_test", [])
    }
    for rule in recordings():
        assert rule["record"] in tested, f"{rule['record']}: no promql_expr_test"


def test_recording_rules_follow_level_metric_operations() -> None:
    for rule in recordings():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z_0-9]+", rule["record"]), rule["record"]


def runbook_anchors() -> set[str]:
    # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_follows_the_mixin_conventions(alert: dict[str, Any]) -> None:
    name = alert["alert"]
    assert re.fullmatch(r"AwsIotJobs?(Exporter)?[A-Z][A-Za-z]+", name)
    assert alert.get("for"), f"{name}: no for:"
    assert alert["labels"]["severity"] in {"warning", "critical"}
    notes = alert["annotations"]
    assert set(notes) == {"summary", "description", "runbook_url", "dashboard_url"}
    # The summary groups alerts in notifications: it must be the same for every series.
    assert "{{" not in notes["summary"]
    if name.startswith("AwsIotJobsExporter"):
        assert "/d/aws-iot-jobs-exporter" in notes["dashboard_url"]
    else:
        for label in ("job_id", "target", "region"):
            assert f"{{{{ $labels.{label} }}}}" in notes["description"], f"{name}: {label}"
            assert f"var-{label}={{{{ $labels.{label} }}}}" in notes["dashboard_url"]
        assert "/d/aws-iot-job-detail?" in notes["dashboard_url"]
    if name in RATIO_ALERTS:
        assert "{{ $value | humanizePercentage }}" in notes["description"]
    base, _, anchor = notes["runbook_url"].partition("#")
    assert base == generate.load_config()["runbook_url"]
    assert anchor in runbook_anchors(), f"{name}: docs/runbook.md has no #{anchor}"


def test_generator_can_shorten_for_durations(tmp_path: Path) -> None:
    # The end-to-end test relies on this variant; it must stay valid PromQL.
    generate = load_generator()
    generate.write(generate.with_for(generate.load_config(), "0s"), tmp_path)
    written = sorted(tmp_path.glob("*.rules.yml"))
    assert len(written) == 2
    for path in written:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                assert rule.get("for", "0s") == "0s"
    result = run_promtool("check", "rules", *(str(f) for f in written))
    assert result.returncode == 0, result.stdout + result.stderr


def test_executions_stuck_waits_for_its_minimum_count(tmp_path: Path) -> None:
    # The shipped minimum is one stuck execution, which the share alone already implies;
    # with a higher one, a small job over the share still waits for that many.
    config = generate.load_config()
    stuck = {**config["alerts"]["executions_stuck"], "min_stuck": 3}
    generate.write(
        {**config, **TEST_LINKS, "alerts": {**config["alerts"], "executions_stuck": stuck}},
        tmp_path / "rules",
    )
    ident = (
        'job="aws-iot-jobs-exporter", instance="e1", target="prod", region="eu-west-1", '
        'account_id="111122223333"'
    )
    series = []
    # few: 2 of 10 stuck (20 %, far over the share) but under the minimum; enough: 3 of 10.
    for job_id, stuck_count in (("few", 2), ("enough", 3)):
        labels = f'{ident}, job_id="{job_id}"'
        series += [
            {
                "series": f'aws_iot_job_executions{{{labels}, state="in_progress"}}',
                "values": "10x20",
            },
            {
                "series": f'aws_iot_job_executions_stuck{{{labels}, state="in_progress"}}',
                "values": f"{stuck_count}x20",
            },
            {"series": f'aws_iot_job_status{{{labels}, status="IN_PROGRESS"}}', "values": "1x20"},
            {
                "series": f"aws_iot_job_executions_sweep_timestamp_seconds{{{labels}}}",
                "values": "0+60x20",
            },
        ]
    fired = 'ALERTS{alertname="AwsIotJobExecutionsStuck", alertstate="firing"}'
    test = {
        "rule_files": [f"rules/{name}" for name in (generate.RECORDING_FILE, generate.ALERTS_FILE)],
        "evaluation_interval": "1m",
        "group_eval_order": ["aws-iot-jobs.rules", "aws-iot-jobs.alerts"],
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": f"count by (job_id) ({fired})",
                        "eval_time": "15m",
                        "exp_samples": [{"labels": '{job_id="enough"}', "value": 1}],
                    }
                ],
            }
        ],
    }
    (tmp_path / "min.test.yaml").write_text(yaml.safe_dump(test, sort_keys=False, width=1000))
    result = run_promtool("test", "rules", "min.test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
