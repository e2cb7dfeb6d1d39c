"""The software package catalog and each thing's `$package` shadow, with the index's lag.

The shadows are the truth; the index is what fleet indexing answers from: the same
shadows as they were `lag_seconds` of simulated time ago. Every change is queued with its
time and reaches the index once it is old enough, so the index trails the truth by
exactly the lag, whatever the speed.
"""

from __future__ import annotations

import random
import re
from collections import Counter, deque
from dataclasses import dataclass, field

from simulator.scenario import PackageSpec, PackageVersionSpec, Scenario

# arn:aws:iot:REGION:ACCOUNT:package/NAME/version/VERSION, as DescribeJob's
# destinationPackageVersions names them.
_VERSION_ARN = re.compile(
    r"^arn:aws[a-z-]*:iot:[a-z0-9-]*:\d*:package/(?P<package>[a-zA-Z0-9-_.]{1,128})"
    r"/version/(?P<version>[a-zA-Z0-9-_.]{1,64})$"
)


def parse_version_arn(value: str) -> tuple[str, str] | None:
    """(package, version) of a package version ARN, or None for anything else."""
    match = _VERSION_ARN.match(value)
    return (match["package"], match["version"]) if match else None


def version_field(package: str) -> str:
    """The index field of a package's reported version (AWS's custom field format)."""
    return f"shadow.name.$package.reported.{package}.version"


@dataclass(slots=True)
class _Reported:
    """Who reports which version of one package: by thing, and counted by version."""

    by_thing: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def set(self, thing: str, version: str | None) -> None:
        old = self.by_thing.get(thing)
        if old == version:
            return
        if old is not None:
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        if version is None:
            self.by_thing.pop(thing, None)
        else:
            self.by_thing[thing] = version
            self.counts[version] += 1


class Packages:
    """The catalog, the shadows (truth) and the index's lagging copy of them."""

    def __init__(self, scenario: Scenario, start: float) -> None:
        self.start = start
        self.specs: dict[str, PackageSpec] = {p.name: p for p in scenario.packages}
        self.versions: dict[str, dict[str, PackageVersionSpec]] = {
            p.name: {v.name: v for v in p.versions} for p in scenario.packages
        }
        self.shadows: dict[str, _Reported] = {name: _Reported() for name in self.specs}
        self.indexed: dict[str, _Reported] = {name: _Reported() for name in self.specs}
        # (simulated time, package, thing, version) not yet in the index, oldest first.
        self._pending: deque[tuple[float, str, str, str]] = deque()
        # Changes the index dropped while the shadow was not indexed are still in the
        # shadows; turning the source back on re-indexes from them (as AWS rebuilds).
        self.rng = random.Random(f"{scenario.seed}/packages")

    def install(self, groups: dict[str, dict[str, None]]) -> None:
        """The versions things report at the start, drawn by each group's fractions."""
        for spec in self.specs.values():
            for inst in spec.installed:
                for thing in groups.get(inst.group, {}):
                    u = self.rng.random()
                    for version, fraction in inst.versions:
                        if u < fraction:
                            self._set_now(spec.name, thing, version)
                            break
                        u -= fraction

    def _set_now(self, package: str, thing: str, version: str) -> None:
        self.shadows[package].set(thing, version)
        self.indexed[package].set(thing, version)

    def report(self, now: float, package: str, thing: str, version: str) -> bool:
        """A thing reports `version` of `package` in its shadow; False if not in the catalog."""
        if version not in self.versions.get(package, {}):
            return False
        if self.shadows[package].by_thing.get(thing) == version:
            return True
        self.shadows[package].set(thing, version)
        self._pending.append((now, package, thing, version))
        return True

    def sync(self, now: float, lag: float) -> None:
        """Bring the index up to the shadows as they were at `now - lag`."""
        cutoff = now - lag
        pending = self._pending
        while pending and pending[0][0] <= cutoff:
            _, package, thing, version = pending.popleft()
            self.indexed[package].set(thing, version)

    def reindex(self) -> None:
        """The index rebuilt from the shadows as they are (after a rebuild)."""
        self._pending.clear()
        for name, truth in self.shadows.items():
            index = self.indexed[name] = _Reported()
            for thing, version in truth.by_thing.items():
                index.set(thing, version)

    def pending(self) -> int:
        return len(self._pending)
