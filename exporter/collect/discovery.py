"""Discovery: the jobs ListJobs finds join a target's state; explicit ids AWS did not know
are looked for again. Jobs leave only by NotFound or retention, never by a listing."""

from __future__ import annotations

import logging
from collections.abc import Callable

from exporter.aws import ApiError
from exporter.collect.context import Lister, TargetContext
from exporter.collect.state import Cycle, TargetState, Tracked

log = logging.getLogger(__name__)


class Discovery:
    """One target's ListJobs: what it finds joins `state`.

    It is given the target's context and state, where to list (`lister`: the poller's
    source, which a client created later replaces), and two calls back: `forget_unknown`
    (an id only events named is a job now) and `added` (jobs joined: report them).
    """

    def __init__(
        self,
        context: TargetContext,
        state: TargetState,
        lister: Callable[[], Lister],
        forget_unknown: Callable[[str], bool],
        added: Callable[[], None],
    ) -> None:
        self.context = context
        self.state = state
        self.lister = lister
        self.forget_unknown = forget_unknown
        self.added = added

    async def run(self, cycle: Cycle) -> bool:
        """Add the jobs ListJobs finds; jobs leave only by NotFound or retention.

        False when ListJobs failed: the target then stays failed until a discovery succeeds.
        """
        context, state = self.context, self.state
        target = context.target
        discover = target.jobs.discover
        now = context.clock.time()
        for job_id in state.missing:
            state.jobs.setdefault(job_id, Tracked(explicit=True))
        state.missing.clear()
        if discover is None:
            return True
        try:
            summaries = await self.lister().list_jobs(discover.list_jobs_params())
        except ApiError as exc:
            cycle.failures += 1
            state.discovery_failed = True
            state.record_error(now, exc.outcome, exc.operation, exc.detail)
            log.warning(
                "discovery failed target=%s outcome=%s error=%r",
                target.name,
                exc.outcome,
                exc.detail,
            )
            return False
        state.discovery_failed = False
        state.primed = True
        state.last_discovery = now
        listed = {s.job_id for s in summaries}
        # Forget expired jobs AWS no longer lists, so months of finished jobs do not pile up.
        state.expired &= listed | set(target.jobs.ids)
        state.invalid &= listed | set(target.jobs.ids)
        # A frozen job is never described again, so its deletion would go unseen: when a
        # listing without a status filter (the only filter a job can leave) no longer has
        # it, describe it once more. NotFound then drops it; otherwise it freezes again.
        if discover.status is None:
            for job_id, tracked in state.jobs.items():
                snapshot = tracked.snapshot
                if job_id not in listed and snapshot is not None and snapshot.frozen:
                    state.recheck.add(job_id)
        added = 0
        for summary in summaries:
            job_id = summary.job_id
            if job_id in state.jobs or job_id in state.invalid or not discover.matches(job_id):
                continue
            if not context.shard.owns(target, job_id):
                continue
            if context.expired_at(summary.status, summary.ended_at, now):
                continue
            if job_id in state.expired:
                continue
            state.jobs[job_id] = Tracked(explicit=False)
            # An id events named first is a job now: it no longer holds an unknown slot.
            self.forget_unknown(job_id)
            added += 1
        context.telemetry.discovery_succeeded(target.name, now)
        if added:
            log.info("discovered jobs target=%s added=%d", target.name, added)
            # Queued jobs show as pending now, not at the end of a long first cycle.
            self.added()
        return True

    async def in_background(self) -> Cycle:
        """A discovery that may end in a later cycle than it began: its outcome, for the
        cycle it ends in. Never raises but for cancellation."""
        outcome = Cycle()
        state = self.state
        try:
            listed = await self.run(outcome)
        except Exception as exc:
            # A bug must cost one discovery, not the target's describes.
            log.exception("discovery crashed target=%s", self.context.name)
            state.record_error(self.context.clock.time(), "error", "ListJobs", type(exc).__name__)
            state.discovery_failed = True
            outcome.failures += 1
            listed = False
        if not listed:
            # A failed discovery is tried again next cycle rather than a discovery interval
            # later, so a target recovers as soon as ListJobs works again.
            state.next_discovery = self.context.clock.time()
        return outcome
