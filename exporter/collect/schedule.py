"""Scheduling, pure: what is due, how a cycle spreads its calls, when it stretches, which
event-marked job goes next and what counts as stale; given state and a Clock.

No I/O and no task of its own: poller.py asks, and does what it is told. Time comes
from a Clock, so tests run a day of schedule on a fake one in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

# A job that is refreshed on schedule is stale once its data is older than this many times
# what the target means to achieve: one late round is normal, two mean trouble.
STALE_ROUNDS = 2
# A job an event marked while a describe of it was running is tried again this much later:
# that call may have read the job before the change.
BUSY_RETRY = 0.25


class Clock(Protocol):
    """Wall time (epoch seconds, for timestamps), monotonic time (for durations), sleep."""

    def time(self) -> float: ...
    def monotonic(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


# The classes of event marks, most urgent first: a job-level event (completed, canceled,
# ...); an execution's end the snapshot could not count by itself (the job not described
# yet, or the event in the second of its last describe: JobSnapshot.with_execution_end);
# and the describe that confirms ends already counted. Job-level marks are few (one per
# job and status change) and say the most; execution marks are the steady state of every
# rollout, and once counted from their events they only wait for AWS's word.
JOB_MARK, EXECUTION_MARK, CONFIRM_MARK = "job", "execution", "confirm"
MARK_ORDER = (JOB_MARK, EXECUTION_MARK, CONFIRM_MARK)
# Shares of the event describes while several classes wait (smooth weighted round-robin):
# a larger share for the more urgent, never the power to starve another. A queue writer
# can send any number of job events; each known job still counts once per min_interval.
MARK_WEIGHTS = {JOB_MARK: 8, EXECUTION_MARK: 2, CONFIRM_MARK: 1}
_RANK = {kind: rank for rank, kind in enumerate(reversed(MARK_ORDER))}


@dataclass(frozen=True, slots=True)
class Mark:
    """A marked job as EventMarks hands it out: its class and when it was first marked."""

    job_id: str
    kind: str
    marked_at: float


@dataclass(slots=True)
class _Entry:
    kind: str
    marked_at: float
    data_at: float
    # Which heap entries are this mark's: a re-mark (a job mark over an execution mark)
    # makes the old ones stale.
    serial: int


class EventMarks:
    """Jobs events marked changed: each job at most once per `min_interval`, the classes
    served in shares (MARK_WEIGHTS: job-level marks 8, execution 2, confirmations 1 of
    every 11 while all wait), and within a class the job whose data is oldest first.

    Oldest data first rather than oldest mark first: a job whose devices change every
    second is marked again right after each describe, so by mark time a job that changed
    once would wait behind every busy job marked before it; by data age it goes next, and
    a busy job waits one round of the others at most.

    One entry per marked job (a dict, a heap of marks not yet due and a heap per class of
    due ones); stale heap entries are dropped as they surface, and the times of past
    describes are pruned to those within `min_interval`, so the size follows the jobs, not
    the events.
    """

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._marked: dict[str, _Entry] = {}
        self._serial = 0
        # (due, serial, job id) of marks waiting for their min_interval.
        self._waiting: list[tuple[float, int, str]] = []
        # Per class, (data time, marked at, serial, job id) of due marks.
        self._ready: dict[str, list[tuple[float, float, int, str]]] = {
            kind: [] for kind in MARK_ORDER
        }
        self._described: dict[str, float] = {}
        # Each class's credit in the weighted round-robin (0 while nothing of it waits).
        self._credit = dict.fromkeys(MARK_ORDER, 0)

    def __len__(self) -> int:
        return len(self._marked)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._marked

    def mark(
        self,
        job_id: str,
        now: float,
        data_at: float | None = None,
        kind: str = EXECUTION_MARK,
    ) -> bool:
        """Marks the job changed at `now`; False when it is marked already (in this class
        or a more urgent one). `data_at` is when its data was read (None: `now`, first
        come first served)."""
        entry = self._marked.get(job_id)
        if entry is not None and _RANK[kind] <= _RANK[entry.kind]:
            return False
        self._serial += 1
        if entry is not None:
            # A mark moves to a more urgent class: it keeps its time.
            entry.kind, entry.serial = kind, self._serial
        else:
            entry = _Entry(kind, now, now if data_at is None else data_at, self._serial)
            self._marked[job_id] = entry
        last = self._described.get(job_id)
        due = now if last is None else max(now, last + self.min_interval)
        heapq.heappush(self._waiting, (due, entry.serial, job_id))
        self._compact()
        return True

    def forget(self, job_id: str) -> None:
        self._marked.pop(job_id, None)

    def _current(self, job_id: str, serial: int) -> _Entry | None:
        entry = self._marked.get(job_id)
        return entry if entry is not None and entry.serial == serial else None

    def _release(self, now: float) -> float | None:
        """Moves the marks due by `now` to their class's heap; the next due time else."""
        waiting = self._waiting
        while waiting:
            due, serial, job_id = waiting[0]
            entry = self._current(job_id, serial)
            if entry is None:
                heapq.heappop(waiting)
                continue
            if due > now:
                return due
            heapq.heappop(waiting)
            ready = self._ready[entry.kind]
            heapq.heappush(ready, (entry.data_at, entry.marked_at, serial, job_id))
        return None

    def _pick(self) -> str | None:
        """The class to serve next, by smooth weighted round-robin over the classes that
        wait: each gains its weight, the richest is served and pays the waiting total."""
        waiting = []
        for kind in MARK_ORDER:
            ready = self._ready[kind]
            while ready and self._current(ready[0][3], ready[0][2]) is None:
                heapq.heappop(ready)
            if ready:
                waiting.append(kind)
            else:
                self._credit[kind] = 0
        if not waiting:
            return None
        credit = self._credit
        for kind in waiting:
            credit[kind] += MARK_WEIGHTS[kind]
        # The most urgent class wins a tie: max() keeps the first of equals.
        kind = max(waiting, key=credit.__getitem__)
        credit[kind] -= sum(MARK_WEIGHTS[k] for k in waiting)
        return kind

    def next(self, now: float, busy: Callable[[str], bool]) -> tuple[Mark | None, float | None]:
        """The mark to describe now, or how long until one is due (None: nothing marked).

        A job `busy` says is being described keeps its mark and is tried again BUSY_RETRY
        later: that call may have read the job before the change.
        """
        while True:
            due = self._release(now)
            kind = self._pick()
            if kind is None:
                return None, (None if due is None else due - now)
            _, marked_at, serial, job_id = heapq.heappop(self._ready[kind])
            if busy(job_id):
                heapq.heappush(self._waiting, (now + BUSY_RETRY, serial, job_id))
                continue
            del self._marked[job_id]
            self._described[job_id] = now
            if len(self._described) > 2 * len(self._marked) + 1000:
                horizon = now - self.min_interval
                self._described = {j: t for j, t in self._described.items() if t > horizon}
            return Mark(job_id, kind, marked_at), None

    def _compact(self) -> None:
        """Rebuilds the heaps when stale entries outnumber the marks (re-marks that moved
        class, forgotten jobs): their size stays a small multiple of the marked jobs."""
        size = len(self._waiting) + sum(len(h) for h in self._ready.values())
        if size <= 4 * len(self._marked) + 1000:
            return
        self._waiting = [e for e in self._waiting if self._current(e[2], e[1]) is not None]
        heapq.heapify(self._waiting)
        for kind, ready in self._ready.items():
            kept = [e for e in ready if self._current(e[3], e[2]) is not None]
            heapq.heapify(kept)
            self._ready[kind] = kept


def refresh_due(
    known: Iterable[tuple[str, float]],
    now: float,
    interval: float,
    reconcile_interval: float | None,
    marked: Callable[[str], bool],
) -> list[str]:
    """Known active jobs (id, fetched at) to describe this cycle.

    Polling (`reconcile_interval` None): all of them. Event-driven: those events did not
    mark and whose data is a reconcile interval old, half an interval early so that a job
    is not left a whole extra cycle behind.
    """
    if reconcile_interval is None:
        return [job_id for job_id, _ in known]
    horizon = now - reconcile_interval + interval / 2
    return [job_id for job_id, at in known if not marked(job_id) and at <= horizon]


def spacing(spread: float, calls: int) -> float:
    """Seconds between the starts of `calls` spread evenly over `spread` (0: at once)."""
    return spread / calls if spread > 0 and calls else 0.0


def cycle_seconds(calls: int, rate: float) -> float:
    """The shortest time `calls` take at `rate` per second."""
    return calls / rate if rate > 0 else float("inf")


def hold(started: float, now: float, interval: float, request_timeout: float) -> float:
    """How long a cycle waits for its calls: to the end of its interval, and at least
    `request_timeout` for the calls it started last; a slower call ends in a later cycle."""
    return max(started + interval - now, request_timeout)


@dataclass(frozen=True, slots=True)
class Staleness:
    after_seconds: float
    # What the threshold follows: "interval" (polling) or "reconcile_interval".
    basis: str


def staleness(interval: float, reconcile_interval: float | None, driven: bool) -> Staleness:
    """Stale means older than twice what the target means to achieve: its interval when
    polling, its reconcile interval (plus the interval it is checked at) when events drive
    it, where a quiet job is described only at its reconcile."""
    if driven and reconcile_interval is not None:
        goal = max(interval, reconcile_interval + interval)
        return Staleness(STALE_ROUNDS * goal, "reconcile_interval")
    return Staleness(STALE_ROUNDS * interval, "interval")
