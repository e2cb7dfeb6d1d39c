"""What tests share: clocks to drive the scheduler, polling with a deadline, free ports and
the processes a test starts."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "simulator" / "scenarios"


class FakeClock:
    """Wall and monotonic time that move only when advanced, or when sleep() is awaited: a
    scheduler on it runs hours of its schedule in milliseconds (exporter.collect.schedule.Clock).
    """

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


# --- polling with a deadline -----------------------------------------------------------------


async def until(
    check: Callable[[], Any], within: float = 20, what: str = "", interval: float = 0.05
) -> Any:
    """Polls `check` (a function or a coroutine function) until it returns something true,
    and returns that; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within:g} s: {what or check}"
        await asyncio.sleep(interval)


def wait(
    check: Callable[[], T | None],
    within: float = 30,
    what: str = "",
    interval: float = 0.1,
    ignoring: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """`until` for tests without an event loop: polls `check` until it returns something
    true and returns that. An exception of a type in `ignoring` (by default OSError: a
    server not listening yet, a log file not written yet) counts as not yet."""
    deadline = time.monotonic() + within
    last: BaseException | None = None
    while True:
        try:
            value = check()
        except ignoring as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            cause = f" (last: {last})" if last is not None else ""
            raise AssertionError(f"not within {within:g} s: {what or check}{cause}")
        time.sleep(interval)


# --- HTTP without an event loop ------------------------------------------------------------


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def http_get(url: str, within: float = 30) -> bytes:
    """The body of `url` once it answers 200: the server may still be starting."""

    def body() -> bytes | None:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bytes(response.read()) if response.status == 200 else None

    return wait(body, within, f"{url} to answer 200")


# --- ports and processes -------------------------------------------------------------------


def _ephemeral_ports() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


# Ports handed out for a server to bind later are drawn below the kernel's ephemeral range:
# a port found free with bind(0) comes from that range, where any outgoing connection of a
# parallel test may take it before the server binds.
_EPHEMERAL = _ephemeral_ports()
_LISTEN_PORTS = range(20000, max(20001, min(_EPHEMERAL.start, 32768)))
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now, on 127.0.0.1, for a server the test starts next.

    Drawn at random, and never twice in a process, so that parallel workers and the
    outgoing connections of other tests are unlikely to take it first.
    """
    for _ in range(200):
        port = random.choice(_LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError("no free port")


@contextmanager
def started(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    """A process for the block: when the block ends, a process still running is killed and
    its pipes closed, so a failing test leaves nothing behind."""
    with subprocess.Popen(argv, **popen) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def stop(process: subprocess.Popen[Any], within: float = 10, how: int = signal.SIGTERM) -> int:
    """Asks a process to stop (SIGTERM unless told otherwise) and returns its exit code; a
    process still running after `within` seconds is killed (its code is then -9)."""
    if process.poll() is None:
        process.send_signal(how)
    try:
        return process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
