"""The API budget: token buckets per account, region and operation, shared fairly.

AWS's quota is per account and region, so every target on an account spends from one
bucket. Who gets the next token is decided by start-time fair queueing on two levels:
first between the targets waiting (equal shares), then, within the target picked, between
its kinds of work (shares by WORK_WEIGHTS). A kind with a larger weight gets a larger
share while several are waiting; none is ever starved, and a kind or a target alone gets
the whole budget. Strict priority was the old rule: 25 jobs with continuous events then
starved every other target on the account, and the first cycle after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

# The kinds of work that spend a budget, and their shares while they all wait.
# - first: jobs never described: readiness waits on them, and a new job's first numbers.
# - event: a known job an event said changed: the freshness events exist for.
# - refresh: polling every interval, or the reconcile of event-driven targets.
# - unknown: a job id only an event named, not yet seen by discovery: anyone who can write
#   to the queue can name a million of them, so they get the smallest share (and one
#   concurrent call per target, collect/eventpath.py).
# - discovery: ListJobs (a bucket of its own, so its weight only matters between targets).
# - sweep: ListJobExecutionsForJob (a bucket of its own too).
FIRST, EVENT, REFRESH, UNKNOWN = "first", "event", "refresh", "unknown"
DISCOVERY, SWEEP = "discovery", "sweep"
WORK_WEIGHTS: dict[str, float] = {
    # 32 of 37.5 while events, reconciles and unknown ids wait too: a restart's first cycle
    # is within about 1.1 times jobs ÷ budget however many events flow (bench/triangle.py).
    FIRST: 32.0,
    # 4 of 5 against the reconciles: at 10,000 jobs the reconcile of 1,000 active jobs
    # always waits, and events at 2 of 3 left execution-level data 16 s old at p99.
    EVENT: 4.0,
    REFRESH: 1.0,
    UNKNOWN: 0.5,
    DISCOVERY: 1.0,
    SWEEP: 1.0,
}

# A token, give or take float rounding: a wait of 1e-17 s would not move the clock.
_ONE = 1.0 - 1e-9

# The kind of work of the calls made in this context (a task takes it from its creator).
WORK: ContextVar[str] = ContextVar("work", default=REFRESH)


@dataclass(slots=True)
class _Flow:
    """A queue of waiters with its virtual time: the share it has been served so far."""

    weight: float
    vtime: float = 0.0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def live(self) -> bool:
        """Drops waiters that gave up (cancelled); True while one is left."""
        while self.waiters and self.waiters[0].done():
            self.waiters.popleft()
        return bool(self.waiters)


@dataclass(slots=True)
class _Target:
    vtime: float = 0.0
    kinds: dict[str, _Flow] = field(default_factory=dict)
    # The virtual time of the last kind served: a kind that starts waiting begins here, so
    # an idle kind does not save up a burst of credit.
    vclock: float = 0.0

    def live(self) -> bool:
        return any([flow.live() for flow in self.kinds.values()])


class FairBucket:
    """At most `rate` calls per second with bursts of `burst`, handed out fairly.

    A caller with no one waiting takes a free token at once; otherwise it queues in its
    flow (target, kind) and one dispatcher task hands tokens out as they come. The state is
    bounded by the targets and kinds of the config: a flow holds only callers that wait,
    and a target has at most `concurrency` calls at once.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self.sleep = sleep
        self._tokens = self.burst
        self._updated = clock()
        self._targets: dict[str, _Target] = {}
        self._vclock = 0.0
        self._dispatcher: asyncio.Task[None] | None = None
        # Tokens handed out per (target, kind): what the fairness tests and the bench read.
        self.granted: dict[tuple[str, str], int] = {}

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def _flow(self, target: str, kind: str) -> tuple[_Target, _Flow]:
        node = self._targets.get(target)
        if node is None:
            node = self._targets[target] = _Target()
        flow = node.kinds.get(kind)
        if flow is None:
            flow = node.kinds[kind] = _Flow(WORK_WEIGHTS.get(kind, 1.0))
        # A target or kind that starts waiting starts at the current virtual time: being
        # idle saves up no credit for a burst later.
        if not node.live():
            node.vtime = max(node.vtime, self._vclock)
        if not flow.live():
            flow.vtime = max(flow.vtime, node.vclock)
        return node, flow

    def _serve(self, target: str, kind: str, node: _Target, flow: _Flow) -> None:
        self._vclock = node.vtime
        node.vclock = flow.vtime
        node.vtime += 1.0
        flow.vtime += 1.0 / flow.weight
        key = (target, kind)
        self.granted[key] = self.granted.get(key, 0) + 1

    def _waiting(self) -> bool:
        """Whether anyone waits: read from the queues themselves, never from a counter that
        a cancellation between two loop steps could leave wrong."""
        return any([node.live() for node in self._targets.values()])

    async def acquire(self, target: str = "", kind: str = REFRESH) -> None:
        waiting = self._waiting()
        node, flow = self._flow(target, kind)
        if not waiting:
            self._refill()
            if self._tokens >= _ONE:
                self._tokens = max(0.0, self._tokens - 1.0)
                self._serve(target, kind, node, flow)
                return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        flow.waiters.append(future)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted, then cancelled before its call: the token goes back.
                self._tokens = min(self.burst, self._tokens + 1.0)
                key = (target, kind)
                self.granted[key] = self.granted.get(key, 1) - 1
            else:
                future.cancel()  # no longer waiting: the queues drop it
            raise

    async def _dispatch(self) -> None:
        while self._waiting():
            self._refill()
            if self._tokens < _ONE:
                # Polled: tokens arrive with time, not with an event to wait on.
                await self.sleep((1.0 - self._tokens) / self.rate)
                continue
            picked = self._next()
            if picked is None:
                return
            target, kind, node, flow = picked
            future = flow.waiters.popleft()
            self._tokens = max(0.0, self._tokens - 1.0)
            self._serve(target, kind, node, flow)
            future.set_result(None)

    def _next(self) -> tuple[str, str, _Target, _Flow] | None:
        """The flow whose first waiter gets the next token: the least-served target, then
        its least-served kind (virtual time grows by 1/weight per token)."""
        best: tuple[str, _Target] | None = None
        for name, node in self._targets.items():
            if node.live() and (best is None or node.vtime < best[1].vtime):
                best = (name, node)
        if best is None:
            return None
        name, node = best
        chosen: tuple[str, _Flow] | None = None
        for kind, flow in node.kinds.items():
            if flow.live() and (chosen is None or flow.vtime < chosen[1].vtime):
                chosen = (kind, flow)
        assert chosen is not None
        return name, chosen[0], node, chosen[1]


class Budgets:
    """Fair buckets per account, region and operation, shared by the targets that spend them.

    AWS's quota is per account and region: two targets on one account (two discovery
    filters, say) must not each spend the whole of it. With shards, each replica gets
    its share (`divisor` is --total-shards).
    """

    def __init__(self, divisor: int = 1) -> None:
        self.divisor = max(divisor, 1)
        self._buckets: dict[tuple[str, str, str], FairBucket] = {}

    def set_rate(self, rate: float, operations: tuple[str, ...] | None = None) -> None:
        """A reload's new rate, for the buckets of every account (of `operations` only,
        when given)."""
        for (_, _, operation), bucket in self._buckets.items():
            if operations is None or operation in operations:
                bucket.rate = rate / self.divisor

    def bucket(self, account: str, region: str, operation: str, rate: float) -> FairBucket:
        key = (account, region, operation)
        bucket = self._buckets.get(key)
        if bucket is None:
            # A burst of two lets the bucket make up for a late wake-up of the event loop,
            # which a bucket of one token loses for good (measured: cycles 20 % over the
            # quota-bound minimum with one token, under 10 % with two).
            bucket = FairBucket(rate / self.divisor, burst=2)
            self._buckets[key] = bucket
        return bucket
