"""The sped-up demo keeps the alerts' arithmetic: every duration scales by the same factor.

`demo --speed 0.1` once fired AwsIotJobsExporterDataStale: the rules' max_age shrank with
the speed (15m / 6), the exporter's reconcile interval (5m) did not. These tests hold the
demo's exporter config, Prometheus config, rules and Alertmanager config to one factor,
without starting anything.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli.demo import DEMO_CONFIG
from exporter.config import CollectorSettings, Config, Events, load_config
from exporter.demo_stack import (
    REAL_TIME,
    SCRAPE_INTERVAL,
    DemoStack,
    scaled_quotas,
    time_factor,
    time_scaled_config,
)
from exporter.mixin import generate, shipped, shipped_rules

# Real time, the README's example, the launcher test's, and 60 times real time.
SPEEDS = [REAL_TIME, 0.1, 0.5, 1.0]
# Durations about the network, which a faster simulated fleet does not make faster.
NOT_SCALED = {"request_timeout", "attempt_timeout"}


def _durations(settings: Any) -> dict[str, float]:
    """The duration fields of a settings dataclass, by their names' convention."""
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if f.name.endswith(("interval", "timeout", "retention"))
    }


def _events(config: Config) -> Events:
    events = config.targets[0].events
    assert events is not None, "the demo's target reads job events"
    return events


def _stack(speed: float, tmp_path: Path) -> DemoStack:
    stack = DemoStack("127.0.0.1:9947", speed=speed)
    stack._tmp = tmp_path
    stack._write_files()
    return stack


@pytest.mark.parametrize("speed", SPEEDS)
def test_the_exporter_refreshes_data_well_inside_the_rules_age_limits(
    speed: float, tmp_path: Path
) -> None:
    factor = time_factor(speed)
    config = time_scaled_config(load_config(DEMO_CONFIG), factor)
    alerts = generate.time_scaled(generate.load_config(), factor)["alerts"]
    scrape = generate.seconds(
        _stack(speed, tmp_path)._prometheus_config(True)["global"]["scrape_interval"]
    )
    collector, events = config.collector, _events(config)
    # The oldest data of a job no event touches: a reconcile interval, plus the cycle that
    # picks it up, plus the scrape that reads it. Polling (events lost) is faster still.
    oldest = events.reconcile_interval + collector.interval + scrape
    assert collector.interval <= events.reconcile_interval
    assert 2 * oldest <= generate.seconds(alerts["data_stale"]["max_age"]), (factor, oldest)
    # Discovery succeeds every discovery_interval; its alert waits for several of them.
    discovery = generate.seconds(alerts["discovery_failing"]["max_age"])
    assert 3 * (collector.discovery_interval + scrape) <= discovery, factor
    # Events count as lost only after a silence well beyond the reconcile interval.
    assert events.silence_timeout >= 2 * events.reconcile_interval


def test_without_scaling_the_exporter_the_sped_up_rules_call_its_data_stale() -> None:
    # The false alarm of `demo --speed 0.1`, as arithmetic: what the test above prevents.
    factor = time_factor(0.1)
    alerts = generate.time_scaled(generate.load_config(), factor)["alerts"]
    unscaled = _events(load_config(DEMO_CONFIG)).reconcile_interval
    assert unscaled > generate.seconds(alerts["data_stale"]["max_age"])


def test_every_duration_of_the_exporter_config_is_divided_by_the_factor() -> None:
    factor = 30.0
    demo = load_config(DEMO_CONFIG)
    scaled = time_scaled_config(demo, factor)
    for before, after in (
        (demo.collector, scaled.collector),
        (_events(demo), _events(scaled)),
    ):
        for name, value in _durations(before).items():
            wanted = value if name in NOT_SCALED else max(1.0, value / factor)
            assert getattr(after, name) == pytest.approx(wanted), name
    # A new duration field must be classed here: scaled, or about the network.
    assert set(_durations(CollectorSettings())) == {
        "interval",
        "discovery_interval",
        "request_timeout",
        "terminal_job_retention",
        "attempt_timeout",
    }
    assert set(_durations(Events(sqs_queue_url="x"))) == {
        "reconcile_interval",
        "min_describe_interval",
        "silence_timeout",
    }
    # The budget and the simulator's quotas grow alike, so shorter intervals fit.
    assert scaled.collector.requests_per_second == demo.collector.requests_per_second * factor
    sweeps = scaled.collector.executions
    assert sweeps.requests_per_second == demo.collector.executions.requests_per_second * factor
    # Stuck thresholds are simulated seconds, as the ages measured on the simulator's clock.
    assert sweeps.stuck_in_progress_after == demo.collector.executions.stuck_in_progress_after
    assert scaled_quotas([("DescribeJob", 10.0)], factor) == {"DescribeJob": 300.0}


def test_at_real_time_nothing_changes(tmp_path: Path) -> None:
    demo = load_config(DEMO_CONFIG)
    assert time_scaled_config(demo, time_factor(REAL_TIME)) == demo
    assert time_factor(0) == 1  # a frozen clock
    assert time_factor(REAL_TIME / 2) == 1  # slower than real time: the rules as shipped
    stack = _stack(REAL_TIME, tmp_path)
    for name, text in shipped_rules().items():
        assert (tmp_path / "rules" / name).read_text() == text
    written = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())
    assert written == yaml.safe_load(shipped("alertmanager.yml"))
    interval = stack._prometheus_config(True)["global"]["scrape_interval"]
    assert generate.seconds(interval) == SCRAPE_INTERVAL


def test_sped_up_rules_scrape_and_alertmanager_share_the_factor(tmp_path: Path) -> None:
    stack = _stack(0.5, tmp_path)  # 30 times real time
    assert stack.factor == pytest.approx(30)
    rules = {
        rule["alert"]: rule
        for path in (tmp_path / "rules").glob("*.rules.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert rules["AwsIotJobFailureRatioHigh"]["for"] == "10s"  # 5m
    assert "> 30" in rules["AwsIotJobsExporterDataStale"]["expr"]  # 15m
    route = yaml.safe_load((tmp_path / "alertmanager.yml").read_text())["route"]
    shipped_route = yaml.safe_load(shipped("alertmanager.yml"))["route"]
    for key in ("group_wait", "group_interval", "repeat_interval"):
        wanted = max(1, round(generate.seconds(shipped_route[key]) / 30))
        assert route[key] == f"{wanted}s", key
    config = stack._prometheus_config(True)
    assert config["global"]["scrape_interval"] == "1s"  # 15s / 30, rounded up to 1s
    assert config["rule_files"] == [str(tmp_path / "rules" / "*.rules.yml")]
