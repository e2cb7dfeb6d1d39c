"""The self-metrics table: the registry is made from its rows, docs/metrics.md is written
from them, every known label value exists at 0, and a scrape reuses rendered bytes."""

from __future__ import annotations

import dataclasses
import importlib.util
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import selfmetrics
from exporter.events import EVENT_NAMES
from exporter.selfmetrics import EVENTS, OTEL, SELF_FAMILIES, SelfMetrics, label_values
from exporter.table import EVENT_OPERATIONS, OPERATIONS
from exporter.telemetry import OUTCOMES
from tests.support import ROOT

DOC = (ROOT / "docs" / "metrics.md").read_text()


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_metrics", ROOT / "docs" / "generate_metrics.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def every_part() -> SelfMetrics:
    telemetry = SelfMetrics()
    telemetry.init_target("t")
    telemetry.init_events("t")
    telemetry.package_availability("t", True)
    telemetry.watch_otel_push(lambda: (0, 1.0))
    return telemetry


def exposed(telemetry: SelfMetrics) -> dict[str, tuple[str, str, set[str]]]:
    """Family name as documented (`_total` on counters) -> (type, help, label names)."""
    found = {}
    for family in text_string_to_metric_families(telemetry.render().decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        found[name] = (family.type, family.documentation, labels)
    return found


def test_the_registry_is_the_table_row_by_row() -> None:
    found = exposed(every_part())
    ours = {name: row for name, row in found.items() if name.startswith(selfmetrics.NS)}
    assert set(ours) == {f.name for f in SELF_FAMILIES}
    for family in SELF_FAMILIES:
        kind, help_text, labels = ours[family.name]
        assert (kind, help_text, labels) == (family.type, family.help, set(family.labels))


def test_every_row_is_its_line_of_the_docs_table() -> None:
    gen = generator()
    for family in SELF_FAMILIES:
        assert family.doc, family.name
        assert gen.self_row(family) in DOC, family.name
    assert gen.self_table() in DOC
    changed = dataclasses.replace(SELF_FAMILIES[1], doc="Something else.")
    assert gen.self_row(changed) not in DOC
    with pytest.raises(ValueError, match=SELF_FAMILIES[1].name):
        gen.self_row(dataclasses.replace(SELF_FAMILIES[1], doc="a | b"))


def test_every_known_label_value_exists_from_the_start_at_zero() -> None:
    telemetry = every_part()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(telemetry.render().decode())
        for s in family.samples
    }
    operations = OPERATIONS + EVENT_OPERATIONS
    for operation in operations:
        for outcome in OUTCOMES:
            key = (
                "aws_iot_jobs_exporter_api_requests_total",
                (("operation", operation), ("outcome", outcome), ("target", "t")),
            )
            assert samples[key] == 0, key
    for event in EVENT_NAMES:
        key = ("aws_iot_jobs_exporter_events_received_total", (("event", event), ("target", "t")))
        assert samples[key] == 0
    # Each scope makes its own combinations: the SQS operations only for events.
    api = next(f for f in SELF_FAMILIES if f.attr == "api_requests")
    assert {values[0] for values in label_values(api, EVENTS)} == set(EVENT_OPERATIONS)
    assert all(OTEL in f.scopes for f in SELF_FAMILIES if not f.attr)


def test_a_target_without_discovery_has_no_discovery_series_and_drop_removes_all() -> None:
    telemetry = SelfMetrics()
    telemetry.init_target("t", discovery=False)
    telemetry.init_events("t")
    telemetry.package_availability("t", True)
    assert b"discovery_last_success_timestamp_seconds{" not in telemetry.render()
    telemetry.init_target("t", discovery=True)
    assert b'discovery_last_success_timestamp_seconds{target="t"} 0.0' in telemetry.render()
    telemetry.drop_target("t")
    assert b'target="t"' not in telemetry.render()


def test_a_scrape_reuses_the_rendered_bytes_until_a_value_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Rendered again only on a change: no expiry within this test.
    monkeypatch.setattr(selfmetrics, "REFRESH_SECONDS", 3600.0)
    telemetry = every_part()
    first = telemetry.render()
    assert telemetry.render() is first
    telemetry.api_call("t", "DescribeJob", "throttled")
    second = telemetry.render()
    assert second is not first
    assert (
        b'api_requests_total{operation="DescribeJob",outcome="throttled",target="t"} 1.0' in second
    )
    assert telemetry.render() is second
    # Each format keeps its own bytes.
    assert telemetry.render(openmetrics=True).endswith(b"# EOF\n")
    assert telemetry.render() is second


def test_watched_values_are_read_when_rendering_at_most_once_per_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(selfmetrics, "REFRESH_SECONDS", 3600.0)
    telemetry = every_part()
    reads = {"age": 0, "driven": 0}

    def age() -> float:
        reads["age"] += 1
        return 120.0

    def driven() -> bool:
        reads["driven"] += 1
        return True

    telemetry.watch_sweep_age("t", age)
    telemetry.watch_events_driven("t", driven)
    assert reads == {"age": 0, "driven": 0}  # never when registered
    body = telemetry.render()
    for outcome in OUTCOMES:  # every change renders again, and reads nothing again
        telemetry.api_call("t", "ListJobs", outcome)
        telemetry.render()
    assert reads == {"age": 1, "driven": 1}
    assert b'aws_iot_jobs_exporter_events_driven{target="t"} 1.0' in body
    [line] = [
        line
        for line in body.decode().splitlines()
        if line.startswith("aws_iot_jobs_exporter_sweep_oldest_age_seconds{")
    ]
    assert float(line.split()[-1]) >= 120.0


def test_pushed_values_replace_the_readers() -> None:
    telemetry = every_part()
    telemetry.watch_sweep_age("t", lambda: pytest.fail("read after a push"))
    telemetry.watch_events_driven("t", lambda: pytest.fail("read after a push"))
    telemetry.sweep_age("t", 0.0, 1.0)
    telemetry.events_driven("t", False)
    body = telemetry.render()
    assert b'aws_iot_jobs_exporter_sweep_oldest_age_seconds{target="t"} 0.0' in body
    assert b'aws_iot_jobs_exporter_events_driven{target="t"} 0.0' in body
    # An age pushed at some instant grows from there: it is an age, not a reading.
    telemetry.sweep_age("t", 30.0, 1.0)
    [line] = [
        line
        for line in telemetry.render().decode().splitlines()
        if line.startswith("aws_iot_jobs_exporter_sweep_oldest_age_seconds{")
    ]
    assert float(line.split()[-1]) > 1_000_000.0  # 30 s old at Unix time 1: decades now


def test_a_render_of_the_changed_families_is_the_whole_registry_rendered() -> None:
    from prometheus_client.exposition import generate_latest

    def ours(body: bytes) -> list[str]:
        return [line for line in body.decode().splitlines() if selfmetrics.NS in line]

    telemetry = every_part()
    telemetry.render()
    telemetry.api_call("t", "DescribeJob", "denied")
    telemetry.cycle_done("t", 2.5, True, 100.0)
    telemetry.init_target("u", discovery=False)
    telemetry.event_lag("t", 3.0)
    assert ours(telemetry.render()) == ours(generate_latest(telemetry.registry))
    telemetry.drop_target("u")
    telemetry.tracked_jobs("t", {"active": 3}, 1)
    assert ours(telemetry.render()) == ours(generate_latest(telemetry.registry))


def test_the_openmetrics_render_is_the_registry_with_one_eof() -> None:
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    def ours(body: bytes) -> list[str]:
        return [
            line for line in body.decode().splitlines() if selfmetrics.NS in line or line == "# EOF"
        ]

    telemetry = every_part()
    telemetry.api_call("t", "ListJobs", "ok")
    telemetry.event_lag("t", 2.0)
    body = telemetry.render(openmetrics=True)
    assert ours(body) == ours(openmetrics(telemetry.registry))
    assert body.count(b"# EOF") == 1 and body.endswith(b"# EOF\n")
