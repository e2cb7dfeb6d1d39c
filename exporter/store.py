"""Snapshots into pre-rendered exposition bytes per job and family; a scrape joins bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from exporter.config import Target
from exporter.executions import Exemplar, Histogram
from exporter.model import JobSnapshot
from exporter.safe import EXEMPLAR_CHARACTERS, exemplar_label_value
from exporter.table import FAMILIES, IDENTITY_LABELS, PARTIAL_FIELDS, Family
from exporter.telemetry import ACTIVE, FROZEN

JobKey = tuple[str, str]  # (target name, job id)
_SNAPSHOT_FIELDS = tuple(f.name for f in dataclasses.fields(JobSnapshot))
_PARTIAL_FIELDS = frozenset(PARTIAL_FIELDS)
# Active jobs are joined in this many buckets, so that one job's change re-joins (and
# re-compresses for gzip) a sixteenth of the active text. More buckets make more
# segments per family, which cost every scrape a little; 16 keeps a change at 10,000
# jobs (about 1,000 active) under a quarter of a MiB of text.
ACTIVE_BUCKETS = 16


def _bucket(key: JobKey) -> int:
    return zlib.crc32(f"{key[0]}\0{key[1]}".encode()) % ACTIVE_BUCKETS


def _bucket_name(bucket: int) -> str:
    return f"{ACTIVE}-{bucket}"


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


def _exemplar(exemplar: Exemplar | None) -> str:
    """An OpenMetrics exemplar: the thing and execution behind a bucket, never a label."""
    if exemplar is None:
        return ""
    # OpenMetrics allows 128 characters of label names and values in all; a scraper
    # drops a longer exemplar. The thing name is cut to fit, then the execution number
    # goes in if there is room left.
    name, length = exemplar_label_value(
        exemplar.thing_name, EXEMPLAR_CHARACTERS - len("thing_name")
    )
    room = EXEMPLAR_CHARACTERS - len("thing_name") - length
    labels = f'thing_name="{name}"'
    number = exemplar.execution_number
    if number is not None and len("execution_number") + len(str(number)) <= room:
        labels += f',execution_number="{number}"'
    value, at = format_value(exemplar.value), format_value(round(exemplar.at, 3))
    return f" # {{{labels}}} {value} {at}"


def _histogram_lines(
    family: Family, identity: str, histogram: Histogram | None, openmetrics: bool
) -> Iterator[str]:
    if histogram is None:
        return
    for le, count, exemplar in histogram.cumulative():
        tail = _exemplar(exemplar) if openmetrics else ""
        yield f'{family.name}_bucket{{{identity},le="{le}"}} {count}{tail}\n'
    yield f"{family.name}_sum{{{identity}}} {format_value(histogram.total)}\n"
    yield f"{family.name}_count{{{identity}}} {histogram.count}\n"


def _family_lines(
    family: Family, snapshot: JobSnapshot, identity: str, openmetrics: bool
) -> Iterator[str]:
    if family.histogram is not None:
        yield from _histogram_lines(family, identity, family.histogram(snapshot), openmetrics)
        return
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
        yield f"{family.name}{{{identity}{own}}} {format_value(value)}\n"


def _render(
    snapshot: JobSnapshot, identity: str, families: tuple[Family, ...], openmetrics: bool
) -> tuple[bytes, array[int]]:
    lines = []
    offsets = array("I", [0])
    size = 0
    for family in families:
        for text in _family_lines(family, snapshot, identity, openmetrics):
            line = text.encode()
            lines.append(line)
            size += len(line)
        offsets.append(size)
    return b"".join(lines), offsets


def render_job(
    snapshot: JobSnapshot, identity: str, families: tuple[Family, ...] = FAMILIES
) -> Rendered:
    """The job's lines, family after family, in one bytes with the offset of each family.

    One bytes and an array of offsets cost a tenth of a tuple of 32 small bytes objects,
    which at 10,000 jobs is most of the difference to the 10 KiB-per-job budget. A job
    whose histograms carry exemplars has a second rendering for OpenMetrics.
    """
    data, offsets = _render(snapshot, identity, families, openmetrics=False)
    om: bytes | None = None
    if any(f.histogram is not None and f.histogram(snapshot) is not None for f in families):
        om_data, om_offsets = _render(snapshot, identity, families, openmetrics=True)
        if om_data != data:
            return Rendered(data, offsets, om=om_data, om_offsets=om_offsets)
    return Rendered(data, offsets, om=om)


def _fields_changed(old: JobSnapshot, new: JobSnapshot) -> set[str]:
    """The snapshot fields whose values differ (identity first: most are the same object)."""
    changed = set()
    for name in _SNAPSHOT_FIELDS:
        a, b = getattr(old, name), getattr(new, name)
        if a is not b and a != b:
            changed.add(name)
    return changed


def rerender_job(
    old: Rendered,
    snapshot: JobSnapshot,
    identity: str,
    families: tuple[Family, ...],
    indices: set[int],
) -> Rendered:
    """`old` (unpacked) with the families at `indices` rendered again from `snapshot`: an
    execution event changes three families of a job, whose other lines (a line per thing
    target, say) stay as they are."""
    family_of = families
    order = sorted(indices)

    def splice(data: bytes, offsets: array[int], openmetrics: bool) -> tuple[bytes, array[int]]:
        # The kept bytes between changed families are copied as runs, and the offsets
        # after each changed family shift by its change in length.
        parts: list[bytes] = []
        out = array("I", offsets)
        position = shift = 0
        for n, i in enumerate(order):
            start, end = offsets[i], offsets[i + 1]
            text = "".join(_family_lines(family_of[i], snapshot, identity, openmetrics)).encode()
            parts.append(data[position:start])
            parts.append(text)
            position = end
            shift += len(text) - (end - start)
            if shift:
                stop = order[n + 1] + 1 if n + 1 < len(order) else len(out)
                for j in range(i + 1, stop):
                    out[j] += shift
        parts.append(data[position:])
        return b"".join(parts), out

    data, offsets = splice(old.data, old.offsets, False)
    om_base = (old.om, old.om_offsets) if old.om is not None and old.om_offsets else None
    om_data, om_offsets = splice(*(om_base or (old.data, old.offsets)), True)
    if om_data != data:
        return Rendered(data, offsets, om=om_data, om_offsets=om_offsets)
    return Rendered(data, offsets)


def _reads_of(families: tuple[Family, ...]) -> dict[str, tuple[int, ...]]:
    """Per field of PARTIAL_FIELDS, the indices of the families that read it."""
    return {
        name: tuple(i for i, f in enumerate(families) if name in f.reads) for name in PARTIAL_FIELDS
    }


def _changed_families(old: Rendered, new: Rendered, among: Iterable[int] | None = None) -> set[int]:
    """The families whose lines differ between two unpacked renderings of one job (of
    `among` only, when only those were rendered again)."""
    a, ao, b, bo = old.data, old.offsets, new.data, new.offsets
    indices = range(len(ao) - 1) if among is None else among
    return {i for i in indices if a[ao[i] : ao[i + 1]] != b[bo[i] : bo[i + 1]]}


def _header(family: Family, openmetrics: bool = False) -> bytes:
    """HELP and TYPE; OpenMetrics names a counter family without its `_total`."""
    help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    name = family.name
    if openmetrics and family.type == "counter":
        name = name.removesuffix("_total")
    return f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n".encode()


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
    # The OpenMetrics rendering, when it differs (exemplars), with its own offsets.
    om: bytes | None = None
    om_offsets: array[int] | None = None

    def pack(self) -> Rendered:
        om = zlib.compress(self.om, 1) if self.om is not None else None
        return Rendered(zlib.compress(self.data, 1), self.offsets, True, om, self.om_offsets)

    @property
    def text(self) -> bytes:
        return zlib.decompress(self.data) if self.packed else self.data

    def format(self, openmetrics: bool) -> tuple[bytes, array[int]]:
        """The text and offsets of one exposition format."""
        if openmetrics and self.om is not None and self.om_offsets is not None:
            return (zlib.decompress(self.om) if self.packed else self.om), self.om_offsets
        return self.text, self.offsets


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
    does. Frozen jobs (most of a large fleet) and active ones are joined separately, and
    the active jobs in ACTIVE_BUCKETS buckets by a hash of their key: a scrape after one
    job changed re-joins one bucket, and the server's gzip cache re-compresses only the
    families of that bucket whose bytes changed.
    """

    def __init__(self, families: tuple[Family, ...] = FAMILIES) -> None:
        self._families = families
        self._reads = _reads_of(families)
        self._headers = self._make_headers(families)
        self._rendered: dict[JobKey, Rendered] = {}
        self._snapshots: dict[JobKey, JobSnapshot] = {}
        # The identity labels each job was rendered with: a reload that changes them
        # renders the job whole.
        self._identities: dict[JobKey, str] = {}
        self._frozen: set[JobKey] = set()
        self._active: list[set[JobKey]] = [set() for _ in range(ACTIVE_BUCKETS)]
        self._versions = {FROZEN: 0, ACTIVE: 0}
        # The version of each part that is joined apart: the frozen tier and each bucket.
        self._part_versions: dict[str, int] = {FROZEN: 0}
        self._part_versions.update((_bucket_name(b), 0) for b in range(ACTIVE_BUCKETS))
        # Joined once per part version and format, a segment per family, never changed
        # after; a segment's version is a serial that changes only when its bytes do.
        self._joined: dict[tuple[str, bool], tuple[int, list[Segment]]] = {}
        # Families of a part to join again, per format; None: all of them.
        self._dirty: dict[tuple[str, bool], set[int] | None] = {}
        # Parts where some job has an OpenMetrics rendering of its own (exemplars).
        self._serial = 0
        self._segments: dict[bool, tuple[int, list[Segment]]] = {}

    @staticmethod
    def _make_headers(families: tuple[Family, ...]) -> dict[bool, list[Segment]]:
        """HELP and TYPE per family and format: a segment each, the same one where the
        formats agree (every family but counters), so the gzip cache keeps one copy."""
        text = [Segment(("header", i), 0, _header(f)) for i, f in enumerate(families)]
        om = [
            Segment(("header-om", i), 0, _header(f, True)) if f.type == "counter" else text[i]
            for i, f in enumerate(families)
        ]
        return {False: text, True: om}

    @property
    def version(self) -> int:
        """Changes whenever the body would change."""
        return self._versions[FROZEN] + self._versions[ACTIVE]

    def __len__(self) -> int:
        return len(self._snapshots)

    def get(self, key: JobKey) -> JobSnapshot | None:
        return self._snapshots.get(key)

    def job_keys(self) -> list[JobKey]:
        return list(self._snapshots)

    def _tier(self, key: JobKey) -> str:
        return FROZEN if key in self._frozen else ACTIVE

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
        identities: dict[JobKey, str] = {}
        for key, snapshot in self._snapshots.items():
            target = targets.get(key[0])
            if target is None:
                continue
            identities[key] = identity = _identity(target, key[1], snapshot)
            previous = done.get(key)
            if previous is not None and previous[0] is snapshot:
                rendered[key] = previous[1]
            else:
                rendered[key] = self._render(snapshot, identity, families)
        self._snapshots = {key: self._snapshots[key] for key in rendered}
        self._identities = identities
        self._frozen &= rendered.keys()
        for bucket in self._active:
            bucket.intersection_update(rendered.keys())
        self._rendered = rendered
        self._families = families
        self._reads = _reads_of(families)
        self._headers = self._make_headers(families)
        # Every part is joined afresh, its segments under new versions: the family
        # indexes changed, and the headers lead the frozen part.
        self._joined.clear()
        self._dirty.clear()
        for part in self._part_versions:
            self._part_versions[part] += 1
        for tier in self._versions:
            self._versions[tier] += 1

    def _changed(self, key: JobKey, tier: str, families: set[int] | None = None) -> None:
        self._versions[tier] += 1
        part = FROZEN if tier == FROZEN else _bucket_name(_bucket(key))
        self._part_versions[part] += 1
        for openmetrics in (False, True):
            dirty = self._dirty.get((part, openmetrics), set())
            self._dirty[(part, openmetrics)] = (
                None if families is None or dirty is None else dirty | families
            )

    def _place(self, key: JobKey, tier: str) -> None:
        if tier == FROZEN:
            self._frozen.add(key)
            self._active[_bucket(key)].discard(key)
        else:
            self._frozen.discard(key)
            self._active[_bucket(key)].add(key)

    def _rerender(
        self, key: JobKey, snapshot: JobSnapshot, identity: str
    ) -> tuple[Rendered, set[int]] | None:
        """The job's rendering when only PARTIAL_FIELDS changed (a sweep, an execution
        event, an end counted from it): those families alone, the rest kept. None: render
        it whole. With the rendering, the indices of the families rendered again."""
        old, before = self._rendered.get(key), self._snapshots.get(key)
        if old is None or before is None or old.packed or self._identities.get(key) != identity:
            return None
        changed = _fields_changed(before, snapshot)
        if not changed <= _PARTIAL_FIELDS:
            return None
        indices = self._readers(changed)
        return rerender_job(old, snapshot, identity, self._families, indices), indices

    def _readers(self, fields: set[str]) -> set[int]:
        """The indices of the families that read any of `fields`."""
        return {i for name in fields for i in self._reads.get(name, ())}

    def put(self, key: JobKey, snapshot: JobSnapshot, identity: str) -> None:
        # Rendered before anything is stored, so a snapshot that cannot be rendered
        # leaves the store as it was.
        partial = None if snapshot.frozen else self._rerender(key, snapshot, identity)
        if partial is None:
            rendered, among = self._render(snapshot, identity, self._families), None
        else:
            rendered, among = partial
        self._identities[key] = identity
        self._snapshots[key] = snapshot
        tier = FROZEN if snapshot.frozen else ACTIVE
        old = self._rendered.get(key)
        if old is not None and self._tier(key) == tier:
            if old == rendered:
                return
            # An active job that stays active: only the families whose lines changed
            # need joining again (a new count or timestamp touches a few of them).
            families = None if tier == FROZEN else _changed_families(old, rendered, among)
            self._rendered[key] = rendered
            self._changed(key, tier, families)
            return
        if old is not None:
            self._changed(key, self._tier(key))
        self._rendered[key] = rendered
        self._changed(key, tier)
        self._place(key, tier)

    def put_job(self, target: Target, job_id: str, snapshot: JobSnapshot) -> None:
        self.put((target.name, job_id), snapshot, _identity(target, job_id, snapshot))

    def remove(self, key: JobKey) -> None:
        self._snapshots.pop(key, None)
        self._identities.pop(key, None)
        if self._rendered.pop(key, None) is not None:
            self._changed(key, self._tier(key))
            self._frozen.discard(key)
            self._active[_bucket(key)].discard(key)

    def remove_target(self, target: str) -> None:
        for key in [k for k in self._snapshots if k[0] == target]:
            self.remove(key)

    def _join(self, part: str, keys: set[JobKey], openmetrics: bool) -> list[Segment]:
        """A segment per family: the part's jobs in one format."""
        version = self._part_versions[part]
        cache = (part, openmetrics)
        cached = self._joined.get(cache)
        if cached is not None and cached[0] == version:
            return cached[1]
        families = range(len(self._families))
        kind = f"{part}-om" if openmetrics else part
        old = cached[1] if cached is not None else [Segment((kind, i), -1, b"") for i in families]
        dirty = self._dirty.get(cache) if cached is not None else None
        fresh: dict[int, bytes | bytearray] = {}
        if part == FROZEN:
            # Job by job, so that one packed job at a time is unpacked: unpacking them all
            # first would hold the whole text twice at the peak, and the allocator keeps a
            # peak of small objects long after it is freed.
            frozen = [bytearray() for _ in families]
            for key in sorted(keys):
                text, offsets = self._rendered[key].format(openmetrics)
                view = memoryview(text)
                for i, buffer in enumerate(frozen):
                    buffer += view[offsets[i] : offsets[i + 1]]
            fresh = dict(enumerate(frozen))
        else:
            # Active jobs are not packed: one join per family is a third faster than
            # appending job by job, and this runs on the scrape after every change.
            texts = [self._rendered[k].format(openmetrics) for k in sorted(keys)]
            for i in families if dirty is None else sorted(dirty):
                fresh[i] = b"".join([text[o[i] : o[i + 1]] for text, o in texts])
        # A family whose bytes did not change keeps its segment: a job's change touches a
        # few of its families, and the gzip cache redoes only those. OpenMetrics takes the
        # text format's segment where the bytes agree (all but exemplars).
        text_segments = self._joined.get((part, False)) if openmetrics else None
        joined = list(old)
        for i, data in fresh.items():
            if text_segments is not None and text_segments[1][i].data == data:
                joined[i] = text_segments[1][i]
            elif old[i].version < 0 or old[i].data != data:
                self._serial += 1
                joined[i] = Segment((kind, i), self._serial, data)
        self._joined[cache] = (version, joined)
        self._dirty[cache] = set()
        return joined

    def segments(self, openmetrics: bool = False) -> list[Segment]:
        """The body as segments, family by family: its header, frozen jobs, active ones.

        A segment's key is (part, family index); its version changes when its bytes do.
        OpenMetrics differs from the text format in counter headers and exemplars only.
        """
        cached = self._segments.get(openmetrics)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        if openmetrics:
            self.segments(False)  # the text segments, which OpenMetrics shares
        frozen = self._join(FROZEN, self._frozen, openmetrics)
        buckets = [
            self._join(_bucket_name(b), keys, openmetrics) for b, keys in enumerate(self._active)
        ]
        out = []
        for i, segment in enumerate(frozen):
            out.append(self._headers[openmetrics][i])
            if segment.data:
                out.append(segment)
            out.extend(joined[i] for joined in buckets if joined[i].data)
        self._segments[openmetrics] = (self.version, out)
        return out

    def body(self, openmetrics: bool = False) -> bytes:
        """The job metrics as one text body, for callers that want bytes, not segments
        (the OTLP tests, the benchmarks). The server writes `segments()` one by one
        instead: joining would copy the whole body on every scrape."""
        return b"".join(segment.data for segment in self.segments(openmetrics))
