"""The store's incremental joins: after any sequence of changes the body is what a fresh store
with the same jobs renders, and a change to one active job re-joins only what it touched."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import parse_config
from exporter.model import JobSnapshot, parse_describe_job
from exporter.store import ACTIVE_BUCKETS, MetricsStore
from tests.support import ROOT

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())
TARGET = parse_config("targets: [{name: t, region: eu-west-1, jobs: {ids: [x]}}]").targets[0]
IDS = [f"job-{i}" for i in range(40)]


def job(job_id: str, status: str, succeeded: int) -> JobSnapshot:
    body = json.loads(json.dumps(FULL))
    body["job"].update(jobId=job_id, status=status, isConcurrent=False)
    body["job"]["jobProcessDetails"]["numberOfSucceededThings"] = succeeded
    if status == "COMPLETED":
        body["job"]["jobProcessDetails"].update(numberOfQueuedThings=0, numberOfInProgressThings=0)
    return parse_describe_job(body, 1.0)


operation = st.tuples(
    st.sampled_from(["put", "put", "put", "remove"]),
    st.sampled_from(IDS),
    st.sampled_from(["IN_PROGRESS", "IN_PROGRESS", "COMPLETED"]),
    st.integers(0, 3),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(operation, max_size=12), min_size=1, max_size=6))
def test_body_after_any_changes_equals_a_fresh_stores(rounds: list[list[tuple]]) -> None:
    store = MetricsStore()
    current: dict[str, JobSnapshot] = {}
    for changes in rounds:
        for op, job_id, status, succeeded in changes:
            if op == "remove":
                store.remove(("t", job_id))
                current.pop(job_id, None)
            else:
                snapshot = job(job_id, status, succeeded)
                store.put_job(TARGET, job_id, snapshot)
                current[job_id] = snapshot
        # A scrape between rounds, so that later rounds change joined, cached parts.
        fresh = MetricsStore()
        for job_id, snapshot in current.items():
            fresh.put_job(TARGET, job_id, snapshot)
        assert store.body() == fresh.body()


def test_one_active_change_rejoins_only_the_families_it_touched() -> None:
    store = MetricsStore()
    for i, job_id in enumerate(IDS):
        store.put_job(TARGET, job_id, job(job_id, ("IN_PROGRESS", "COMPLETED")[i % 2], 1))
    before = {s.key: s for s in store.segments()}
    parts = {key[0] for key in before} - {"header"}
    assert len(parts) == 1 + ACTIVE_BUCKETS  # every bucket has a job
    running = job("job-0", "IN_PROGRESS", 1)
    store.put_job(TARGET, "job-0", dataclasses.replace(running, executions=(("succeeded", 99),)))
    after = {s.key: s for s in store.segments()}
    changed = [key for key, s in after.items() if s is not before.get(key)]
    assert changed, "the change is not in the body"
    assert len({key[0] for key in changed}) == 1, "more than one bucket re-joined"
    assert len(changed) < len(store.families), "every family of the bucket re-joined"
    assert b"99" in b"".join(after[key].data for key in changed)
