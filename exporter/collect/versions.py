"""Devices per package version, per target, every `collector.packages.interval`: which
packages, which calls, what is kept when a call fails; and their pre-rendered exposition.

Beside the job poller, under a budget of its own (aws.PackageSource's buckets): one
GetStatistics for the size of the index, one GetBucketsAggregation per package, and for
each active job with a destination version two GetStatistics per thing group it targets
(at most `max_groups_per_job`; a group's size is read once a round however many jobs
target it) and one per THINGS_PER_QUERY things it targets directly (at most
`max_things_per_job`). A call that fails costs its own counts one interval: they keep
their last value (and its timestamp). An index or catalog that cannot answer (not
enabled, not ready, denied) is said once, in the log, on /status and in
aws_iot_jobs_exporter_packages_available, and is tried again after one interval, then
after a backoff that doubles up to an hour. A catalog that cannot list (ListPackages
denied or throttled) costs discovery only: the configured packages and the last listing
are counted still.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from exporter.aws import ApiError, NotAvailable
from exporter.collect.schedule import SYSTEM_CLOCK, Clock
from exporter.config import PackageSettings, Target
from exporter.logs import sanitise
from exporter.model import TERMINAL_STATUSES, JobSnapshot
from exporter.packages import (
    COUNTED_AT,
    GROUP_ADOPTION,
    GROUP_THINGS,
    JOB_ADOPTION,
    OTHER,
    PACKAGE_FAMILIES,
    UNREPORTED,
    VERSION_THINGS,
    Adoption,
    GroupProgress,
    PackageFamily,
    VersionCounts,
    escape_label_value,
    format_value,
    group_query,
    package_version,
    target_group,
    target_thing,
    things_queries,
    version_query,
)
from exporter.reader import cut
from exporter.telemetry import PackageTelemetry

log = logging.getLogger(__name__)

# The longest wait between two tries of an index or catalog that cannot answer.
MAX_BACKOFF_SECONDS = 3600.0
# ListPackages pages read per discovery (100 packages each): past it, the listing is cut.
MAX_CATALOG_PAGES = 100
# Destination versions of one job counted (AWS allows 25 per job).
MAX_VERSIONS_PER_JOB = 25


class PackageCalls(Protocol):
    """The calls the version poller makes (aws.PackageSource)."""

    @property
    def account_key(self) -> str: ...
    async def count(self, query: str) -> int: ...
    async def versions(self, package: str, max_versions: int) -> VersionCounts: ...
    async def list_packages(self, token: str | None = None) -> tuple[list[str], str | None]: ...


@dataclass(slots=True)
class PackageState:
    """What a target's package counts remember, across reloads too."""

    discovered: tuple[str, ...] = ()
    # Per package: its counts and when they were read.
    counts: dict[str, tuple[VersionCounts, float]] = field(default_factory=dict)
    # Things in the index, from the last count that succeeded.
    indexed: int | None = None
    adoption: dict[tuple[str, str, str], Adoption] = field(default_factory=dict)
    # None until the first try; False while the index or catalog cannot answer.
    available: bool | None = None
    reason: str = ""
    # Tries in a row that found the family not available: the backoff's exponent.
    unavailable_tries: int = 0
    last_error: str = ""
    # The outcome of the last ListPackages that failed, "" once one succeeds: said once.
    discovery_error: str = ""
    # Rounds completed: what tests and the status page wait on.
    rounds: int = 0


def _active(snapshot: JobSnapshot | None) -> bool:
    return snapshot is not None and snapshot.status not in TERMINAL_STATUSES


class VersionPoller:
    """Counts one target's packages and its active jobs' adoption, every interval."""

    def __init__(
        self,
        target: Target,
        settings: PackageSettings,
        source: Callable[[], PackageCalls | None],
        jobs: Callable[[], Mapping[str, JobSnapshot | None]],
        store: VersionStore,
        telemetry: PackageTelemetry,
        owns_packages: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        state: PackageState | None = None,
    ) -> None:
        self.target = target
        self.settings = settings
        self.source = source
        self.jobs = jobs
        self.store = store
        self.telemetry = telemetry
        # With shards, one replica counts a target's packages; each counts its own jobs.
        self.owns_packages = owns_packages
        self.clock = clock
        self.state = state if state is not None else PackageState()

    @property
    def enabled(self) -> bool:
        return self.settings.requests_per_second > 0 and self.target.packages is not None

    async def run(self) -> None:
        """Counts until cancelled; a failing round costs that round, never the loop."""
        if not self.enabled:
            return
        while True:
            try:
                await self.collect_once()
            except Exception:
                log.exception("package count crashed target=%s", self.target.name)
            await self.clock.sleep(self.wait())

    def status_line(self) -> str:
        """What /status says of this target's package counts ("" without packages)."""
        if not self.enabled:
            return ""
        state, name = self.state, self.target.name
        if state.available is None:
            return f"{name}: not counted yet"
        if state.available is False:
            return cut(sanitise(f"{name}: not available ({state.reason}); tried again later"), 300)
        line = f"{name}: {len(state.counts)} packages, {len(state.adoption)} job versions counted"
        if state.last_error:
            line += f"; last failure: {state.last_error}"
        return cut(sanitise(line), 300)

    def wait(self) -> float:
        """Seconds to the next round: the interval, or the backoff while not available."""
        # An index that is ready again at the next round (rebuilt after a configuration
        # change) costs one interval; one off for good is tried ever more rarely.
        tries = self.state.unavailable_tries
        return min(
            self.settings.interval * float(2 ** min(max(tries - 1, 0), 16)), MAX_BACKOFF_SECONDS
        )

    async def collect_once(self) -> None:
        source = self.source()
        if source is None:
            return
        # /status tells of this round's failures, not of one long fixed.
        self.state.last_error = ""
        try:
            if self.owns_packages:
                await self._count_versions(source)
            await self._count_adoption(source)
        except ApiError as exc:
            # Raised only for an index or catalog that cannot serve the family at all.
            self._not_available(exc)
        else:
            self._available()
        self.store.put(self.target, _account(source.account_key), self.state)
        self.state.rounds += 1

    def _available(self) -> None:
        if self.state.available is not True:
            if self.state.available is False:
                log.info("package counts available again target=%s", self.target.name)
            self.telemetry.package_availability(self.target.name, True)
        self.state.available, self.state.reason, self.state.unavailable_tries = True, "", 0

    def _not_available(self, exc: ApiError) -> None:
        state = self.state
        if state.available is not False:
            # Once per change: the index stays off for days, and says so each round.
            log.warning(
                "package counts not available target=%s operation=%s outcome=%s error=%r "
                "retry_in=%.0fs",
                self.target.name,
                exc.operation,
                exc.outcome,
                exc.detail,
                min(self.settings.interval, MAX_BACKOFF_SECONDS),
            )
            self.telemetry.package_availability(self.target.name, False)
        state.available, state.reason = False, f"{exc.operation}: {exc.detail}"
        state.unavailable_tries += 1

    def _failed(self, exc: ApiError, what: str) -> None:
        """A call that failed for this round only; not available is raised on."""
        if isinstance(exc, NotAvailable) or exc.outcome == "denied":
            raise exc
        self.state.last_error = f"{what}: {exc.operation} {exc.outcome}: {exc.detail}"
        log.debug("package count failed target=%s %s", self.target.name, self.state.last_error)

    async def _packages(self, source: PackageCalls) -> list[str]:
        """The configured packages, then the discovered ones, at most max_packages."""
        config = self.target.packages
        assert config is not None
        names = dict.fromkeys(config.names)
        if config.discover:
            try:
                self.state.discovered = tuple(await self._discover(source))
            except ApiError as exc:
                # Whatever the catalog answers (throttled, denied, not used in the
                # region), the configured names and the last listing are counted still.
                self._discovery_failed(exc)
            else:
                self.state.discovery_error = ""
            names.update(dict.fromkeys(n for n in self.state.discovered if config.matches(n)))
        return list(names)[: self.settings.max_packages]

    def _discovery_failed(self, exc: ApiError) -> None:
        state = self.state
        state.last_error = f"discovery: {exc.operation} {exc.outcome}: {exc.detail}"
        if exc.outcome != state.discovery_error:
            # Once per change: a denied ListPackages stays denied each round.
            log.warning(
                "package discovery failed target=%s operation=%s outcome=%s error=%r; "
                "counting the configured and last listed packages",
                self.target.name,
                exc.operation,
                exc.outcome,
                exc.detail,
            )
        state.discovery_error = exc.outcome

    async def _discover(self, source: PackageCalls) -> list[str]:
        found: list[str] = []
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_CATALOG_PAGES):
            page, token = await source.list_packages(token)
            found.extend(page)
            if not token or token in seen or len(found) >= self.settings.max_packages * 10:
                break
            seen.add(token)
        return found

    async def _count_versions(self, source: PackageCalls) -> None:
        state = self.state
        names = await self._packages(source)
        try:
            state.indexed = await source.count("*")
        except ApiError as exc:
            self._failed(exc, "index size")
        for name in names:
            try:
                counts = await source.versions(name, self.settings.max_versions_per_package)
            except NotAvailable as exc:
                if exc.code != "InvalidAggregationException":
                    raise
                # This package's version is not an indexed custom field (AWS allows a few
                # per account): the other packages are counted all the same.
                self.state.last_error = f"package {name}: version field not indexed"
                state.counts.pop(name, None)
                continue
            except ApiError as exc:
                self._failed(exc, f"package {name}")
                continue
            state.counts[name] = (counts, self.clock.time())
        for gone in state.counts.keys() - set(names):
            del state.counts[gone]

    async def _count_adoption(self, source: PackageCalls) -> None:
        state, settings = self.state, self.settings
        wanted: set[tuple[str, str, str]] = set()
        # A group's size is read once a round, however many jobs target it.
        sizes: dict[str, int] = {}
        for job_id, snapshot in sorted(self.jobs().items()):
            if snapshot is None or not _active(snapshot):
                continue
            versions = [v for v in map(package_version, snapshot.package_versions) if v]
            groups = list(dict.fromkeys(g for g in map(target_group, snapshot.targets) if g))
            things = list(dict.fromkeys(t for t in map(target_thing, snapshot.targets) if t))
            groups, things = (
                groups[: settings.max_groups_per_job],
                things[: settings.max_things_per_job],
            )
            if not groups and not things:
                continue
            for package, version in list(dict.fromkeys(versions))[:MAX_VERSIONS_PER_JOB]:
                key = (job_id, package, version)
                wanted.add(key)
                try:
                    adoption = await self._adoption(
                        source, job_id, package, version, groups, things, sizes
                    )
                    state.adoption[key] = replace(adoption, account_id=snapshot.account_id)
                except NotAvailable as exc:
                    if exc.code != "InvalidQueryException":
                        raise
                    # A query of this job's names the index refuses: this job's adoption
                    # is not counted, the other jobs' and the packages' are.
                    state.last_error = f"job {job_id}: query refused"
                    state.adoption.pop(key, None)
                except ApiError as exc:
                    self._failed(exc, f"job {job_id}")
        for gone in state.adoption.keys() - wanted:
            del state.adoption[gone]

    @staticmethod
    async def _adoption(
        source: PackageCalls,
        job_id: str,
        package: str,
        version: str,
        groups: list[str],
        things: list[str],
        sizes: dict[str, int],
    ) -> Adoption:
        on_version = version_query(package, version)
        progress = []
        for group in groups:
            if group not in sizes:
                sizes[group] = await source.count(group_query(group))
            on = await source.count(f"{group_query(group)} AND {on_version}")
            progress.append(GroupProgress(group, sizes[group], on))
        # Things the job names, a few a call: the index answers a query of a few terms.
        direct = 0
        for names in things_queries(things, on_version):
            direct += await source.count(names)
        total = sum(group.on_version for group in progress) + direct
        return Adoption(job_id, package, version, total, tuple(progress))


def _account(key: str) -> str:
    """The account id label: the target's account when it resolved to one."""
    return key if len(key) == 12 and key.isdigit() else ""


def _labels(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)


def render_state(
    target: Target, account_id: str, state: PackageState
) -> dict[PackageFamily, list[str]]:
    """A target's package series, family by family (pure: what the store keeps)."""
    lines: dict[PackageFamily, list[str]] = {family: [] for family in PACKAGE_FAMILIES}
    base = [("target", target.name), ("region", target.region), ("account_id", account_id)]
    static = list(target.labels)

    def add(
        family: PackageFamily,
        job: Adoption | None,
        own: tuple[str, ...],
        value: float,
    ) -> None:
        pairs = list(base)
        if job is not None:
            # A job's series carry its identity as the job's own series do.
            pairs[2] = ("account_id", job.account_id)
            pairs.append(("job_id", job.job_id))
        pairs += static
        pairs += list(zip(family.labels, own, strict=True))
        lines[family].append(f"{family.name}{{{_labels(pairs)}}} {format_value(value)}\n")

    for name in sorted(state.counts):
        counts, at = state.counts[name]
        for version, things in counts.versions:
            add(VERSION_THINGS, None, (name, version), things)
        add(VERSION_THINGS, None, (name, OTHER), counts.other)
        if state.indexed is not None:
            add(UNREPORTED, None, (name,), max(state.indexed - counts.reporting, 0))
        add(COUNTED_AT, None, (name,), round(at, 3))
    for key in sorted(state.adoption):
        adoption = state.adoption[key]
        _, package, version = key
        add(JOB_ADOPTION, adoption, (package, version), adoption.things)
        for group in adoption.groups:
            add(GROUP_THINGS, adoption, (group.group,), group.things)
            add(GROUP_ADOPTION, adoption, (group.group, package, version), group.on_version)
    # A group targeted for two versions of one job is one series of its size.
    lines[GROUP_THINGS] = list(dict.fromkeys(lines[GROUP_THINGS]))
    return lines


class VersionStore:
    """Every target's package series, rendered when its counts change; a scrape joins bytes."""

    def __init__(self) -> None:
        self._targets: dict[str, dict[PackageFamily, list[str]]] = {}
        self._body: bytes | None = b""
        self._states: dict[str, PackageState] = {}

    def put(self, target: Target, account_id: str, state: PackageState) -> None:
        rendered = render_state(target, account_id, state)
        self._states[target.name] = state
        if self._targets.get(target.name) != rendered:
            self._targets[target.name] = rendered
            self._body = None

    def remove_target(self, name: str) -> None:
        self._states.pop(name, None)
        if self._targets.pop(name, None) is not None:
            self._body = None

    def states(self) -> dict[str, PackageState]:
        return dict(sorted(self._states.items()))

    def body(self) -> bytes:
        """The package families in the text format (HELP and TYPE only where they have
        series); the same bytes serve OpenMetrics, gauges being alike in both."""
        if self._body is None:
            parts: list[str] = []
            for family in PACKAGE_FAMILIES:
                samples = [
                    line for name in sorted(self._targets) for line in self._targets[name][family]
                ]
                if samples:
                    parts.append(f"# HELP {family.name} {family.help}\n")
                    parts.append(f"# TYPE {family.name} {family.type}\n")
                    parts.extend(samples)
            self._body = "".join(parts).encode()
        return self._body
