"""What tests share: clocks to drive the scheduler, and polling with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class FakeClock:
    """Wall and monotonic time that move only when advanced, or when sleep() is awaited:
    a scheduler on it runs hours of its schedule in milliseconds (exporter.schedule.Clock)."""

    def __init__(self, wall: float = 1_700_000_000.0) -> None:
        self.wall = wall
        self.mono = 0.0
        self.slept: list[float] = []

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        # What is ready runs at the time it was started, then time jumps.
        self.slept.append(seconds)
        await asyncio.sleep(0)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


class WallClock:
    """Real monotonic time and sleeps, with a wall time a test sets (retention, ages)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def time(self) -> float:
        return self._now()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def until(check: Callable[[], object], within: float = 20, what: str = "") -> None:
    """Polls `check` until it is true, failing after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)
