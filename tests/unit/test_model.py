"""model.py: pure parsing and derived values, exhaustively."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.model import (
    JobSnapshot,
    MalformedJob,
    account_of,
    parse_describe_job,
    parse_schedule_time,
    target_type,
)
from tests.support import ROOT


def full() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "tests/data/describe_job_full.json").read_text())
    return data


def test_full_response_reaches_every_field() -> None:
    snap = parse_describe_job(full(), 100.0)
    assert snap.job_id == "firmware-v2"
    assert snap.account_id == "123456789012"
    assert snap.executions == (
        ("queued", 40), ("in_progress", 25), ("succeeded", 180), ("failed", 12),
        ("rejected", 3), ("canceled", 1), ("removed", 2), ("timed_out", 4),
    )  # fmt: skip
    assert snap.executions_created == 267
    assert snap.processing_targets == 1
    assert snap.abort_criteria[0].threshold_percentage == 12.5
    assert snap.retry_criteria[1].failure_type == "TIMED_OUT"
    assert snap.scheduling_start == datetime(2026, 11, 20, 8, 0, tzinfo=UTC).timestamp()
    assert snap.maintenance_windows[0].start_timestamp is None
    assert snap.maintenance_windows[1].start_timestamp is not None
    assert len(snap.scheduled_rollouts) == 2
    assert snap.is_concurrent is True and not snap.frozen


def test_botocore_datetimes_and_epoch_numbers_agree() -> None:
    data = full()
    data["job"]["createdAt"] = datetime.fromtimestamp(1795600000, tz=UTC)
    assert parse_describe_job(data, 0).created_at == 1795600000.0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda j: j.pop("jobId"), "response.job.jobId: missing"),
        (lambda j: j.update(status=7), "response.job.status: expected a string"),
        (
            lambda j: j["jobProcessDetails"].update(numberOfFailedThings="12"),
            "response.job.jobProcessDetails.numberOfFailedThings: expected a non-negative integer",
        ),
        (lambda j: j.update(isConcurrent="yes"), "response.job.isConcurrent: expected a boolean"),
        (lambda j: j.update(targets="arn"), "response.job.targets: expected a list of strings"),
        (
            lambda j: j["abortConfig"].update(criteriaList={"a": 1}),
            "response.job.abortConfig.criteriaList: expected a list",
        ),
        (
            lambda j: j["schedulingConfig"].update(startTime="next tuesday"),
            "response.job.schedulingConfig.startTime: expected a date-time",
        ),
        (lambda j: j.update(createdAt=[1]), "response.job.createdAt: expected a timestamp"),
        (
            lambda j: j["jobExecutionsRolloutConfig"]["exponentialRate"].update(
                incrementFactor=float("inf")
            ),
            "incrementFactor: expected a finite number",
        ),
    ],
)
def test_malformed_fields_name_their_path(mutate: Any, message: str) -> None:
    data = full()
    mutate(data["job"])
    with pytest.raises(MalformedJob, match=message.replace("(", r"\(")):
        parse_describe_job(data, 0)


@pytest.mark.parametrize("body", [None, [], "job", {"job": None}, {"job": []}, {}])
def test_non_objects_are_malformed(body: Any) -> None:
    with pytest.raises(MalformedJob):
        parse_describe_job(body, 0)


def test_missing_optional_fields_stay_none() -> None:
    snap = parse_describe_job({"job": {"jobId": "x"}}, 0)
    assert snap.executions is None and snap.status is None and snap.rollout_rate_limit() is None


def snap(**kwargs: Any) -> JobSnapshot:
    return JobSnapshot(job_id="j", fetched_at=kwargs.pop("fetched_at", 0.0), **kwargs)


def counts(**states: int) -> tuple[tuple[str, int], ...]:
    return tuple(states.items())


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, None),
        ({"rollout_maximum_per_minute": 50}, 50.0),
        ({"rollout_base_rate_per_minute": 10}, 10.0),
        # 250 notified, an increase every 100: two increases.
        (
            {"rollout_base_rate_per_minute": 10, "rollout_increment_factor": 2.0,
             "rollout_notified_threshold": 100, "executions": counts(queued=50, succeeded=200)},
            40.0,
        ),
        # Capped at the maximum.
        (
            {"rollout_base_rate_per_minute": 10, "rollout_increment_factor": 2.0,
             "rollout_notified_threshold": 10, "rollout_maximum_per_minute": 35,
             "executions": counts(succeeded=1000)},
            35.0,
        ),
        # No maximum: AWS's ceiling of 1000 per minute, even after many increases.
        (
            {"rollout_base_rate_per_minute": 10, "rollout_increment_factor": 5.0,
             "rollout_notified_threshold": 1, "executions": counts(succeeded=10**6)},
            1000.0,
        ),
        # Succeeded criterion counts succeeded only.
        (
            {"rollout_base_rate_per_minute": 4, "rollout_increment_factor": 1.5,
             "rollout_succeeded_threshold": 10, "executions": counts(failed=100, succeeded=25)},
            9.0,
        ),
        # Base above the maximum is held at the maximum.
        ({"rollout_base_rate_per_minute": 100, "rollout_maximum_per_minute": 20}, 20.0),
    ],
)  # fmt: skip
def test_rollout_rate_limit(kwargs: dict[str, Any], expected: float | None) -> None:
    assert snap(**kwargs).rollout_rate_limit() == expected


def test_observed_rate_between_snapshots() -> None:
    first = snap(fetched_at=0, executions=counts(queued=10))
    assert first.with_observed_rate(None).observed_rate_per_minute is None
    second = snap(fetched_at=120, executions=counts(queued=10, succeeded=30))
    assert second.with_observed_rate(first).observed_rate_per_minute == 15.0
    # Things removed from a job do not make a negative rate.
    third = snap(fetched_at=180, executions=counts(queued=1))
    assert third.with_observed_rate(second).observed_rate_per_minute == 0.0
    # Without counts the previous rate is kept rather than invented.
    fourth = dataclasses.replace(snap(fetched_at=240), observed_rate_per_minute=None)
    assert (
        fourth.with_observed_rate(second.with_observed_rate(first)).observed_rate_per_minute == 15.0
    )


def test_canceled_job_with_running_executions_is_not_frozen() -> None:
    running = snap(status="CANCELED", is_concurrent=False, executions=counts(in_progress=3))
    assert not running.frozen
    queued = snap(status="CANCELED", is_concurrent=False, executions=counts(queued=1))
    assert not queued.frozen
    done = snap(status="CANCELED", is_concurrent=False, executions=counts(canceled=3))
    assert done.frozen


@pytest.mark.parametrize(
    ("status", "concurrent", "frozen"),
    [("COMPLETED", False, True), ("CANCELED", None, True), ("CANCELED", True, False),
     ("IN_PROGRESS", False, False), ("SCHEDULED", False, False),
     ("DELETION_IN_PROGRESS", False, False), ("SOMETHING_NEW", False, False)],
)  # fmt: skip
def test_frozen_only_when_terminal_and_not_concurrent(
    status: str, concurrent: bool | None, frozen: bool
) -> None:
    assert snap(status=status, is_concurrent=concurrent).frozen is frozen


def test_helpers() -> None:
    assert account_of("arn:aws:iot:us-east-1:123456789012:job/x") == "123456789012"
    assert account_of("garbage") == "" and account_of(None) == ""
    assert target_type("arn:aws:iot:us-east-1:1:thinggroup/g") == "thinggroup"
    assert target_type("not-an-arn") == "unknown"
    assert (
        parse_schedule_time("2026-01-31T14:30")
        == datetime(2026, 1, 31, 14, 30, tzinfo=UTC).timestamp()
    )
    assert parse_schedule_time("2026-01-31T14:30:00Z") is not None
    assert parse_schedule_time("cron(0 2 ? * SUN *)") is None


def test_text_that_cannot_be_encoded_is_malformed() -> None:
    data = full()
    data["job"]["reasonCode"] = "BAD\ud800"
    with pytest.raises(MalformedJob, match="reasonCode: not valid Unicode text"):
        parse_describe_job(data, 0)
    data = full()
    data["job"]["targets"] = ["arn:aws:iot:eu-west-1:1:thing/\udc00"]
    with pytest.raises(MalformedJob, match="targets: not valid Unicode text"):
        parse_describe_job(data, 0)


# Sunday 22 November 2026, 02:30 UTC: half an hour into a `cron(0 2 ? * SUN *)` window.
SUNDAY_0230 = datetime(2026, 11, 22, 2, 30, tzinfo=UTC).timestamp()
NEXT_SUNDAY_0200 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("start", "duration", "now", "next_start", "is_open"),
    [
        # Open for 120 minutes from 02:00: open at 02:30, the next start a week later.
        ("cron(0 2 ? * SUN *)", 120, SUNDAY_0230, NEXT_SUNDAY_0200, True),
        # Closed 20 minutes after its start.
        ("cron(0 2 ? * SUN *)", 20, SUNDAY_0230, NEXT_SUNDAY_0200, False),
        # The last instant of the window is outside it; its first is inside.
        ("cron(0 2 ? * SUN *)", 30, SUNDAY_0230, NEXT_SUNDAY_0200, False),
        ("cron(0 2 ? * SUN *)", 30, SUNDAY_0230 - 1800, SUNDAY_0230 - 1800, True),
        # Without a duration, no open state; the next start is known.
        ("cron(0 2 ? * SUN *)", None, SUNDAY_0230, NEXT_SUNDAY_0200, None),
        # Every half hour for 10 minutes.
        ("cron(0/30 * * * ? *)", 10, SUNDAY_0230 + 300, SUNDAY_0230 + 1800, True),
        ("cron(0/30 * * * ? *)", 10, SUNDAY_0230 + 900, SUNDAY_0230 + 1800, False),
        # A year that has passed: no next start, never open.
        ("cron(0 2 ? * SUN 2020)", 60, SUNDAY_0230, None, False),
        # A date-time start, as the API's older form.
        ("2026-11-22T02:00", 60, SUNDAY_0230, None, True),
        ("2026-11-29T02:00", 60, SUNDAY_0230, NEXT_SUNDAY_0200, False),
        # What cannot be read says nothing.
        ("cron(0 2 * * SUN *)", 60, SUNDAY_0230, None, None),
        ("cron(99 2 ? * SUN *)", 60, SUNDAY_0230, None, None),
        ("rate(1 day)", 60, SUNDAY_0230, None, None),
        ("", 60, SUNDAY_0230, None, None),
        ("cron(0 2 ? * SUN *)", 60, float("nan"), None, None),
        ("cron(0 2 ? * SUN *)", 60, 1e300, None, None),
        ("cron(0 2 ? * SUN *)", 10**12, SUNDAY_0230, NEXT_SUNDAY_0200, None),
    ],
)
def test_maintenance_window_next_start_and_open(
    start: str, duration: int | None, now: float, next_start: float | None, is_open: bool | None
) -> None:
    body = full()
    body["job"]["schedulingConfig"]["maintenanceWindows"] = [
        {"startTime": start, **({} if duration is None else {"durationInMinutes": duration})}
    ]
    (window,) = parse_describe_job(body, now).maintenance_windows
    assert window.next_start(now) == next_start
    assert window.open_at(now) is is_open
    # An open window closes its duration after the occurrence it opened with.
    closes = window.closes_at(now)
    if is_open:
        assert duration is not None and closes is not None
        assert now < closes <= now + duration * 60
        assert window.open_at(closes - 1) and not window.open_at(closes)
    else:
        assert closes is None
