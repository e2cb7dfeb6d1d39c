"""The rules and the dashboards join on the metric table's identity labels, not on a copy."""

from __future__ import annotations

import json
import re
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from exporter.mixin import generate as rules
from exporter.table import IDENTITY_LABELS

ROOT = Path(__file__).resolve().parents[2]
# The label list of a vector matching or an aggregation: `on (...)`, `by (...)`.
GROUPING = re.compile(r"\b(?:on|by|ignoring|without)\s*\(([^()]*)\)")


def _dashboards_generator() -> dict[str, Any]:
    """The names grafana/generate.py defines (a script, not a module of a package)."""
    return runpy.run_path(str(ROOT / "grafana" / "generate.py"))


def _rule_exprs() -> Iterator[str]:
    for text in rules.render(rules.load_config()).values():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                yield rule["expr"]


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def _job_groupings(exprs: Iterator[str]) -> list[list[str]]:
    """Every label list that names a job's id: those join or aggregate per job."""
    found = []
    for expr in exprs:
        for match in GROUPING.finditer(expr):
            labels = [label.strip() for label in match.group(1).split(",")]
            if "job_id" in labels:
                found.append(labels)
    return found


def test_the_generators_take_the_identity_labels_from_the_table() -> None:
    # Running the generator puts grafana/ on the path: its boards package shares JOB_KEY.
    _dashboards_generator()
    from boards import lib  # type: ignore[import-not-found]

    joined = [rules.JOB_KEY, lib.JOB_KEY]
    assert joined == [", ".join(IDENTITY_LABELS)] * 2


def test_rules_join_jobs_on_exactly_the_identity_labels() -> None:
    groupings = _job_groupings(_rule_exprs())
    assert groupings, "the rules join per job"
    for labels in groupings:
        assert labels[: len(IDENTITY_LABELS)] == list(IDENTITY_LABELS), labels


def test_dashboards_join_jobs_on_exactly_the_identity_labels() -> None:
    generator = _dashboards_generator()
    rendered = generator["render"](generator["load_mixin"]())
    boards = [json.loads(text) for text in rendered.values()]
    groupings = _job_groupings(e for board in boards for e in _dashboard_exprs(board))
    assert groupings, "the dashboards join per job"
    for labels in groupings:
        assert labels[: len(IDENTITY_LABELS)] == list(IDENTITY_LABELS), labels
