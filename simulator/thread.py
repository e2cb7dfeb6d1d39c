"""A simulator on its own thread and event loop, for synchronous tests and benchmarks."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from simulator.server import Simulator, start_simulator

T = TypeVar("T")


class SimulatorThread:
    """`with SimulatorThread("demo", speed=60) as sim: sim.url`.

    The simulator lives on a private loop; `call` runs a function there, which is the only
    safe way to touch `fleet` from the outside.
    """

    def __init__(
        self,
        scenario: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        jobs: int | None = None,
        no_quotas: bool = False,
        seed: int | None = None,
        speed: float | None = None,
    ) -> None:
        self._kwargs: dict[str, Any] = {
            "host": host,
            "port": port,
            "jobs": jobs,
            "no_quotas": no_quotas,
            "seed": seed,
            "speed": speed,
        }
        self._scenario = scenario
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sim: Simulator | None = None

    @property
    def simulator(self) -> Simulator:
        if self._sim is None:
            raise RuntimeError("simulator not started")
        return self._sim

    @property
    def url(self) -> str:
        return self.simulator.url

    @property
    def queue_url(self) -> str:
        return self.simulator.queue_url

    @property
    def port(self) -> int:
        return self.simulator.port

    def start(self) -> SimulatorThread:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="simulator", daemon=True)
        self._thread.start()
        try:
            self._sim = self._run(start_simulator(self._scenario, **self._kwargs))
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        if self._loop is None:
            raise RuntimeError("simulator not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def call(self, fn: Callable[[Simulator], T]) -> T:
        """Run `fn(simulator)` on the simulator's loop and return its result."""

        async def run() -> T:
            return fn(self.simulator)

        return self._run(run())

    def stop(self) -> None:
        """Stop listening: clients get connection refused; simulated time goes on."""
        self._run(self.simulator.stop_http())

    def restart(self) -> None:
        """Listen again on the same port, with the same fleet."""
        self._run(self.simulator.start_http())

    def close(self) -> None:
        if self._sim is not None and self._loop is not None:
            self._run(self._sim.close())
            self._sim = None
        self._shutdown_loop()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
