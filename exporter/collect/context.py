"""What the parts of one target's collection are given: a frozen context built once, and
the narrow protocols of the calls that cross between them.

The poller (poller.TargetPoller) builds the parts and hands each the context, the
target's state (state.TargetState) and a protocol of just the calls it makes: the event
path gets `JobCalls` (describe, amend, drop), discovery a `Lister` and two callbacks.
A part calls back only through its protocol and imports none of the others: the poller
answers the event path's `JobCalls`, and that call, not an import, is the one way control
goes back up. The imports show what each part needs, and the protocols what crosses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from exporter.aws import JobSummary
from exporter.collect.schedule import Clock
from exporter.collect.shard import Shard
from exporter.config import CollectorSettings, Target
from exporter.executions import ExecutionSummary
from exporter.model import TERMINAL_STATUSES, JobSnapshot
from exporter.telemetry import Telemetry
from exporter.tracing import NOOP_TRACING, Tracing


@dataclass(frozen=True, slots=True)
class TargetContext:
    """One target's collection: what every part reads and none changes. A reload that
    changes the budget makes a new one (poller.TargetPoller.set_budget)."""

    target: Target
    settings: CollectorSettings
    telemetry: Telemetry
    clock: Clock
    shard: Shard
    tracing: Tracing = NOOP_TRACING

    @property
    def name(self) -> str:
        return self.target.name

    def expired_at(self, status: str | None, ended_at: float | None, now: float) -> bool:
        """Whether a job that ended at `ended_at` is past terminal_job_retention at `now`."""
        if status not in TERMINAL_STATUSES or ended_at is None:
            return False
        return now - ended_at > self.settings.terminal_job_retention


class SnapshotSink(Protocol):
    """Where described jobs go (store.MetricsStore renders them; the scheduler never does)."""

    def put_job(self, target: Target, job_id: str, snapshot: JobSnapshot) -> None: ...
    def remove(self, key: tuple[str, str]) -> None: ...
    def remove_target(self, target: str) -> None: ...


class Lister(Protocol):
    async def list_jobs(self, params: dict[str, str]) -> list[JobSummary]: ...


class Source(Lister, Protocol):
    """One target's AWS calls (aws.JobSource)."""

    async def describe_job(self, job_id: str) -> JobSnapshot: ...
    async def list_executions(
        self, job_id: str, status: str, token: str | None = None
    ) -> tuple[list[ExecutionSummary], str | None, float | None]: ...


class JobCalls(Protocol):
    """The calls the event path makes on its target's jobs (poller.TargetPoller)."""

    def busy(self, job_id: str) -> bool:
        """Whether a describe of the job is under way."""
        ...

    async def spawn(
        self, job_id: str, tasks: list[asyncio.Task[None]], kind: str, from_cycle: bool = True
    ) -> None:
        """Describes the job in a task of its own (appended to `tasks`), as work of `kind`."""
        ...

    def amend(self, job_id: str, change: Callable[[JobSnapshot], JobSnapshot]) -> None:
        """Applies `change` to the job's latest snapshot and stores the result."""
        ...

    def drop(self, job_id: str) -> None:
        """The job is no longer followed: it leaves the state and the store."""
        ...
