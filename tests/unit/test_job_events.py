"""Job events on a fake clock: what an event says reaches the snapshot with no call, an
event older than the last describe changes nothing, and a job-level event is described
ahead of any number of execution marks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from exporter.collect.poller import TargetPoller
from exporter.events import JOB_EVENT_STATUS, parse_event
from exporter.model import JOB_STATUSES
from tests.support import FakeClock
from tests.unit.test_schedule import FakeSource, collector

EVENTS = (
    "    events: {sqs_queue_url: 'https://sqs.eu-west-1.amazonaws.com/123456789012/q', "
    "min_describe_interval: 5s}\n"
)


def job_event(job_id: str, operation: str, status: str, updated: float, **extra: Any) -> Any:
    """A job event as AWS's developer guide shows it ("Jobs events"): times in ms."""
    body = {
        "eventType": "JOB",
        "eventId": f"{job_id}-{operation}-{updated}",
        "timestamp": int(updated),
        "operation": operation,
        "jobId": job_id,
        "status": status,
        "targetSelection": "SNAPSHOT",
        "createdAt": int((updated - 3600) * 1000),
        "lastUpdatedAt": int(updated * 1000),
        **extra,
    }
    return parse_event(json.dumps(body))


async def described(jobs: dict[str, str]) -> tuple[FakeClock, FakeSource, TargetPoller]:
    clock = FakeClock()
    source = FakeSource(clock, jobs)
    poller = collector(clock, source, events=EVENTS)
    await poller.collect_once()
    source.calls.clear()
    return clock, source, poller


def test_every_job_event_status_is_a_describe_job_status() -> None:
    assert set(JOB_EVENT_STATUS.values()) <= set(JOB_STATUSES)


async def test_a_cancellation_shows_at_once_with_no_call() -> None:
    clock, source, poller = await described({"x": "IN_PROGRESS"})
    clock.advance(10)
    event = job_event("x", "cancellation_in_progress", "CANCELLATION_IN_PROGRESS", clock.time())
    assert poller.events.job_event(event)
    snapshot = poller.jobs["x"]
    assert snapshot is not None and snapshot.status == "CANCELED"
    assert 'job_id="x",status="CANCELED"} 1' in poller.store.body().decode()  # type: ignore[attr-defined]
    assert source.calls == []
    # ... and a describe confirms it, as a job-level mark.
    assert "x" in poller.events.marks


async def test_a_completed_event_carries_its_counts_and_time() -> None:
    clock, source, poller = await described({"x": "IN_PROGRESS"})
    clock.advance(10)
    counts = {
        "numberOfCanceledThings": 1,
        "numberOfRejectedThings": 2,
        "numberOfFailedThings": 3,
        "numberOfRemovedThings": 4,
        "numberOfSucceededThings": 5,
    }
    done = clock.time()
    event = job_event(
        "x", "completed", "COMPLETED", done, completedAt=int(done * 1000), jobProcessDetails=counts
    )
    poller.events.job_event(event)
    snapshot = poller.jobs["x"]
    assert snapshot is not None and snapshot.status == "COMPLETED"
    assert snapshot.completed_at == done
    # The describe gave queued and succeeded only: the event's five, queued now 0.
    assert dict(snapshot.executions or ()) == {
        "queued": 0,
        "succeeded": 5,
        "failed": 3,
        "rejected": 2,
        "canceled": 1,
        "removed": 4,
    }
    assert snapshot.frozen and source.calls == []


async def test_an_event_older_than_the_last_describe_changes_nothing() -> None:
    clock, _source, poller = await described({"x": "IN_PROGRESS"})
    before = poller.jobs["x"]
    assert before is not None
    stale = job_event("x", "canceled", "CANCELED", clock.time() - 30)
    poller.events.job_event(stale)
    assert poller.jobs["x"] is before


async def test_a_terminal_job_is_never_moved_back_by_an_event() -> None:
    clock, _source, poller = await described({"x": "IN_PROGRESS"})
    clock.advance(10)
    poller.events.job_event(
        job_event("x", "deletion_in_progress", "DELETION_IN_PROGRESS", clock.time())
    )
    deleting = poller.jobs["x"]
    assert deleting is not None and deleting.status == "DELETION_IN_PROGRESS"
    # A late cancellation event (delivery is in no order) does not undo the deletion.
    poller.events.job_event(job_event("x", "canceled", "CANCELED", clock.time()))
    assert poller.jobs["x"] is deleting


async def test_a_job_event_is_described_ahead_of_500_execution_marks() -> None:
    jobs = {f"busy-{i}": "IN_PROGRESS" for i in range(500)} | {"x": "IN_PROGRESS"}
    clock, source, poller = await described(jobs)
    clock.advance(10)
    for i in range(500):
        assert poller.job_changed(f"busy-{i}")
    poller.events.job_event(job_event("x", "canceled", "CANCELED", clock.time()))
    task = asyncio.create_task(poller.describe_dirty())
    try:
        for _ in range(20):
            await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert source.calls and source.calls[0][0] == "x", source.calls[:3]
    waits = poller.telemetry.events_describe_wait  # type: ignore[attr-defined]
    assert waits.labels("t", "job")._sum.get() == 0.0
    assert waits.labels("t", "execution")._sum.get() >= 0.0
