"""Blocking work off the event loop, in daemon threads that never hold the process at exit."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def run_detached(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a daemon thread of its own, awaited on the running loop.

    asyncio.to_thread uses the loop's default executor, whose threads asyncio.run and
    the interpreter both join on exit: a reload parsing a large file or a bcrypt check of
    a high cost would then hold SIGTERM past its deadline. A daemon thread is abandoned
    instead; the work it was doing is of no use to a process that is ending. Use it only
    for work without side effects that matter after exit (parsing, hashing).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = func(*args)
        except Exception as exc:
            error = exc
        except BaseException as exc:  # never raised in a worker; kept an error all the same
            error = RuntimeError(type(exc).__name__)
        # A closed loop raises RuntimeError: nobody is waiting for this any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=f"detached-{func.__name__}", daemon=True).start()
    return await future
