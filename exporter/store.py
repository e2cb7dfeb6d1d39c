"""Snapshots into pre-rendered exposition bytes per job and family; a scrape joins bytes."""

from __future__ import annotations

import asyncio
import math
import time
import zlib
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exporter.config import Target
from exporter.metrics import FAMILIES, IDENTITY_LABELS, Family
from exporter.model import JobSnapshot

JobKey = tuple[str, str]  # (target name, job id)
STABLE, ACTIVE = "stable", "active"


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def identity_labels(
    target: str, region: str, account_id: str, job_id: str, static: Iterable[tuple[str, str]]
) -> str:
    """The labels every series of a job carries, rendered once (kube-state-metrics' wrapper)."""
    pairs = list(zip(IDENTITY_LABELS, (target, region, account_id, job_id), strict=True))
    pairs.extend(static)
    return ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs)


def _identity(target: Target, job_id: str, snapshot: JobSnapshot) -> str:
    return identity_labels(target.name, target.region, snapshot.account_id, job_id, target.labels)


def render_job(
    snapshot: JobSnapshot, identity: str, families: tuple[Family, ...] = FAMILIES
) -> Rendered:
    """The job's lines, family after family, in one bytes with the offset of each family.

    One bytes and an array of offsets cost a tenth of a tuple of 32 small bytes objects,
    which at 10,000 jobs is most of the difference to the 10 KiB-per-job budget.
    """
    lines = []
    offsets = array("I", [0])
    size = 0
    for family in families:
        seen: set[tuple[str, ...]] = set()
        for label_values, value in family.samples(snapshot):
            # Two criteria of one failure type would be two series with the same labels,
            # which Prometheus rejects as duplicates: the first one wins.
            if label_values in seen:
                continue
            seen.add(label_values)
            own = "".join(
                f',{name}="{escape_label_value(v)}"'
                for name, v in zip(family.labels, label_values, strict=True)
            )
            line = f"{family.name}{{{identity}{own}}} {format_value(value)}\n".encode()
            lines.append(line)
            size += len(line)
        offsets.append(size)
    return Rendered(b"".join(lines), offsets)


def _header(family: Family) -> bytes:
    help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    return f"# HELP {family.name} {help_text}\n# TYPE {family.name} {family.type}\n".encode()


@dataclass(frozen=True, slots=True)
class Rendered:
    """A job's exposition: family i is `text[offsets[i]:offsets[i + 1]]`.

    Frozen jobs keep their text compressed: once joined into the body it is read again
    only when the set of frozen jobs changes, and zlib holds it in a fifth of the space
    (at 10,000 jobs, most of a job's memory).
    """

    data: bytes
    offsets: array[int]
    packed: bool = False

    def pack(self) -> Rendered:
        return Rendered(zlib.compress(self.data, 1), self.offsets, packed=True)

    @property
    def text(self) -> bytes:
        return zlib.decompress(self.data) if self.packed else self.data


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of the body that changes as a unit; `version` changes whenever `data` does."""

    key: tuple[str, int]
    version: int
    data: bytes | bytearray


class MetricsStore:
    """The latest exposition of every job; re-rendered per job when its snapshot changes.

    The text format needs each family's samples together, so a job's bytes are kept per
    family and the body is joined family by family, as kube-state-metrics' MetricsStore
    does. Frozen jobs (most of a large fleet) and active ones are joined separately: a
    scrape after a collection cycle only re-joins the active part, and the server's gzip
    cache only re-compresses it.
    """

    def __init__(self, families: tuple[Family, ...] = FAMILIES) -> None:
        self._families = families
        self._headers = tuple(_header(f) for f in families)
        self._rendered: dict[JobKey, Rendered] = {}
        self._snapshots: dict[JobKey, JobSnapshot] = {}
        self._stable: set[JobKey] = set()
        self._versions = {STABLE: 0, ACTIVE: 0}
        # Joined once per version and never changed after: bytearrays, to build in place.
        self._joined: dict[str, tuple[int, list[bytearray]]] = {}

    @property
    def version(self) -> int:
        """Changes whenever the body would change."""
        return self._versions[STABLE] + self._versions[ACTIVE]

    def __len__(self) -> int:
        return len(self._snapshots)

    def get(self, key: JobKey) -> JobSnapshot | None:
        return self._snapshots.get(key)

    def job_keys(self) -> list[JobKey]:
        return list(self._snapshots)

    def _tier(self, key: JobKey) -> str:
        return STABLE if key in self._stable else ACTIVE

    @property
    def families(self) -> tuple[Family, ...]:
        """The families rendered: the metric table less those the configuration turns off."""
        return self._families

    @staticmethod
    def _render(snapshot: JobSnapshot, identity: str, families: tuple[Family, ...]) -> Rendered:
        rendered = render_job(snapshot, identity, families)
        # zlib output is deterministic, so packed renderings still compare equal.
        return rendered.pack() if snapshot.frozen else rendered

    async def select(
        self,
        families: tuple[Family, ...],
        targets: Mapping[str, Target],
        slice_seconds: float = 0.01,
    ) -> None:
        """Render every job again with another set of families, as a reload that changes
        `metrics.allow` or `metrics.deny` asks.

        At 10,000 jobs this is seconds of CPU, so it yields to the event loop every
        `slice_seconds`; scrapes meanwhile serve the old set whole. The swap at the end is
        synchronous and renders again whatever was put while it ran, so a scrape never
        sees a mix. Identity labels come from `targets` as in put_job; a job whose target
        is not there (one the reload removed) is dropped.
        """
        if families == self._families:
            return
        done: dict[JobKey, tuple[JobSnapshot, Rendered]] = {}
        deadline = time.monotonic() + slice_seconds
        for key in list(self._snapshots):
            snapshot, target = self._snapshots.get(key), targets.get(key[0])
            if snapshot is not None and target is not None:
                identity = _identity(target, key[1], snapshot)
                done[key] = (snapshot, self._render(snapshot, identity, families))
            if time.monotonic() >= deadline:
                await asyncio.sleep(0)
                deadline = time.monotonic() + slice_seconds
        rendered: dict[JobKey, Rendered] = {}
        for key, snapshot in self._snapshots.items():
            target = targets.get(key[0])
            if target is None:
                continue
            previous = done.get(key)
            if previous is not None and previous[0] is snapshot:
                rendered[key] = previous[1]
            else:
                identity = _identity(target, key[1], snapshot)
                rendered[key] = self._render(snapshot, identity, families)
        self._snapshots = {key: self._snapshots[key] for key in rendered}
        self._stable &= rendered.keys()
        self._rendered = rendered
        self._families = families
        self._headers = tuple(_header(f) for f in families)
        # Both tiers change: the headers lead the stable one, and a scrape's caches are
        # keyed by tier and family index.
        for tier in self._versions:
            self._versions[tier] += 1

    def put(self, key: JobKey, snapshot: JobSnapshot, identity: str) -> None:
        # Rendered before anything is stored, so a snapshot that cannot be rendered
        # leaves the store as it was.
        rendered = self._render(snapshot, identity, self._families)
        self._snapshots[key] = snapshot
        tier = STABLE if snapshot.frozen else ACTIVE
        old = self._rendered.get(key)
        if old is not None:
            if old == rendered and self._tier(key) == tier:
                return
            self._versions[self._tier(key)] += 1
        self._rendered[key] = rendered
        self._versions[tier] += 1
        if tier == STABLE:
            self._stable.add(key)
        else:
            self._stable.discard(key)

    def put_job(self, target: Target, job_id: str, snapshot: JobSnapshot) -> None:
        self.put((target.name, job_id), snapshot, _identity(target, job_id, snapshot))

    def remove(self, key: JobKey) -> None:
        self._snapshots.pop(key, None)
        if self._rendered.pop(key, None) is not None:
            self._versions[self._tier(key)] += 1
            self._stable.discard(key)

    def remove_target(self, target: str) -> None:
        for key in [k for k in self._snapshots if k[0] == target]:
            self.remove(key)

    def _join(self, tier: str) -> list[bytearray]:
        """One buffer per family: the tier's jobs, the family header leading the stable tier."""
        version = self._versions[tier]
        cached = self._joined.get(tier)
        if cached is not None and cached[0] == version:
            return cached[1]
        stable = tier == STABLE
        keys = sorted(k for k in self._rendered if (k in self._stable) == stable)
        # Job by job, so that one packed job at a time is unpacked: unpacking them all
        # first would hold the whole text twice at the peak, and the allocator keeps a
        # peak of small objects long after it is freed.
        parts = [bytearray(header if stable else b"") for header in self._headers]
        for key in keys:
            rendered = self._rendered[key]
            text, offsets = memoryview(rendered.text), rendered.offsets
            for i, part in enumerate(parts):
                part += text[offsets[i] : offsets[i + 1]]
        self._joined[tier] = (version, parts)
        return parts

    def segments(self) -> list[Segment]:
        """The body as segments, family by family: header and frozen jobs, then active ones."""
        stable, active = self._join(STABLE), self._join(ACTIVE)
        out = []
        for i in range(len(self._headers)):
            out.append(Segment((STABLE, i), self._versions[STABLE], stable[i]))
            if active[i]:
                out.append(Segment((ACTIVE, i), self._versions[ACTIVE], active[i]))
        return out

    def body(self) -> bytes:
        return b"".join(segment.data for segment in self.segments())
