"""Job and execution events on a fake clock: what an event says reaches the snapshot with
no call, an event older than the last describe changes nothing, a job-level event is
described ahead of any number of execution marks, and an execution's end is counted once."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from exporter.collect.poller import TargetPoller
from exporter.collect.schedule import CONFIRM_MARK, EXECUTION_MARK
from exporter.events import JOB_EVENT_STATUS, parse_event
from exporter.model import EXECUTION_STATES, JOB_STATUSES, JobSnapshot, parse_describe_job
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


# --- an execution's end, counted from its event -------------------------------------------


def execution_event(job_id: str, thing: str, status: str, at: float) -> Any:
    """An execution event as AWS's developer guide shows it: a timestamp in whole seconds."""
    body = {
        "eventType": "JOB_EXECUTION",
        "eventId": f"{job_id}-{thing}-{status}-{at}",
        "timestamp": int(at),
        "operation": status.lower(),
        "jobId": job_id,
        "thingArn": f"arn:aws:iot:eu-west-1:123456789012:thing/{thing}",
        "status": status,
    }
    return parse_event(json.dumps(body))


def ended(poller: TargetPoller, event: Any) -> None:
    """What the consumer does with an execution's end (EventConsumer._apply)."""
    assert poller.events.job_changed(event.job_id, mark=False)
    poller.events.execution_ended(event)


def all_counts(**given: int) -> JobSnapshot:
    counts = {state: given.get(state, 0) for state, _ in EXECUTION_STATES}
    body = {
        "job": {
            "jobId": "x",
            "status": "IN_PROGRESS",
            "jobProcessDetails": {field: counts[state] for state, field in EXECUTION_STATES},
        }
    }
    return parse_describe_job(body, 1000.5)


async def test_an_execution_end_is_counted_at_once_and_its_describe_only_confirms() -> None:
    clock, source, poller = await described({"x": "IN_PROGRESS"})
    clock.advance(10)
    ended(poller, execution_event("x", "dev-1", "SUCCEEDED", clock.time()))
    snapshot = poller.jobs["x"]
    assert snapshot is not None
    # The describe said 1 queued, 1 succeeded: the device left the queue and succeeded.
    assert dict(snapshot.executions or ()) == {"queued": 0, "succeeded": 2}
    assert 'state="succeeded"} 2' in poller.store.body().decode()  # type: ignore[attr-defined]
    assert source.calls == []
    assert poller.events.marks._marked["x"].kind == CONFIRM_MARK


async def test_an_end_in_the_second_of_the_describe_waits_for_a_describe() -> None:
    """The answer may already hold an end from the same whole second, or an earlier one:
    counting it again is the error never made, so its describe comes as an execution mark."""
    _clock, source, poller = await described({"x": "IN_PROGRESS"})
    before = poller.jobs["x"]
    assert before is not None
    for at in (before.fetched_at, before.fetched_at - 30):
        ended(poller, execution_event("x", f"dev-{at}", "SUCCEEDED", at))
        assert poller.jobs["x"] is before
    assert poller.events.marks._marked["x"].kind == EXECUTION_MARK
    assert source.calls == []


def test_an_end_leaves_the_state_its_kind_of_end_most_often_leaves() -> None:
    snapshot = all_counts(queued=3, in_progress=2)
    after = 1002.0

    def moved(state: str, was: str | None = None, base: JobSnapshot = snapshot) -> dict[str, int]:
        changed = base.with_execution_end(state, after, was)
        return {s: n for s, n in (changed.executions or ()) if n}

    assert moved("succeeded") == {"queued": 3, "in_progress": 1, "succeeded": 1}
    assert moved("failed") == {"queued": 3, "in_progress": 1, "failed": 1}
    assert moved("timed_out") == {"queued": 3, "in_progress": 1, "timed_out": 1}
    assert moved("rejected") == {"queued": 2, "in_progress": 2, "rejected": 1}
    assert moved("canceled") == {"queued": 2, "in_progress": 2, "canceled": 1}
    assert moved("removed") == {"queued": 2, "in_progress": 2, "removed": 1}
    # A sweep saw it running: a rejection then leaves in progress.
    assert moved("rejected", "in_progress") == {"queued": 3, "in_progress": 1, "rejected": 1}
    # None left where it would come from: the other, and never below 0.
    idle = all_counts(queued=1)
    assert moved("succeeded", base=idle) == {"succeeded": 1}
    assert moved("succeeded", base=all_counts()) == {"succeeded": 1}


def test_an_end_is_never_counted_where_only_a_describe_may_say() -> None:
    snapshot = all_counts(in_progress=2)
    after = 1002.0
    # The answer's own second, or before it.
    assert snapshot.with_execution_end("succeeded", 1000.0) is snapshot
    assert snapshot.with_execution_end("succeeded", None) is snapshot
    # Not an end, or a state AWS left out of the answer.
    assert snapshot.with_execution_end("in_progress", after) is snapshot
    partial = replace(snapshot, executions=(("in_progress", 2),))
    assert partial.with_execution_end("succeeded", after) is partial
    # A terminal job's last executions say when it is frozen: a describe's to say.
    canceled = replace(snapshot, status="CANCELED")
    assert canceled.with_execution_end("succeeded", after) is canceled
    assert replace(snapshot, executions=None).with_execution_end("failed", after).executions is None


def test_an_end_the_answer_may_hold_by_aws_clock_is_not_counted() -> None:
    """A host clock behind AWS's: the answer's Date says the describe came after the end."""
    from exporter.model import answer_time

    snapshot = replace(all_counts(in_progress=2), answered_at=1003.0)  # host said 1000
    assert snapshot.with_execution_end("succeeded", 1002.0) is snapshot
    assert snapshot.with_execution_end("succeeded", 1003.0) is snapshot
    assert dict(snapshot.with_execution_end("succeeded", 1004.0).executions or ())["succeeded"] == 1

    def dated(date: object) -> object:
        return {"ResponseMetadata": {"HTTPHeaders": {"date": date}}}

    host = 1_800_000_000.0
    skew = 900.0  # collector.executions.max_clock_skew's default
    assert answer_time(dated("Fri, 15 Jan 2027 08:00:03 GMT"), host, skew) == host + 3
    # A Date far from the host's clock, or none a parser reads, is not believed.
    far = host + skew + 60
    for bad in ("Fri, 01 Jan 2100 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT", "x", 5, None):
        assert answer_time(dated(bad), host, skew) is None, bad
    assert answer_time({}, host, skew) is None
    assert answer_time(dated("Fri, 15 Jan 2027 08:00:03 GMT"), far, skew) is None
