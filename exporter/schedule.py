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


class EventMarks:
    """Jobs events marked changed: the oldest mark first, each job at most once per
    `min_interval`, however many events it gets.

    One entry per marked job (a dict and a heap of (due, marked, job id)); stale heap
    entries are dropped as they surface, and the times of past describes are pruned to
    those within `min_interval`, so the size follows the jobs, not the events.
    """

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._marked: dict[str, float] = {}
        self._heap: list[tuple[float, float, str]] = []
        self._described: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._marked)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._marked

    def mark(self, job_id: str, now: float) -> bool:
        """Marks the job changed at `now`; False when it is marked already."""
        if job_id in self._marked:
            return False
        self._marked[job_id] = now
        last = self._described.get(job_id)
        due = now if last is None else max(now, last + self.min_interval)
        heapq.heappush(self._heap, (due, now, job_id))
        return True

    def forget(self, job_id: str) -> None:
        self._marked.pop(job_id, None)

    def next(self, now: float, busy: Callable[[str], bool]) -> tuple[str | None, float | None]:
        """The job to describe now, or how long until one is due (None: nothing marked).

        A job `busy` says is being described keeps its place by mark time and is tried
        again BUSY_RETRY later.
        """
        while self._heap:
            due, marked, job_id = self._heap[0]
            if self._marked.get(job_id) != marked:
                heapq.heappop(self._heap)  # described or forgotten meanwhile
                continue
            if due > now:
                return None, due - now
            if busy(job_id):
                heapq.heapreplace(self._heap, (now + BUSY_RETRY, marked, job_id))
                continue
            heapq.heappop(self._heap)
            del self._marked[job_id]
            self._described[job_id] = now
            if len(self._described) > 2 * len(self._marked) + 1000:
                horizon = now - self.min_interval
                self._described = {j: t for j, t in self._described.items() if t > horizon}
            return job_id, None
        return None, None


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
