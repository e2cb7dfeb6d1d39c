"""docs/metrics.md is enforced: every metric, label and DescribeJob field is documented."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from typing import Any

import botocore.session
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import RESERVED_LABELS
from exporter.packages import PACKAGE_FAMILIES
from exporter.selfmetrics import SelfMetrics
from exporter.table import FAMILIES, IDENTITY_LABELS
from tests.support import ROOT

DOC = (ROOT / "docs" / "metrics.md").read_text()


def documented_rows() -> dict[str, str]:
    """Metric name → its table row in docs/metrics.md."""
    rows = {}
    for line in DOC.splitlines():
        match = re.match(r"^\| `([a-z_]+)` \|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def test_every_job_metric_and_label_is_documented() -> None:
    rows = documented_rows()
    for family in FAMILIES:
        assert family.name in rows, f"{family.name} missing from docs/metrics.md"
        assert f"| {family.type} |" in rows[family.name], family.name
        for label in family.labels:
            assert f"`{label}`" in rows[family.name], f"{family.name}: label {label} undocumented"
    for label in IDENTITY_LABELS:
        assert f"`{label}`" in DOC


def test_job_metrics_table_is_generated_from_the_metric_table() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate_metrics.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_a_row_without_its_docs_text_changes_the_table() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "generate_metrics", ROOT / "docs" / "generate_metrics.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    # Every row carries its docs text, and the committed table is that text, row by row.
    for family in FAMILIES:
        assert family.series and family.source and family.doc, family.name
        assert generator.row(family) in DOC, family.name
    changed = dataclasses.replace(FAMILIES[0], doc="Something else.")
    assert generator.row(changed) not in DOC
    # A cell that would break the Markdown table is refused, not written.
    broken = dataclasses.replace(FAMILIES[0], doc="two\nlines")
    try:
        generator.row(broken)
    except ValueError as exc:
        assert FAMILIES[0].name in str(exc)
    else:
        raise AssertionError("a newline in a docs cell was accepted")


def every_self_metric() -> SelfMetrics:
    """Self-metrics with every optional part present: a target, and a pushing OTLP exporter."""
    telemetry = SelfMetrics()
    telemetry.init_target("t")
    telemetry.init_events("t")
    telemetry.watch_otel_push(lambda: (0, 1.0))
    telemetry.package_availability("t", True)
    return telemetry


def test_every_self_metric_and_label_is_documented() -> None:
    telemetry = every_self_metric()
    rows = documented_rows()
    text = generate_latest(telemetry.registry).decode()
    for family in text_string_to_metric_families(text):
        assert family.name in rows or f"{family.name}_total" in rows, family.name
        row = rows.get(family.name) or rows[f"{family.name}_total"]
        for sample in family.samples:
            for label in sample.labels:
                # A job's series carry the identity labels, documented once above.
                if label != "le" and label not in IDENTITY_LABELS:
                    assert f"`{label}`" in row, f"{family.name}: label {label} undocumented"


def test_documented_metrics_exist() -> None:
    telemetry = every_self_metric()
    text = generate_latest(telemetry.registry).decode()
    exported = {f.name for f in FAMILIES} | {f.name for f in PACKAGE_FAMILIES}
    exported |= {f.name for f in text_string_to_metric_families(text)}
    exported |= {f"{name}_total" for name in exported}
    stale = set(documented_rows()) - exported
    assert not stale, f"documented but not exported: {sorted(stale)}"


def test_every_label_the_exporter_sets_is_reserved() -> None:
    for family in FAMILIES:
        assert set(family.labels) <= RESERVED_LABELS, family.name
    assert set(IDENTITY_LABELS) <= RESERVED_LABELS


def member_names(shape: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """Every member name in a botocore shape, at any depth (lists and maps walked through)."""
    if shape.name in seen:  # a recursive shape: its members are already counted
        return set()
    seen = seen | {shape.name}
    if shape.type_name == "structure":
        names = set(shape.members)
        for member in shape.members.values():
            names |= member_names(member, seen)
        return names
    if shape.type_name == "list":
        return member_names(shape.member, seen)
    if shape.type_name == "map":
        return member_names(shape.value, seen)
    return set()


def describe_job_fields() -> set[str]:
    """DescribeJob's response fields from botocore's service model: the installed API, not a copy.

    A field that AWS adds in a later botocore fails the test below until it has a metric or
    a documented reason.
    """
    model = botocore.session.get_session().get_service_model("iot")
    return member_names(model.operation_model("DescribeJob").output_shape)


def test_the_model_walk_reaches_nested_fields() -> None:
    fields = describe_job_fields()
    # One from each depth: top level, job, a structure in a list, a structure in a structure.
    assert {"documentSource", "jobArn", "failureType", "numberOfTimedOutThings"} <= fields
    assert {"scheduledJobRollouts", "startTime", "destinationPackageVersions"} <= fields


def test_every_describe_job_field_reaches_the_docs() -> None:
    for name in sorted(describe_job_fields() - {"job"}):
        assert f"`{name}" in DOC or f".{name}" in DOC or f"{name}`" in DOC, (
            f"DescribeJob field {name} has neither a metric nor a reason in docs/metrics.md"
        )
