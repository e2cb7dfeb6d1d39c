"""Discovery: the jobs ListJobs finds join a target's state; explicit ids AWS did not know
are looked for again. Jobs leave only by NotFound or retention, never by a listing."""

from __future__ import annotations

import logging
from typing import Protocol

from exporter.aws import ApiError, JobSummary
from exporter.config import CollectorSettings, Target
from exporter.eventpath import EventPath
from exporter.schedule import Clock
from exporter.shard import Shard
from exporter.targetstate import Cycle, TargetState, Tracked
from exporter.telemetry import Telemetry

log = logging.getLogger("exporter.collector")


class Lister(Protocol):
    async def list_jobs(self, params: dict[str, str]) -> list[JobSummary]: ...


class DiscoveryHost(Protocol):
    """What discovery uses of its target's poller."""

    target: Target
    settings: CollectorSettings
    telemetry: Telemetry
    clock: Clock
    shard: Shard
    state: TargetState
    events: EventPath
    # The cycle a discovery that ends now counts in.
    cycle: Cycle

    @property
    def source(self) -> Lister: ...
    def expired_at(self, status: str | None, ended_at: float | None, now: float) -> bool: ...
    def record_error(
        self, outcome: str, operation: str, message: str, job_id: str | None = None
    ) -> None: ...
    def update_tracked(self) -> None: ...


async def discover(host: DiscoveryHost, cycle: Cycle) -> bool:
    """Add the jobs ListJobs finds; jobs leave only by NotFound or retention.

    False when ListJobs failed: the target then stays failed until a discovery succeeds.
    """
    discover = host.target.jobs.discover
    now = host.clock.time()
    for job_id in host.state.missing:
        host.state.jobs.setdefault(job_id, Tracked(explicit=True))
    host.state.missing.clear()
    if discover is None:
        return True
    try:
        summaries = await host.source.list_jobs(discover.list_jobs_params())
    except ApiError as exc:
        cycle.failures += 1
        host.state.discovery_failed = True
        host.record_error(exc.outcome, exc.operation, exc.detail)
        log.warning(
            "discovery failed target=%s outcome=%s error=%r",
            host.target.name,
            exc.outcome,
            exc.detail,
        )
        return False
    host.state.discovery_failed = False
    host.state.primed = True
    host.state.last_discovery = now
    listed = {s.job_id for s in summaries}
    # Forget expired jobs AWS no longer lists, so months of finished jobs do not pile up.
    host.state.expired &= listed | set(host.target.jobs.ids)
    host.state.invalid &= listed | set(host.target.jobs.ids)
    # A frozen job is never described again, so its deletion would go unseen: when a
    # listing without a status filter (the only filter a job can leave) no longer has
    # it, describe it once more. NotFound then drops it; otherwise it freezes again.
    if discover.status is None:
        for job_id, tracked in host.state.jobs.items():
            snapshot = tracked.snapshot
            if job_id not in listed and snapshot is not None and snapshot.frozen:
                host.state.recheck.add(job_id)
    added = 0
    for summary in summaries:
        job_id = summary.job_id
        if (
            job_id in host.state.jobs
            or job_id in host.state.invalid
            or not discover.matches(job_id)
        ):
            continue
        if not host.shard.owns(host.target, job_id):
            continue
        if host.expired_at(summary.status, summary.ended_at, now):
            continue
        if job_id in host.state.expired:
            continue
        host.state.jobs[job_id] = Tracked(explicit=False)
        # An id events named first is a job now: it no longer holds an unknown slot.
        host.events.forget_unknown(job_id)
        added += 1
    host.telemetry.discovery_succeeded(host.target.name, now)
    if added:
        log.info("discovered jobs target=%s added=%d", host.target.name, added)
        # Queued jobs show as pending now, not at the end of a long first cycle.
        host.update_tracked()
    return True


async def discover_in_background(host: DiscoveryHost) -> None:
    # A discovery may end in a later cycle than it began: it counts in that one.
    outcome = Cycle()
    try:
        listed = await discover(host, outcome)
    except Exception as exc:
        # A bug must cost one discovery, not the target's describes.
        log.exception("discovery crashed target=%s", host.target.name)
        host.record_error("error", "ListJobs", type(exc).__name__)
        host.state.discovery_failed = True
        outcome.failures += 1
        listed = False
    if not listed:
        # A failed discovery is tried again next cycle rather than a discovery interval
        # later, so a target recovers as soon as ListJobs works again.
        host.state.next_discovery = host.clock.time()
    host.cycle.failures += outcome.failures
