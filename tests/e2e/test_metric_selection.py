"""Metric families users turn off: the selection, the store's rendering, a real exporter."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import ConfigError, parse_config
from exporter.model import JobSnapshot, parse_describe_job
from exporter.store import MetricsStore
from exporter.table import FAMILIES, FAMILY_NAMES, family_name_problem, select_families
from simulator import SimulatorThread
from tests.support import ROOT, free_port, stop, wait

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())
TARGET = parse_config("targets: [{name: t, region: eu-west-1, jobs: {ids: [x]}}]").targets[0]
TARGETS = {TARGET.name: TARGET}
JOB_PREFIX = "aws_iot_job_"


def job(job_id: str, status: str = "IN_PROGRESS", fetched_at: float = 1.0) -> JobSnapshot:
    body = json.loads(json.dumps(FULL))
    body["job"].update(jobId=job_id, status=status, isConcurrent=False)
    if status == "COMPLETED":
        body["job"]["jobProcessDetails"].update(numberOfQueuedThings=0, numberOfInProgressThings=0)
    return parse_describe_job(body, fetched_at)


def declared(text: str) -> tuple[set[str], set[str], set[str]]:
    """Families named by HELP lines, by TYPE lines, and by samples, job families only."""
    helps, types, sampled = set(), set(), set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split()[2])
        elif line.startswith("# TYPE "):
            types.add(line.split()[2])
        elif line and not line.startswith("#"):
            sampled.add(line.split("{", 1)[0].split(" ", 1)[0])
    # A histogram's samples are named by its family and a suffix.
    sampled = {
        base if (base := re.sub(r"_(bucket|sum|count)$", "", name)) in helps else name
        for name in sampled
    }
    keep = lambda names: {n for n in names if n.startswith(JOB_PREFIX)}  # noqa: E731
    return keep(helps), keep(types), keep(sampled)


# --- the selection -------------------------------------------------------------------------


def test_selection_keeps_table_order_and_every_family_by_default() -> None:
    assert select_families() == FAMILIES
    assert select_families(allow=[], deny=[]) == FAMILIES
    allowed = select_families(allow=["aws_iot_job_executions", "aws_iot_job_info"])
    assert [f.name for f in allowed] == ["aws_iot_job_info", "aws_iot_job_executions"]
    denied = select_families(deny=["aws_iot_job_target_info"])
    assert [f.name for f in denied] == [n for n in FAMILY_NAMES if n != "aws_iot_job_target_info"]
    assert select_families(deny=FAMILY_NAMES) == ()


def test_every_family_name_is_accepted_and_nothing_else() -> None:
    for name in FAMILY_NAMES:
        assert family_name_problem(name) is None
    for name in ("aws_iot_job", "aws_iot_job_info ", "aws_iot_job_executions_total", ""):
        assert family_name_problem(name) is not None, name


@given(
    st.one_of(
        st.lists(st.one_of(st.sampled_from(FAMILY_NAMES), st.text(max_size=40)), max_size=4),
        st.text(max_size=40),
        st.integers(),
        st.none(),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
    ),
    st.sampled_from(["allow", "deny"]),
)
def test_any_selection_is_a_config_or_an_error_naming_the_field(value: Any, key: str) -> None:
    text = yaml.safe_dump(
        {"metrics": {key: value}, "targets": [{"name": "a", "region": "us-east-1",
                                               "jobs": {"ids": ["j"]}}]},
        allow_unicode=True,
    )  # fmt: skip
    try:
        config = parse_config(text, "config.yaml")
    except ConfigError as exc:
        assert exc.path.startswith(f"metrics.{key}"), str(exc)
        assert "\n" not in str(exc)
        return
    chosen = getattr(config.metrics, key)
    assert set(chosen) <= set(FAMILY_NAMES)
    assert len(set(chosen)) == len(chosen)


# --- the store renders only the kept families ----------------------------------------------


def filled(families: Any = FAMILIES) -> MetricsStore:
    store = MetricsStore(families)
    store.put_job(TARGET, "done", job("done", "COMPLETED"))
    store.put_job(TARGET, "running", job("running"))
    return store


def test_a_denied_family_has_no_samples_and_no_help_or_type_line() -> None:
    whole = filled().body().decode()
    assert "aws_iot_job_target_info{" in whole
    store = filled(select_families(deny=["aws_iot_job_target_info"]))
    text = store.body().decode()
    helps, types, _ = declared(text)
    expected = set(FAMILY_NAMES) - {"aws_iot_job_target_info"}
    assert helps == types == expected
    assert "aws_iot_job_target_info" not in text
    # Every other line is what the full rendering has, no more and no less.
    kept = [line for line in whole.splitlines() if "aws_iot_job_target_info" not in line]
    assert text.splitlines() == kept


def test_an_allowed_list_renders_only_its_families() -> None:
    store = filled(select_families(allow=["aws_iot_job_status", "aws_iot_job_executions"]))
    helps, types, sampled = declared(store.body().decode())
    assert helps == types == sampled == {"aws_iot_job_status", "aws_iot_job_executions"}


def test_selected_body_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required: `make test` installs Debian's prometheus package"
    for families in (
        select_families(deny=["aws_iot_job_target_info", "aws_iot_job_info"]),
        select_families(allow=["aws_iot_job_executions"]),
        (),
    ):
        result = subprocess.run(
            [promtool, "check", "metrics"],
            input=filled(families).body().decode(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr


async def test_select_renders_every_job_again_and_changes_the_version() -> None:
    store = filled()
    before = store.version
    kept = select_families(deny=["aws_iot_job_target_info"])
    await store.select(kept, TARGETS)
    assert store.families == kept
    assert store.version != before
    # The same as a store that had the selection from the start, frozen part included.
    assert store.body() == filled(kept).body()
    version = store.version
    await store.select(kept, TARGETS)
    assert store.version == version  # nothing changed, nothing re-rendered
    await store.select(FAMILIES, TARGETS)
    assert store.body() == filled().body()


async def test_jobs_put_or_removed_while_selecting_end_up_rendered_with_the_new_set() -> None:
    store = MetricsStore()
    for i in range(40):
        store.put_job(TARGET, f"j{i}", job(f"j{i}", "COMPLETED" if i % 2 else "IN_PROGRESS"))
    kept = select_families(allow=["aws_iot_job_info", "aws_iot_job_status"])
    # Yield after every job, so the collector's puts land in the middle of the selection.
    task = asyncio.create_task(store.select(kept, TARGETS, slice_seconds=0))
    await asyncio.sleep(0)
    old_body = store.body()
    store.put_job(TARGET, "j0", job("j0", "CANCELED", fetched_at=2.0))
    store.put_job(TARGET, "new", job("new"))
    store.remove(("t", "j3"))
    # Meanwhile a scrape still sees the old set whole.
    assert b"aws_iot_job_target_info{" in old_body
    assert b"aws_iot_job_target_info{" in store.body()
    await task

    expected = MetricsStore(kept)
    for key in store.job_keys():
        snapshot = store.get(key)
        assert snapshot is not None
        expected.put_job(TARGET, key[1], snapshot)
    assert ("t", "j3") not in store.job_keys() and ("t", "new") in store.job_keys()
    assert store.body() == expected.body()
    assert b'job_id="j0"' in store.body() and b'status="CANCELED"} 1\n' in store.body()


async def test_select_drops_jobs_of_targets_no_longer_configured() -> None:
    store = filled()
    await store.select(select_families(deny=["aws_iot_job_info"]), {})
    assert store.job_keys() == []
    helps, _, sampled = declared(store.body().decode())
    assert sampled == set() and "aws_iot_job_info" not in helps


# --- a real exporter in front of the simulator ----------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> Iterator[SimulatorThread]:
    with SimulatorThread("demo", no_quotas=True) as sim:
        # Half an hour in, every job has executions and targets.
        request = urllib.request.Request(
            f"{sim.url}/_sim/clock",
            data=json.dumps({"advance_minutes": 30}).encode(),
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()
        yield sim


class Exporter:
    def __init__(self, base: str, config: Path, sim_url: str) -> None:
        self.base, self.config, self.sim_url = base, config, sim_url

    def configure(self, metrics: str = "") -> None:
        self.config.write_text(config_text(self.sim_url, metrics))

    def get(self, path: str = "/metrics", gzip_ok: bool = False) -> tuple[int, bytes]:
        headers = {"Accept-Encoding": "gzip"} if gzip_ok else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = bytes(response.read())
                if response.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                return response.status, body
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def scrape(self) -> str:
        status, body = self.get()
        assert status == 200
        return body.decode()

    def described(self) -> str:
        """A scrape taken once the jobs have been described."""

        def probe() -> str | None:
            text = self.scrape()
            return text if "aws_iot_job_executions{" in text else None

        return str(wait(probe, 30, "jobs described"))

    def reload(self) -> tuple[int, str]:
        request = urllib.request.Request(f"{self.base}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def config_text(sim_url: str, metrics: str = "") -> str:
    return (
        f"{metrics}collector: {{interval: 500ms, discovery_interval: 500ms}}\n"
        f"targets:\n  - name: demo\n    region: us-east-1\n    endpoint_url: {sim_url}\n"
        "    jobs: {discover: {}}\n"
    )


@pytest.fixture
def start(fleet: SimulatorThread, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def run(metrics: str, *flags: str) -> Exporter:
        config = tmp_path / f"config-{len(started)}.yaml"
        exporter = Exporter("", config, fleet.url)
        exporter.configure(metrics)
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(config),
             "--web.listen-address", f"127.0.0.1:{port}", "--web.enable-lifecycle", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        )  # fmt: skip
        started.append(process)
        exporter.base = f"http://127.0.0.1:{port}"
        wait(lambda: exporter.get("/readyz")[0] == 200, 30, "exporter ready")
        return exporter

    yield run
    for process in started:
        stop(process)


def job_families(text: str) -> set[str]:
    helps, types, sampled = declared(text)
    assert helps == types, "every job family has both HELP and TYPE"
    assert sampled <= helps
    return helps


def same_samples(exporter: Exporter) -> None:
    """Identity and gzip scrapes carry the same series (the gzip cache follows a reload)."""

    def parsed(body: bytes) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        return {
            (s.name, tuple(sorted(s.labels.items())))
            for f in text_string_to_metric_families(body.decode())
            for s in f.samples
            if s.name.startswith(JOB_PREFIX)
        }

    # The demo moves: compare a gzip scrape taken between two identical plain ones.
    for _ in range(50):
        before = parsed(exporter.get()[1])
        zipped = parsed(exporter.get(gzip_ok=True)[1])
        if parsed(exporter.get()[1]) == before:
            assert zipped == before
            return
    raise AssertionError("the exposition never held still for three scrapes")


def test_denied_family_is_absent_and_a_reload_switches_to_an_allow_list(start: Any) -> None:
    exporter = start("metrics:\n  deny: [aws_iot_job_target_info]\n")
    text = exporter.described()
    families = job_families(text)
    assert families == set(FAMILY_NAMES) - {"aws_iot_job_target_info"}
    assert "aws_iot_job_target_info" not in text
    for kept in ("aws_iot_job_info{", "aws_iot_job_status{", "aws_iot_job_executions{"):
        assert kept in text
    assert "aws_iot_jobs_exporter_build_info" in text  # self-metrics are untouched

    # A reload that changes the lists re-renders every job: only the allowed ones remain.
    exporter.configure("metrics:\n  allow: [aws_iot_job_status, aws_iot_job_executions]\n")
    status, body = exporter.reload()
    assert status == 200, body
    text = exporter.scrape()
    assert job_families(text) == {"aws_iot_job_status", "aws_iot_job_executions"}
    _, _, sampled = declared(text)
    assert sampled == {"aws_iot_job_status", "aws_iot_job_executions"}
    assert "aws_iot_jobs_exporter_config_last_reload_successful 1.0" in text
    same_samples(exporter)

    # A bad name is refused with the file and field; the running selection stays.
    exporter.configure("metrics:\n  allow: [aws_iot_job_sttaus]\n")
    status, body = exporter.reload()
    assert status == 500
    assert (
        f"{exporter.config}: metrics.allow[0]: 'aws_iot_job_sttaus' is not a job metric family; "
        "did you mean 'aws_iot_job_status'?"
    ) in body
    text = exporter.scrape()
    assert job_families(text) == {"aws_iot_job_status", "aws_iot_job_executions"}
    assert "aws_iot_jobs_exporter_config_last_reload_successful 0.0" in text

    # Back to every family: what was dropped comes back, for every job.
    exporter.configure()
    assert exporter.reload()[0] == 200
    text = exporter.scrape()
    assert "aws_iot_job_target_info{" in text
    same_samples(exporter)


def test_flags_replace_the_config_section_and_outlast_a_reload(start: Any) -> None:
    exporter = start(
        "metrics:\n  deny: [aws_iot_job_status]\n",
        "--metrics.allow", "aws_iot_job_info,aws_iot_job_status",
        "--metrics.allow", "aws_iot_job_executions",
    )  # fmt: skip
    wanted = {"aws_iot_job_info", "aws_iot_job_status", "aws_iot_job_executions"}
    text = exporter.described()
    assert job_families(text) == wanted
    # A reload reads the file again; the flags still replace its metrics section.
    exporter.configure("metrics:\n  deny: [aws_iot_job_info]\n")
    status, body = exporter.reload()
    assert status == 200, body
    assert job_families(exporter.scrape()) == wanted


# --- docs/metrics.md states each family's series per job ------------------------------------


def series_per_job_column() -> dict[str, str]:
    """Family → its 'Series per job' cell in the job metrics table of docs/metrics.md."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## Job metrics", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    column = header.index("Series per job")
    cells = {}
    for row in rows[2:]:
        parts = [cell.strip() for cell in row.strip("|").split("|")]
        cells[parts[0].strip("`")] = parts[column]
    return cells


def test_every_family_documents_its_series_per_job_and_renders_within_it() -> None:
    cells = series_per_job_column()
    assert set(cells) == set(FAMILY_NAMES)
    jobs = [job("full"), job("done", "COMPLETED")]
    minimal = json.loads((ROOT / "tests" / "data" / "describe_job_minimal.json").read_text())
    jobs.append(parse_describe_job(minimal, 1.0))
    for family in FAMILIES:
        cell = cells[family.name]
        for snapshot in jobs:
            count = len(set(label_values for label_values, _ in family.samples(snapshot)))
            if cell == "1":
                assert count == 1, (family.name, count)
            elif cell == "0 or 1":
                assert count <= 1, (family.name, count)
            elif cell.startswith("5 "):
                assert count == 5, (family.name, count)
            elif cell.startswith("up to "):
                assert count <= int(cell.split()[2].rstrip(":")), (family.name, count)
            else:
                assert cell.startswith("per "), f"{family.name}: unexpected cell {cell!r}"


def test_configuration_doc_names_every_family_the_rules_read() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    paragraph = doc.split("Mind what the bundled rules", 1)[1].split("\n\n", 1)[0]
    rules = ROOT / "exporter" / "mixin" / "rules"
    used = set()
    for path in rules.glob("*.yml"):
        used |= set(re.findall(r"aws_iot_job_[a-z_]+", path.read_text())) & set(FAMILY_NAMES)
    assert used, "the rules read job families"
    mentioned = set(re.findall(r"`(aws_iot_job_[a-z_]+)`", paragraph.split("; keep those")[0]))
    assert mentioned == used
