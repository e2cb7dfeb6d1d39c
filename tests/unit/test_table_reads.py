"""What a job learns beyond DescribeJob (a sweep, an execution event) re-renders only the
rows that read it: each row's `reads` is checked against what its lines really depend on,
and a partial rendering is byte for byte the full one."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import parse_config
from exporter.executions import TimeInState, parse_page, summarise
from exporter.model import JobSnapshot, parse_describe_job
from exporter.store import MetricsStore, _family_lines
from exporter.table import FAMILIES, PARTIAL_FIELDS
from tests.support import ROOT

DATA = ROOT / "tests" / "data"
NOW = 1795700000.0
TARGET = parse_config("targets: [{name: t, region: eu-west-1, jobs: {ids: [x]}}]").targets[0]
IDENTITY = 'target="t",job_id="x"'


def described() -> JobSnapshot:
    body = json.loads((DATA / "describe_job_full.json").read_text())
    body["job"]["isConcurrent"] = False
    # A job with many thing targets: the rows an execution event must not render again.
    body["job"]["targets"] = [f"arn:aws:iot:eu-west-1:123456789012:thing/t-{i}" for i in range(50)]
    return parse_describe_job(body, NOW)


def sweep_of(keep: int) -> object:
    pages = json.loads((DATA / "list_executions_full.json").read_text())
    summaries = {status: parse_page(page)[0][:keep] for status, page in pages.items()}
    return summarise(summaries, NOW, {"in_progress": 3600.0, "queued": 86400.0})


def times_of(runs: int) -> TimeInState:
    times = TimeInState()
    for i in range(runs):
        times = times.finished(f"meter-{i}", i, NOW - 400 - i, NOW - 100)
    return times


# Two values of each field beyond DescribeJob, different in what the rows show.
VARIANTS = {
    "sweep": (None, sweep_of(3)),
    "time_in_state": (None, times_of(2)),
    "execution_events": ((), (("FAILED", "checksum_mismatch", 2),)),
    # An execution's end counted from its event; and counts AWS left out, all of them.
    "executions": (
        (("queued", 3), ("in_progress", 2), ("succeeded", 0)),
        (("queued", 2), ("in_progress", 2), ("succeeded", 1)),
    ),
}
EXECUTIONS = (*VARIANTS["executions"], None, (("in_progress", 0), ("failed", 7)))


def test_every_field_beyond_describe_job_has_variants() -> None:
    assert set(VARIANTS) == set(PARTIAL_FIELDS)


@pytest.mark.parametrize("field", PARTIAL_FIELDS)
@pytest.mark.parametrize("openmetrics", [False, True])
def test_a_row_that_does_not_declare_a_field_does_not_read_it(
    field: str, openmetrics: bool
) -> None:
    base = described()
    a, b = (dataclasses.replace(base, **{field: v}) for v in VARIANTS[field])
    readers = set()
    for family in FAMILIES:
        lines_a = list(_family_lines(family, a, IDENTITY, openmetrics))
        lines_b = list(_family_lines(family, b, IDENTITY, openmetrics))
        if lines_a != lines_b:
            assert field in family.reads, f"{family.name} reads {field} without saying so"
            readers.add(family.name)
    # The variants do reach the rows: the check above could fail.
    assert readers


extras = st.fixed_dictionaries(
    {
        "sweep": st.sampled_from([None, sweep_of(1), sweep_of(3)]),
        "time_in_state": st.builds(times_of, st.integers(0, 3)),
        "execution_events": st.sampled_from(
            [(), (("FAILED", "checksum_mismatch", 1),), (("TIMED_OUT", "", 4),)]
        ),
        "executions": st.sampled_from(EXECUTIONS),
    }
)


@settings(max_examples=40, deadline=None)
@given(st.lists(extras, min_size=1, max_size=5))
def test_after_any_changes_beyond_describe_job_the_store_holds_the_full_rendering(
    changes: list[dict[str, object]],
) -> None:
    store = MetricsStore()
    snapshot = described()
    store.put_job(TARGET, "x", snapshot)
    for change in changes:
        snapshot = dataclasses.replace(snapshot, **change)
        store.put_job(TARGET, "x", snapshot)
        for openmetrics in (False, True):
            fresh = MetricsStore()
            fresh.put_job(TARGET, "x", snapshot)
            assert store.body(openmetrics) == fresh.body(openmetrics)


def test_a_change_beyond_describe_job_renders_only_the_rows_that_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MetricsStore()
    snapshot = described()
    store.put_job(TARGET, "x", snapshot)
    rendered: list[str] = []
    real = _family_lines

    def counting(family, *args, **kwargs):  # type: ignore[no-untyped-def]
        rendered.append(family.name)
        return real(family, *args, **kwargs)

    monkeypatch.setattr("exporter.store._family_lines", counting)
    store.put_job(
        TARGET, "x", dataclasses.replace(snapshot, execution_events=VARIANTS["execution_events"][1])
    )
    readers = {f.name for f in FAMILIES if "execution_events" in f.reads}
    assert rendered and set(rendered) == readers
    # A describe (fetched_at moves) renders the job whole.
    rendered.clear()
    store.put_job(TARGET, "x", dataclasses.replace(snapshot, fetched_at=NOW + 1))
    assert len(set(rendered)) == len(FAMILIES)
