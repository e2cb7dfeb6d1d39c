"""What a target's poller knows of its jobs, kept across reloads (TargetState), and the
tally of one collection cycle."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from exporter.collect.shard import Shard
from exporter.collect.sweep import SweepState
from exporter.config import Target
from exporter.events import ReasonCounts
from exporter.logs import sanitise
from exporter.model import JobSnapshot
from exporter.status import LastError
from exporter.telemetry import ACTIVE, FROZEN, PENDING


@dataclass(slots=True)
class Tracked:
    explicit: bool
    snapshot: JobSnapshot | None = None

    @property
    def state(self) -> str:
        """One of TRACKED_STATES: pending until described, then active or frozen."""
        if self.snapshot is None:
            return PENDING
        return FROZEN if self.snapshot.frozen else ACTIVE


@dataclass(slots=True)
class Cycle:
    failures: int = 0
    described: int = 0
    dropped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TargetState:
    """What a target's poller knows, kept across reloads: the supervisor owns it and hands
    it to the poller that replaces a target's old one, instead of a field-by-field copy.

    Every collection is bounded by the jobs AWS lists and the config names: terminal jobs
    past retention (`expired`), explicit ids AWS does not know (`missing`), ids AWS refuses
    (`invalid`) are forgotten once discovery no longer lists them.
    """

    jobs: dict[str, Tracked] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    invalid: set[str] = field(default_factory=set)
    # Frozen jobs discovery wants described once more (no longer listed: deleted?).
    recheck: set[str] = field(default_factory=set)
    reasons: ReasonCounts = field(default_factory=lambda: ReasonCounts(10))
    sweeps: SweepState = field(default_factory=SweepState)
    next_discovery: float = 0.0
    cycles: int = 0
    # Ready once AWS answered: a discovery, or for explicit ids only, a describe.
    primed: bool = False
    # Whether the last discovery failed: the target counts as failing until one succeeds,
    # however many describe-only cycles run in between.
    discovery_failed: bool = False
    last_success: bool | None = None
    last_discovery: float | None = None
    last_collection: float | None = None
    last_error: LastError | None = None
    # Each job's last describe failure, until a describe succeeds: the status page lists
    # failing jobs apart from jobs merely due. Bounded by the tracked jobs.
    job_errors: dict[str, LastError] = field(default_factory=dict)
    # (time, attempts, throttled, failed, events received, event describes) of the target,
    # one sample per cycle: the status page's window.
    calls: deque[tuple[float, int, int, int, int, int]] = field(default_factory=deque)

    def record_error(
        self, at: float, outcome: str, operation: str, message: str, job_id: str | None = None
    ) -> LastError:
        """The target's last error, its message made safe for the logs and the status page."""
        self.last_error = LastError(at, outcome, operation, sanitise(message), job_id)
        return self.last_error

    def adopt(self, target: Target, shard: Shard) -> TargetState:
        """This state for `target` as a reload changed it: jobs of another shard leave,
        the config's explicit ids are marked so, reasons restart with events turned on."""
        explicit = set(target.jobs.ids)
        self.jobs = {
            job_id: Tracked(job_id in explicit, tracked.snapshot)
            for job_id, tracked in self.jobs.items()
            if shard.owns(target, job_id)
        }  # fmt: skip
        for job_id in explicit:
            if shard.owns(target, job_id):
                self.jobs.setdefault(job_id, Tracked(explicit=True))
        self.job_errors = {j: e for j, e in self.job_errors.items() if j in self.jobs}
        self.missing &= explicit
        if target.events is None:
            self.reasons = ReasonCounts(10)
        else:
            self.reasons.max_reasons = target.events.max_reasons_per_job
        return self
