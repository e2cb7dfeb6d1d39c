"""Simulator scenario files, cron expressions and the `simulator` command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.cron import CronExpression
from exporter.model import JOB_STATUSES
from simulator import ScenarioError, load_scenario, main
from simulator.cron import Cron, CronError
from simulator.fleet import EXECUTION_STATES
from simulator.scenario import parse_scenario
from simulator.service import execution_statuses, job_statuses
from tests.support import ROOT, SCENARIOS, free_port, http_ok, started, wait

CONFIG = SCENARIOS


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.jobs or scenario.generate


MINIMAL = {"groups": [{"name": "g", "things": 2}], "jobs": [{"id": "j", "targets": ["group:g"]}]}


def _with(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with one field set, the field given as a dotted path with [i] indexes."""
    data: Any = yaml.safe_load(yaml.safe_dump(MINIMAL))
    parts = path.replace("[", ".").replace("]", "").split(".")
    node = data
    for part in parts[:-1]:
        key: Any = int(part) if part.isdigit() else part
        if isinstance(node, dict) and key not in node:
            node[key] = {}
        node = node[key]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    node[last] = value
    return dict(data)


@pytest.mark.parametrize(
    ("field", "value", "path", "expected"),
    [
        ("speeed", 3, "speeed", "unknown key"),
        (
            "jobs.0.rollout",
            {"maximum_per_minte": 3},
            "jobs[0].rollout.maximum_per_minte",
            "unknown key",
        ),
        ("jobs.0.rollout", {"maximum_per_minute": 0}, "jobs[0].rollout.maximum_per_minute", "≥ 1"),
        ("jobs.0.targets", ["fleet"], "jobs[0].targets[0]", "group:NAME"),
        ("jobs.0.targets", ["group:nope"], "jobs[0].targets[0]", "unknown group"),
        ("jobs.0.target_selection", "SOMETIMES", "jobs[0].target_selection", "CONTINUOUS"),
        ("jobs.0.id", "bad id!", "jobs[0].id", "matching"),
        (
            "jobs.0.devices",
            {"failure_probability": 1.5},
            "jobs[0].devices.failure_probability",
            "≤ 1",
        ),
        (
            "jobs.0.devices",
            {"queued_minutes": [3]},
            "jobs[0].devices.queued_minutes",
            "[low, high]",
        ),
        (
            "jobs.0.abort",
            [{"failure_type": "FAILED", "threshold_percentage": 10}],
            "jobs[0].abort[0].min_number_of_executed_things",
            "required",
        ),
        (
            "jobs.0.retry",
            [{"failure_type": "REJECTED", "number_of_retries": 1}],
            "jobs[0].retry[0].failure_type",
            "FAILED, TIMED_OUT, ALL",
        ),
        (
            "jobs.0.scheduling",
            {"maintenance_windows": [{"start_time": "0 2 * * *", "duration_in_minutes": 30}]},
            "jobs[0].scheduling.maintenance_windows[0].start_time",
            "cron(",
        ),
        (
            "jobs.0.rollout",
            {"exponential_rate": {"base_rate_per_minute": 5, "increment_factor": 2}},
            "jobs[0].rollout.exponential_rate.rate_increase_criteria",
            "required",
        ),
        ("timeline", [{"at_minutes": 1, "action": "explode"}], "timeline[0].action", "add_things"),
        ("faults", {"reset": {"ratio": -1}}, "faults.reset.ratio", "≥ 0"),
        ("quotas", {"DescribeJob": "fast"}, "quotas.DescribeJob", "number"),
        ("start_time", "tomorrow", "start_time", "YYYY-MM-DDTHH:MM"),
        ("account_id", "12", "account_id", "matching"),
    ],
)
def test_scenario_errors_name_the_field(field: str, value: Any, path: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as e:
        parse_scenario(_with(field, value), "s.yaml")
    assert e.value.path == path
    assert expected in e.value.message
    assert str(e.value).startswith(f"s.yaml: {path}: ")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs: [\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: line 2, column 1: invalid YAML"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


def test_overrides_apply(tmp_path: Path) -> None:
    s = load_scenario(CONFIG / "scale.yaml", jobs=10_000, seed=5, speed=3.5, no_quotas=True)
    assert s.generate is not None and s.generate.jobs == 10_000
    assert (s.seed, s.speed, s.quotas.enabled) == (5, 3.5, False)
    assert load_scenario(CONFIG / "demo.yaml").quotas.rate("DescribeJob") == 10.0


_yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["seed", "speed", "groups", "jobs", "timeline", "faults", "quotas", "devices", "generate"]
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _yaml_values, max_size=4) | _yaml_values)
def test_untrusted_scenarios_fail_only_with_scenario_errors(data: Any) -> None:
    with contextlib.suppress(ScenarioError):
        parse_scenario(data, "fuzz.yaml")


def test_cron_next_occurrence() -> None:
    sunday_two = Cron.parse("cron(0 2 ? * SUN *)")
    after = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # a Wednesday
    assert sunday_two.next_at_or_after(after) == datetime(2024, 5, 5, 2, 0, tzinfo=UTC)
    half_hourly = Cron.parse("cron(0/30 * * * ? *)")
    assert half_hourly.next_at_or_after(datetime(2024, 5, 1, 12, 1, tzinfo=UTC)) == datetime(
        2024, 5, 1, 12, 30, tzinfo=UTC
    )
    first_of_month = Cron.parse("cron(15 10 1 JAN-MAR ? 2025)")
    assert first_of_month.next_at_or_after(after) == datetime(2025, 1, 1, 10, 15, tzinfo=UTC)
    assert first_of_month.next_at_or_after(datetime(2025, 3, 1, 10, 16, tzinfo=UTC)) is None
    # A start on the minute counts; a second later, the next one does.
    at = datetime(2024, 5, 5, 2, 0, tzinfo=UTC)
    assert sunday_two.next_at_or_after(at) == at
    assert sunday_two.next_at_or_after(at.replace(second=1)) == datetime(
        2024, 5, 12, 2, 0, tzinfo=UTC
    )
    assert Cron.parse("cron(0 0 30 FEB ? *)").next_at_or_after(after) is None


@pytest.mark.parametrize(
    "expr",
    [
        "0 2 * * *",
        "cron(0 2 * * SUN *)",
        "cron(0 2 ? * ? *)",
        "cron(61 2 ? * SUN *)",
        "cron(0 2 ? * FUNDAY *)",
        "cron(0 2 ? * SUN)",
        "cron(0/0 2 ? * SUN *)",
        "cron(30-10 2 ? * SUN *)",
        "cron(? 2 ? * SUN *)",
    ],
)
def test_cron_rejects(expr: str) -> None:
    with pytest.raises(CronError):
        Cron.parse(expr)


def _field(*choices: str) -> st.SearchStrategy[str]:
    return st.sampled_from(choices)


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(
        _field("*", "0", "59", "0/15", "5/20", "10-40/10", "0,30", "7-9"),
        _field("*", "0", "23", "2", "0/6", "9-17", "1,13", "22-23/1"),
        st.one_of(
            st.tuples(_field("*", "1", "15", "28", "29", "30", "31", "1-7", "*/10"), st.just("?")),
            st.tuples(st.just("?"), _field("*", "SUN", "MON-FRI", "1,7", "sat", "2-4", "*/3")),
        ),
        _field("*", "JAN", "FEB", "2", "JAN-MAR", "*/3", "APR,JUN,SEP,NOV", "dec"),
        _field("*", "2025", "2024-2030", "2028", "2025-2199/4", "2100"),
    ),
    st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31), timezones=st.just(UTC)),
)
def test_the_simulators_cron_agrees_with_the_exporters(
    fields: tuple[str, str, tuple[str, str], str, str], when: datetime
) -> None:
    # The two parsers are written apart on purpose (the simulator is the independent
    # witness); where both accept an expression, they must find the same next start.
    minute, hour, (day, weekday), month, year = fields
    text = f"cron({minute} {hour} {day} {month} {weekday} {year})"
    ours = Cron.parse(text).next_at_or_after(when)
    assert ours == CronExpression.parse(text).next_at_or_after(when), text


def test_the_simulators_enums_are_botocores() -> None:
    # The simulator reads AWS's enums from botocore's service model, not from the exporter.
    assert job_statuses() == JOB_STATUSES
    assert "SCHEDULED" in job_statuses()
    assert set(execution_statuses()) == set(EXECUTION_STATES)


def test_main_bad_scenario_exits_2_with_one_line(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n  - id: x\n    targets: [group:g]\n    rollout: {burst: 3}\n")
    assert main(["--scenario", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(bad) in err and "jobs[0].rollout.burst" in err and "expected one of" in err


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_module_runs_until_sigterm() -> None:
    port = free_port()
    with started(
        [sys.executable, "-m", "simulator", "--listen", f"127.0.0.1:{port}",
         "--scenario", str(CONFIG / "abort.yaml"), "--seed", "4", "--speed", "2"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip

        def up() -> bool:
            assert proc.poll() is None, "the simulator exited"
            return http_ok(f"http://127.0.0.1:{port}/_sim/stats")

        wait(up, within=20, what="the simulator", ignoring=(OSError,))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert "simulator listening" in proc.stderr.read().decode()


def test_module_bad_scenario_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("speed: fast\n")
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "--scenario", str(bad)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {bad}: speed: expected a number, got 'fast'"
    ]


def test_fields_pass_describe_job_fields_through(tmp_path: Path) -> None:
    """A job's `fields:` reach DescribeJob as written: one scenario value exercises a field
    the simulator has no model for (CONTRIBUTING.md's recipe)."""
    from simulator.fleet import Fleet
    from simulator.render import describe_job

    data = {
        "groups": [{"name": "g", "things": 2}],
        "jobs": [
            {
                "id": "passed",
                "targets": ["group:g"],
                "fields": {"description": "from fields", "documentParameters": {"k": "v"}},
            }
        ],
    }
    scenario = parse_scenario(data, "s.yaml")
    fleet = Fleet(scenario, 1_700_000_000.0)
    body = describe_job(fleet, fleet.jobs["passed"], "us-east-1")
    assert body["job"]["description"] == "from fields"
    assert body["job"]["documentParameters"] == {"k": "v"}
    # The fleet's own fields cannot be overridden, and a field must be DescribeJob's.
    for key, message in (("status", "computes this field"), ("bogus", "not a DescribeJob")):
        data["jobs"][0]["fields"] = {key: "x"}
        with pytest.raises(ScenarioError, match=message) as error:
            parse_scenario(data, "s.yaml")
        assert error.value.path == f"jobs[0].fields.{key}"
