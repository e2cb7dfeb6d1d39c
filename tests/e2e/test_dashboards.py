"""The Grafana dashboards are data checked by code: generated, parseable, on documented metrics."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

DASHBOARDS = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
RULES = sorted((ROOT / "exporter" / "mixin" / "rules").glob("*.rules.yml"))
MIXIN = yaml.safe_load((ROOT / "exporter" / "mixin" / "mixin.yaml").read_text())

# Series Prometheus itself makes, which dashboards may use besides the exporter's.
BUILTIN_METRICS = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Grafana's variables, replaced by values a query could run with.
GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "1h",
    "$target": ".*",
    "$region": ".*",
    "$job_id": ".*",
    "$package": ".*",
}
# Words of PromQL that look like metric names: operators and modifiers. Functions and
# aggregations are recognised by the parenthesis that follows them.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right", "inf", "nan"}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", ROOT / "grafana/generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in board["panels"]:
        yield p
        yield from p.get("panels", [])


def data_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    # Rows only group panels: no queries, nothing to put a unit on.
    return [p for p in panels(board) if p["type"] != "row"]


def substitute(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def variable_query(var: dict[str, Any]) -> str:
    """A query variable's query: Grafana takes a string or, as the generator writes it, an
    object with the query and a refId."""
    query = var["query"]
    text = query["query"] if isinstance(query, dict) else query
    assert isinstance(text, str), f"variable {var['name']}: {query!r}"
    return text


def queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel query and every variable's label_values() selector."""
    found = []
    for name, board in dashboards().items():
        for p in data_panels(board):
            for t in p["targets"]:
                found.append((f"{name}: {p['title']} {t['refId']}", substitute(t["expr"])))
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                text = variable_query(var)
                match = re.fullmatch(r"label_values\((.+), *\w+\)", text)
                assert match, f"{name}: variable {var['name']}: {text}"
                found.append((f"{name}: ${var['name']}", substitute(match.group(1))))
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: what is left once PromQL's other words are gone."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group(0)
        after = expr[match.end() :].lstrip()
        if word in KEYWORDS or after.startswith("("):
            continue
        if match.start() > 0 and (
            expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."
        ):
            continue  # the unit of a duration (30m) or an exponent
        names.add(word)
    return names


# PromQL's binary operators from the loosest to the tightest binding.
PRECEDENCE = [
    {"or"},
    {"and", "unless"},
    {"==", "!=", "<=", ">=", "<", ">"},
    {"+", "-"},
    {"*", "/", "%", "atan2"},
    {"^"},
]
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count"}
AGGREGATIONS |= {"count_values", "quantile"}
# Functions and aggregations whose result keeps the labels of their input, name included:
# the vector is their last argument, or their first.
KEEP_LABELS_OF_LAST = {"topk", "bottomk", "limitk", "limit_ratio"}
KEEP_LABELS_OF_FIRST = {"label_replace", "label_join", "sort", "sort_desc", "last_over_time"}
KEEP_LABELS_OF_FIRST |= {"sort_by_label", "sort_by_label_desc"}


def top_level(expr: str) -> list[tuple[int, str]]:
    """(position, token) of every operator, comma or word outside brackets and strings."""
    tokens: list[tuple[int, str]] = []
    depth, i = 0, 0
    while i < len(expr):
        c = expr[i]
        if c == '"':
            i = expr.index('"', i + 1) + 1
            continue
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif depth == 0:
            match = re.match(r"==|!=|<=|>=|[<>+\-*/%^,]|[A-Za-z_:][\w:]*", expr[i:])
            if match:
                tokens.append((i, match.group(0)))
                i += len(match.group(0))
                continue
        i += 1
    return tokens


def keeps_metric_name(expr: str) -> bool:
    """Whether the series of a PromQL expression can carry __name__, from its outermost
    operation, following Prometheus: arithmetic, comparisons with `bool`, aggregations and
    most functions drop the metric name; selectors, filters and set operations keep it."""
    expr = expr.strip()
    tokens = top_level(expr)
    for level in PRECEDENCE:
        found = [(at, tok) for n, (at, tok) in enumerate(tokens) if tok in level and n > 0]
        if not found:
            continue
        # ^ binds right to left, the others left to right: split at the last one to bind.
        at, tok = found[0] if level == {"^"} else found[-1]
        left, right = expr[:at], expr[at + len(tok) :]
        if tok == "or":
            return keeps_metric_name(left) or keeps_metric_name(right)
        if tok in {"and", "unless"}:
            return keeps_metric_name(left)
        if level is PRECEDENCE[2]:
            return not right.lstrip().startswith("bool") and keeps_metric_name(left)
        return False  # arithmetic
    if expr.startswith("("):
        return keeps_metric_name(expr[1:-1])
    call = re.match(r"([a-z_]+)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(", expr)
    if call:
        name, inside = call.group(1), expr[call.end() : expr.rindex(")")]
        commas = [-1, *(at for at, tok in top_level(inside) if tok == ",")]
        ends = [*commas[1:], len(inside)]
        args = [inside[a + 1 : b] for a, b in zip(commas, ends, strict=True)]
        if name in KEEP_LABELS_OF_LAST:
            return keeps_metric_name(args[-1])
        if name in KEEP_LABELS_OF_FIRST:
            return keeps_metric_name(args[0])
        return False  # aggregations and the other functions
    return bool(re.match(r"[A-Za-z_:][\w:]*\s*(\{|$)|\{", expr))


def grouping(expr: str) -> tuple[str, ...] | None:
    """The labels an expression's outermost `aggregation by (...)` keeps, if it is one."""
    match = re.fullmatch(r"\s*([a-z_]+)\s+by\s*\(([^)]*)\)\s*\(.*\)\s*", expr, flags=re.DOTALL)
    if not match or match.group(1) not in AGGREGATIONS:
        return None
    return tuple(sorted(label.strip() for label in match.group(2).split(",")))


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    names = set(re.findall(r"^\| `([a-z_:]+)` \|", text, flags=re.MULTILINE))
    histograms = {
        n for n in names if re.search(rf"^\| `{n}` \| histogram \|", text, flags=re.MULTILINE)
    }
    for h in histograms:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


def recorded_metrics() -> set[str]:
    return {
        r["record"]
        for f in RULES
        for g in yaml.safe_load(f.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }


def test_committed_dashboards_are_generated() -> None:
    generate = load_generator()
    rendered = generate.render(generate.load_mixin())
    assert sorted(rendered) == sorted(dashboards()), "stray or missing dashboard files"
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"{name} is stale: run grafana/generate.py"


def test_check_fails_on_stale_or_missing_dashboards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # CI relies on `generate.py --check` to catch a dashboard edited by hand or a generator
    # change whose output was not committed.
    generate = load_generator()
    for path in DASHBOARDS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(generate, "OUT_DIR", tmp_path)
    assert generate.main(["--check"]) == 0

    fleet = tmp_path / "aws-iot-jobs-fleet.json"
    board = json.loads(fleet.read_text())
    board["panels"][1]["title"] = "Edited by hand"
    fleet.write_text(json.dumps(board, indent=2) + "\n")
    assert generate.main(["--check"]) == 1
    assert "aws-iot-jobs-fleet.json" in capsys.readouterr().err

    # Only the key order differs: still stale, since the committed file is the SDK's bytes.
    original = (DASHBOARDS / "aws-iot-jobs-fleet.json").read_text()
    fleet.write_text(json.dumps(json.loads(original), indent=2, sort_keys=True) + "\n")
    assert generate.main(["--check"]) == 1

    fleet.write_text(original)
    (tmp_path / "aws-iot-jobs-exporter.json").unlink()
    assert generate.main(["--check"]) == 1
    assert "aws-iot-jobs-exporter.json" in capsys.readouterr().err

    # Without --check the generator writes what --check then accepts.
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0
    assert (tmp_path / "aws-iot-jobs-exporter.json").read_text() == (
        DASHBOARDS / "aws-iot-jobs-exporter.json"
    ).read_text()


def test_dashboards_are_built_with_grafanas_sdk() -> None:
    # The dashboards come from the SDK's typed models, not from dicts: the generator returns
    # the SDK's Dashboard objects, and what it writes decodes back into them with the uid,
    # panels and queries intact.
    from grafana_foundation_sdk.models import dashboard as models

    generate = load_generator()
    built = generate.build(generate.load_mixin())
    for name, board in built.items():
        assert isinstance(board, models.Dashboard), name
        decoded = models.Dashboard.from_json(json.loads((DASHBOARDS / name).read_text()))
        assert decoded.uid == board.uid, name
        assert decoded.panels is not None and board.panels is not None
        assert [p.title for p in decoded.panels] == [p.title for p in board.panels], name
        for ours, theirs in zip(decoded.panels, board.panels, strict=True):
            if isinstance(ours, models.Panel):
                assert isinstance(theirs, models.Panel)
                assert [t.to_json()["expr"] for t in ours.targets or []] == [
                    t.to_json()["expr"] for t in theirs.targets or []
                ], f"{name}: {ours.title}"


MYPY = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull]


def mypy_strict(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MYPY, str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_generator_is_type_checked(tmp_path: Path) -> None:
    # What the SDK's typed builders are for: an option Grafana does not know, or a value of
    # the wrong kind, is a type error in the generator instead of a key Grafana ignores.
    # mypy follows generate.py's imports into every dashboard module (grafana/boards/).
    result = mypy_strict(ROOT / "grafana" / "generate.py")
    assert result.returncode == 0, result.stdout + result.stderr
    shutil.copy(ROOT / "grafana" / "generate.py", tmp_path / "generate.py")
    shutil.copytree(ROOT / "grafana" / "boards", tmp_path / "boards")
    lib = tmp_path / "boards" / "lib.py"
    source = lib.read_text()
    typo = ".text_mode(common.BigValueTextMode.VALUE_AND_NAME)"
    assert typo in source
    lib.write_text(source.replace(typo, '.text_mode("value_and_name")'))
    result = mypy_strict(tmp_path / "generate.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BigValueTextMode" in result.stdout


def test_metric_name_extraction() -> None:
    # The check below is only as good as this extraction.
    expr = (
        'sum by (le, operation) (rate(x_bucket{a="b{c}"}[5m] offset 1h)) / on (job) '
        "group_left (t) max_over_time(y:z:ratio[1m:30s]) > bool 1e3 and ALERTS unless up"
    )
    assert metric_names(expr) == {"x_bucket", "y:z:ratio", "ALERTS", "up"}


def test_every_query_parses(tmp_path: Path) -> None:
    # promtool parses PromQL exactly as Prometheus does: every query becomes a recording
    # rule of a throwaway rule file.
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found on PATH; run `make prometheus`"
    found = queries()
    rules = [{"record": f"dashboard_query_{i}", "expr": q} for i, (_, q) in enumerate(found)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        for index, (where, _) in enumerate(found):
            result.stdout = result.stdout.replace(f"dashboard_query_{index}", where)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_query_uses_only_known_metrics() -> None:
    known = documented_metrics() | recorded_metrics() | BUILTIN_METRICS
    for where, expr in queries():
        unknown = metric_names(expr) - known
        assert not unknown, f"{where}: {sorted(unknown)} neither in docs/metrics.md nor recorded"


def test_rules_use_only_known_metrics() -> None:
    known = documented_metrics() | recorded_metrics() | BUILTIN_METRICS
    for f in RULES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                unknown = metric_names(rule["expr"]) - known
                assert not unknown, f"{rule.get('alert') or rule['record']}: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_conventions(name: str) -> None:
    board = dashboards()[name]
    assert board["uid"] in MIXIN["dashboard_uids"].values()
    assert board["tags"] == ["aws-iot-jobs"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"target", "region", "job_id"} <= set(variables)
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in data_panels(board):
        where = f"{name}: {p['title']}"
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert p["targets"], f"{where}: no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", where
        assert p.get("description"), f"{where}: no description"
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, where


def test_job_links_point_to_the_console_and_the_job_dashboard() -> None:
    job_uid = MIXIN["dashboard_uids"]["job"]
    linked = 0
    for name, board in dashboards().items():
        for p in data_panels(board):
            links = p["fieldConfig"]["defaults"].get("links", [])
            if not links:
                continue
            linked += 1
            urls = [link["url"] for link in links]
            (console,) = [u for u in urls if "console.aws.amazon.com" in u]
            ref = "__field.labels" if "__field.labels" in console else "__data.fields"
            assert console == (
                f"https://${{{ref}.region}}.console.aws.amazon.com/iot/home"
                f"?region=${{{ref}.region}}#/job/${{{ref}.job_id}}"
            ), f"{name}: {p['title']}"
            (detail,) = [u for u in urls if u.startswith("/d/")]
            assert detail.startswith(f"/d/{job_uid}?"), f"{name}: {p['title']}"
            for label in ("target", "region", "job_id"):
                assert f"var-{label}=${{{ref}.{label}}}" in detail, f"{name}: {p['title']}"
    assert linked >= 10


def test_provisioning_loads_the_committed_dashboards() -> None:
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "aws-iot-jobs.yml").read_text())[
        "providers"
    ]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    # docker-compose mounts grafana/dashboards where the provider reads from.
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"]


def test_compose_runs_what_the_repository_ships() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"simulator", "exporter", "prometheus", "alertmanager", "grafana"} <= set(services)
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), f"docker-compose.yml mounts missing {source}"
    # The exporter's mounted config is valid for the exporter itself.
    (config,) = [
        ROOT / volume.split(":")[0]
        for volume in services["exporter"]["volumes"]
        if volume.split(":")[1] == "/etc/aws-iot-jobs-exporter/config.yaml"
    ]
    exe = Path(sys.executable).parent / "aws-iot-jobs-exporter"
    result = subprocess.run(
        [str(exe), "check-config", "--config.file", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Prometheus scrapes the exporter service on the port the exporter listens on.
    prometheus = yaml.safe_load((ROOT / "exporter" / "mixin" / "prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "aws-iot-jobs-exporter"]
    assert job["static_configs"][0]["targets"] == ["exporter:9947"]
    assert ":9947" in services["exporter"]["command"]


def test_metric_name_inference() -> None:
    # The table check below is only as good as this.
    keeps = {
        'x{a="b"}': True,
        "x": True,
        "max by (a) (x)": False,
        "max without () (x)": False,
        "x and on (a) (max without (i) (y) == 1)": True,
        "x and on (a) (y == 1)": True,
        "(time() - x) and on (a) (y == 1)": False,
        "x * on (a) group_left (b) y": False,
        'x{a="b"} * 1000': False,
        "x > bool 1": False,
        "x > 1": True,
        "topk(10, x)": True,
        "topk(10, max by (a) (x))": False,
        "max by (a) (topk(10, x))": False,
        "sum(x) / (sum(y) > 0)": False,
        "rate(x[5m])": False,
        "max(y) or x": True,
        'label_replace(x, "a", "$1", "b", "(.*)")': True,
    }
    assert {expr: keeps_metric_name(expr) for expr in keeps} == keeps
    assert grouping("max by (b, a) (\n  x and on (a) y\n)") == ("a", "b")
    assert grouping("topk by (a) (1, x)") is None
    assert grouping("max by (a) (x) * y") is None


def test_merged_tables_have_one_row_per_key() -> None:
    # Grafana's merge joins the rows of a table's queries whose shared columns agree, and
    # a table-format query has a column for each label, __name__ included: queries that
    # keep their metric names never join, and queries grouped by different labels leave
    # columns empty. One row per job needs queries without names and with the same labels.
    checked = 0
    for name, board in dashboards().items():
        for p in data_panels(board):
            if p["type"] != "table" or len(p["targets"]) < 2:
                continue
            where = f"{name}: {p['title']}"
            steps = [t["id"] for t in p.get("transformations", [])]
            assert steps[:1] == ["merge"], f"{where}: queries are not merged first: {steps}"
            for t in p["targets"]:
                assert not keeps_metric_name(t["expr"]), (
                    f"{where} {t['refId']}: the result keeps its metric name, so its rows "
                    "cannot merge with the other queries'"
                )
            groups = {grouping(t["expr"]) for t in p["targets"]} - {None}
            assert len(groups) <= 1, f"{where}: queries grouped by different labels: {groups}"
            checked += 1
    assert checked >= 5


def test_value_panels_choose_their_colours() -> None:
    # A stat, gauge or table field without a colour of its own gets Grafana's default
    # thresholds, red from 80: counts, durations and timestamps would turn red for nothing.
    # Each one is either a fixed colour or thresholds the dashboard sets on purpose.
    for name, board in dashboards().items():
        for p in data_panels(board):
            if p["type"] not in {"stat", "gauge", "bargauge", "table"}:
                continue
            where = f"{name}: {p['title']}"
            defaults = p["fieldConfig"]["defaults"]
            mode = defaults.get("color", {}).get("mode")
            assert mode in {"fixed", "thresholds"}, f"{where}: no colour mode"
            if mode == "fixed":
                assert defaults["color"].get("fixedColor"), f"{where}: fixed without a colour"
            else:
                assert defaults.get("thresholds", {}).get("steps"), f"{where}: no thresholds"
            for override in p["fieldConfig"]["overrides"]:
                props = {prop["id"]: prop["value"] for prop in override["properties"]}
                colour = props.get("color", {})
                if "thresholds" in props:
                    assert colour.get("mode", mode) == "thresholds", (
                        f"{where}: {override['matcher']} sets thresholds that its fixed "
                        "colour ignores"
                    )
                if colour.get("mode") == "fixed":
                    assert colour.get("fixedColor"), f"{where}: {override['matcher']}"
                elif colour.get("mode") == "thresholds":
                    assert "thresholds" in props or mode == "thresholds", where
