"""The collector: every target of a config with its AWS client, poller, event path and
sweeps, in one event loop; budgets shared per account; reloads that keep what they can."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass

from exporter.aws import (
    ApiError,
    JobSource,
    JobSummary,
    PackageSource,
    classify,
    describe_exception,
)
from exporter.budget import Budgets
from exporter.collect.poller import SnapshotSink, TargetPoller
from exporter.collect.shard import ONE_SHARD, Shard
from exporter.collect.versions import PackageState, VersionPoller, VersionStore
from exporter.config import Config, Target
from exporter.executions import ExecutionSummary
from exporter.model import JobSnapshot
from exporter.packages import PACKAGE_OPERATIONS
from exporter.status import Status
from exporter.telemetry import Telemetry
from exporter.tracing import NOOP_TRACING, Tracing

log = logging.getLogger(__name__)

__all__ = ["Supervisor", "TargetPoller"]


@dataclass(slots=True)
class _Running:
    collector: TargetPoller
    task: asyncio.Task[None]
    versions: VersionPoller | None = None


class _NotConnected:
    """The source of a target whose client is not created yet: every call fails."""

    async def describe_job(self, job_id: str) -> JobSnapshot:
        raise ApiError("error", "DescribeJob", "no AWS client")

    async def list_jobs(self, params: dict[str, str]) -> list[JobSummary]:
        raise ApiError("error", "ListJobs", "no AWS client")

    async def list_executions(
        self, job_id: str, status: str, token: str | None = None
    ) -> tuple[list[ExecutionSummary], str | None, float | None]:
        raise ApiError("error", "ListJobExecutionsForJob", "no AWS client")


class Supervisor:
    """All targets of a config, each with its own client and poller, in one event loop."""

    def __init__(
        self,
        config: Config,
        store: SnapshotSink,
        telemetry: Telemetry,
        shard: Shard = ONE_SHARD,
        tracing: Tracing = NOOP_TRACING,
    ) -> None:
        self.config = config
        self.store = store
        self.telemetry = telemetry
        self.shard = shard
        self.tracing = tracing
        self._running: dict[str, _Running] = {}
        self._ready = False
        self._lock = asyncio.Lock()
        # One budget per account, region and operation, shared by the targets that spend it.
        self.budgets = Budgets(divisor=shard.total)
        # Devices per package version, beside the job metrics (versions.py).
        self.versions = VersionStore()
        self._package_sources: dict[str, PackageSource] = {}

    @property
    def targets(self) -> dict[str, TargetPoller]:
        """The running pollers by target name, in name order: what readiness and the
        status page read."""
        return {name: r.collector for name, r in sorted(self._running.items())}

    @property
    def ready(self) -> bool:
        """Every target has finished a cycle and has had one successful ListJobs discovery,
        or, for a target with explicit job ids only, one DescribeJob that AWS answered (the
        job, or not found).

        A target whose every call is denied keeps the replica unready. Once ready, always
        ready: a target added by a reload must not take a serving replica out of its
        Service while that target's first cycle runs.
        """
        if not self._ready:
            pollers = self.targets.values()
            self._ready = bool(pollers) and all(p.primed and p.cycles > 0 for p in pollers)
        return self._ready

    def status(self) -> Status:
        """Every target's status at this instant, for the status page."""
        targets = tuple(poller.status() for poller in self.targets.values())
        packages = tuple(
            line
            for _, running in sorted(self._running.items())
            if running.versions is not None and (line := running.versions.status_line())
        )
        return Status(
            generated_at=time.time(), ready=self.ready, targets=targets, packages=packages
        )

    async def start(self) -> None:
        await self.apply(self.config)

    async def apply(self, config: Config) -> None:
        """Switch to a new config; targets whose settings did not change keep running."""
        async with self._lock:
            wanted = {t.name: t for t in config.targets}
            # A new budget alone is applied in place: the buckets are shared and running
            # targets keep their clients, event consumers and schedule.
            rate = config.collector.requests_per_second
            budget_only = dataclasses.replace(config.collector, requests_per_second=0.0)
            settings_changed = budget_only != dataclasses.replace(
                self.config.collector, requests_per_second=0.0
            )
            self.budgets.set_rate(rate, ("DescribeJob", "ListJobs"))
            self.budgets.set_rate(
                config.collector.executions.requests_per_second, ("ListJobExecutionsForJob",)
            )
            self.budgets.set_rate(config.collector.packages.requests_per_second, PACKAGE_OPERATIONS)
            if not settings_changed:
                for running in self._running.values():
                    running.collector.set_budget(config.collector)
            for name in list(self._running):
                running = self._running[name]
                if name not in wanted or wanted[name] != running.collector.target:
                    await self._stop_target(name)
                    self.store.remove_target(name)
                    self.versions.remove_target(name)
                    if name not in wanted:
                        self.telemetry.drop_target(name)
                    log.info("target removed or changed target=%s", name)
            for name, target in wanted.items():
                previous = self._running.get(name)
                if previous is not None and not settings_changed:
                    continue
                if previous is not None:
                    await self._stop_target(name)
                await self._start_target(target, config, previous)
            self.config = config

    async def _start_target(
        self, target: Target, config: Config, previous: _Running | None
    ) -> None:
        collector = TargetPoller(
            target,
            config.collector,
            _NotConnected(),
            self.store,
            self.telemetry,
            self.shard,
            tracing=self.tracing,
            # A reload loses nothing: the new poller takes the old one's state.
            state=previous.collector.state if previous is not None else None,
        )
        versions = VersionPoller(
            target,
            config.collector.packages,
            lambda: self._package_sources.get(target.name),
            collector.snapshots,
            self.versions,
            self.telemetry,
            owns_packages=self.shard.owns(target, "\x00packages"),
            state=(
                previous.versions.state
                if previous is not None and previous.versions is not None
                else PackageState()
            ),
        )
        task = asyncio.create_task(
            self._serve_target(collector, versions), name=f"collector-{target.name}"
        )
        self._running[target.name] = _Running(collector, task, versions)

    async def _serve_target(self, collector: TargetPoller, versions: VersionPoller) -> None:
        """Runs a target's poller; a client that cannot be created is retried, not fatal."""
        target = collector.target
        while True:
            try:
                async with JobSource(
                    target, collector.settings, self.telemetry, self.tracing, self.budgets
                ) as source:
                    collector.source = source
                    queue = await source.event_queue()
                    rate = collector.settings.packages.requests_per_second
                    self._package_sources[target.name] = PackageSource(source, rate)
                    async with asyncio.TaskGroup() as group:
                        group.create_task(collector.run())
                        group.create_task(collector.sweeper.run())
                        group.create_task(versions.run())
                        if queue is not None:
                            self.telemetry.init_events(target.name)
                            consumer = collector.events.attach(queue)
                            group.create_task(collector.events.run(consumer))
            except Exception as exc:
                # An unknown profile or a broken credential source: this target waits
                # and tries again, the others go on.
                log.error(
                    "cannot create the AWS client target=%s error=%r",
                    target.name,
                    describe_exception(exc),
                )
                self.telemetry.cycle_failed(target.name)
                collector.record_error(classify(exc), "CreateClient", describe_exception(exc))
                collector.cycles += 1
            finally:
                collector.source = _NotConnected()
                self._package_sources.pop(target.name, None)
            await asyncio.sleep(collector.settings.interval)

    async def _stop_target(self, name: str) -> None:
        await self._stop([self._running.pop(name)])

    @staticmethod
    async def _stop(running: list[_Running]) -> None:
        # All at once, and with asyncio.wait rather than awaiting each task: a caller's
        # deadline (SIGTERM's 5 s) must be able to cancel this wait, which a suppressed
        # CancelledError around `await task` would swallow.
        for r in running:
            r.task.cancel()
        if running:
            await asyncio.wait([r.task for r in running])

    async def stop(self) -> None:
        async with self._lock:
            running = list(self._running.values())
            self._running.clear()
            await self._stop(running)
