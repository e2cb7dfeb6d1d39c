"""What the source, the scheduler, the event consumers and the version poller report:
protocols selfmetrics implements.

The AWS source, the collector and the event consumers count calls, cycles, tracked jobs
and events through these narrow interfaces instead of writing Prometheus families, so
they never load the metric table; `selfmetrics.SelfMetrics` is the implementation, and
the vocabularies its label values come from (call outcomes, tracked states) are defined
here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

# The outcome class of an AWS call, as aws.classify returns it.
OUTCOMES = (
    "ok",
    "throttled",
    "not_found",
    "denied",
    "unavailable",
    "malformed",
    "invalid",
    "network",
    "error",
)
# What the collector knows of a tracked job: described and changing, described and
# terminal (frozen: never described again), or not described yet. The store's two tiers
# of rendered jobs are the first two.
ACTIVE, FROZEN, PENDING = "active", "frozen", "pending"
TRACKED_STATES = (ACTIVE, FROZEN, PENDING)
# Why a job id is not followed (jobs_dropped_total's reason): an event named it while
# events.max_unknown_jobs ids waited already, or AWS refused it as invalid.
DROP_REASONS = ("unknown_limit", "invalid")
# The classes of event marks (events_describe_wait_seconds' class): schedule.MARK_ORDER
# (job, execution, confirm), and the marks of ids only events named.
MARK_CLASSES = ("job", "execution", "confirm", "unknown")


class EventTelemetry(Protocol):
    """What a target's event consumer (events.EventConsumer) reports."""

    def event_received(self, target: str, event: str) -> None: ...
    def event_duplicate(self, target: str) -> None: ...
    def event_lag(self, target: str, seconds: float) -> None: ...
    def event_consumer_error(self, target: str) -> None: ...


class SourceTelemetry(Protocol):
    """What the AWS source (aws.JobSource) reports of each call."""

    def api_call(self, target: str, operation: str, outcome: str) -> None:
        """One attempt of `operation` ended with `outcome` (one of OUTCOMES)."""

    def api_latency(self, target: str, operation: str, seconds: float) -> None:
        """A whole call, retries included, took `seconds`."""


class SchedulerTelemetry(Protocol):
    """What the scheduler (collector.Supervisor and TargetPoller) reports."""

    def init_target(self, target: str, discovery: bool) -> None:
        """A target starts: its series exist from now (discovery: it runs ListJobs)."""

    def drop_target(self, target: str) -> None: ...
    def init_events(self, target: str) -> None: ...
    def discovery_succeeded(self, target: str, at: float) -> None: ...

    def cycle_done(self, target: str, seconds: float, success: bool, at: float) -> None:
        """A collection cycle of `seconds` ended at `at`; success: no failed call."""

    def cycle_failed(self, target: str) -> None:
        """A cycle could not run (a crash, a client that cannot be created)."""

    def cycle_stretched(self, target: str, stretched: bool) -> None: ...
    def tracked_jobs(self, target: str, states: Mapping[str, int], missing: int) -> None: ...
    def event_describe(self, target: str) -> None: ...
    def event_describe_waited(self, target: str, kind: str, seconds: float) -> None: ...
    def unknown_jobs(self, target: str, count: int) -> None: ...
    def jobs_dropped(self, target: str, reason: str) -> None: ...
    def watch_events_driven(self, target: str, read: Callable[[], bool]) -> None:
        """`read` says whether events drive the target; it is called at most once a
        second, never per scrape. `events_driven` pushes the value instead."""

    def events_driven(self, target: str, driven: bool) -> None:
        """Events refresh the target's jobs now (else they are polled every interval)."""

    def sweep_page(self, target: str, executions: int) -> None:
        """An execution sweep read a page of `executions` summaries."""

    def watch_sweep_age(self, target: str, read: Callable[[], float]) -> None:
        """`read` is the age of the target's oldest sweep (0: none waits), a pass over its
        jobs; it is called at most once a second, never per scrape. `sweep_age` pushes
        the value instead."""

    def sweep_age(self, target: str, age: float, at: float) -> None:
        """The oldest sweep of a job waiting for one was `age` seconds old at Unix time
        `at` (0: none waits); the gauge grows from there until the next push."""

    def sweep_truncated(self, target: str) -> None:
        """A sweep stopped at max_executions_per_job: its job's counts are a lower bound."""

    def sweep_date_ignored(self, target: str) -> None:
        """An answer's Date was farther than max_clock_skew from the host's clock."""

    def api_totals(self, target: str) -> tuple[int, int, int]:
        """The target's call attempts so far: all, throttled, and failed (not ok)."""


class PackageTelemetry(Protocol):
    """What the version poller reports (collect/versions.py)."""

    def package_availability(self, target: str, available: bool) -> None: ...


class Telemetry(SourceTelemetry, SchedulerTelemetry, EventTelemetry, PackageTelemetry, Protocol):
    """All the scheduler hands on: its own reports, its sources' and its event consumers'."""
