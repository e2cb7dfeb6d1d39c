"""Execution sweeps at scale: calls against the ideal, sweep age, a changed job's wait, CPU.

The real `Sweeper` (exporter/collect/sweep.py) sweeps a synthetic fleet: every job has the same
number of non-terminal executions, half QUEUED and half IN_PROGRESS, and a synthetic
`ExecutionSource` serves their pages of up to 250 summaries as slices of a pool built
once (10^9 summaries are never built). Every call spends a token from a real `FairBucket`
(burst 2, as `Budgets` makes it) at the default 2 calls/s, or at AWS's whole default
quota of 10/s. Both run on a virtual clock: asyncio's own event loop, whose time jumps to
its next timer when every task waits, so hours of sweeps take seconds and the times are
the schedule's, not this machine's.

A combination that fits the simulation budget (`--sweeps-budget` summaries read, and as
many job visits by the scheduler) runs two full rounds at 2/s and two at 10/s: the first
round is the first sweep of every job after a start, the second the steady state, where
the sweep age (`sweep_oldest_age_seconds`, read from the Sweeper as the gauge reads it) is
measured. A larger one runs the real Sweeper over the whole fleet at 2/s for a sample of
sweeps; its figures are the sample's calls and seconds per job times the jobs, its 10/s
time and its ages arithmetic. The summaries these runs serve carry no timestamps, the
cheapest content for the exporter: they measure calls and time, not CPU.

CPU is measured apart, in real time, on summaries with timestamps (most of them stuck, the
dearest case): one page's JSON as AWS sends it through botocore's parser, `parse_page` and
`summarise`, against `json.loads` of the same bytes.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import selectors
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from bench.report import Table, percentile
from exporter.budget import SWEEP, FairBucket
from exporter.collect.sweep import MIN_GAP_SECONDS, ExecutionSource, Sweeper, SweepState, next_job
from exporter.config import CollectorSettings, Executions
from exporter.executions import PAGE_SIZE, ExecutionSummary, parse_page, summarise
from exporter.model import JobSnapshot
from exporter.telemetry import Telemetry

SETTINGS = Executions()
RATE = SETTINGS.requests_per_second  # the exporter's default budget, calls/s
QUOTA = 10.0  # AWS's default ListJobExecutionsForJob quota per account and region
INTERVAL = CollectorSettings().interval  # no job is swept more often, unless changed
JOB_COUNTS = (100, 1_000, 10_000)
SIZES = (100, 1_000, 10_000, 100_000)  # non-terminal executions per job
TARGET = "production"
WALL0 = 1_700_000_000.0  # the virtual clock's wall time at 0
BURST = 2.0  # the burst of Budgets' buckets
# Ages spread over 0 to 8 days: most executions are stuck (thresholds 1 h and 24 h).
AGE_SPREAD = 8 * 86400
THING_ARN = "arn:aws:iot:eu-west-1:123456789012:thing/"
STATES = ("QUEUED", "IN_PROGRESS")


# --- the virtual clock -------------------------------------------------------------------


class _VirtualSelector(selectors.DefaultSelector):
    """A selector that never blocks: a wait for a timer moves the loop's time instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("virtual clock: every task waits and no timer is set")
            self.now += max(0.0, timeout)
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """asyncio's loop on virtual time: asyncio.sleep, asyncio.wait and FairBucket's
    dispatcher run on it unchanged, and time passes only while every task waits."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


class VirtualClock:
    """exporter.collect.schedule.Clock on a loop's time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def time(self) -> float:
        return WALL0 + self.loop.time()

    def monotonic(self) -> float:
        return self.loop.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def run_virtual(main: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=VirtualLoop) as runner:
        return runner.run(main())


# --- the synthetic fleet -----------------------------------------------------------------


class Pool:
    """Summaries built once per state and served as slices: page i of every job is the
    same objects, so a sweep of 100,000 executions allocates a list of references only.
    `timed`: with queuedAt and startedAt (ages, stuck lists, time in state), or without
    (each counts in +Inf only, the least work for the exporter)."""

    def __init__(self, timed: bool) -> None:
        self.timed = timed
        self.states: dict[str, list[ExecutionSummary]] = {state: [] for state in STATES}

    def page(self, status: str, start: int, end: int) -> list[ExecutionSummary]:
        items = self.states[status]
        while len(items) < end:
            items.append(self._summary(status, len(items)))
        return items[start:end]

    def _summary(self, status: str, i: int) -> ExecutionSummary:
        age = (i * 7919) % AGE_SPREAD + 1.0
        running = status == "IN_PROGRESS"
        return ExecutionSummary(
            thing_name=f"device-{i:06d}",
            status=status,
            queued_at=WALL0 - age - (600.0 if running else 0.0) if self.timed else None,
            started_at=WALL0 - age if running and self.timed else None,
            last_updated_at=WALL0 - age if self.timed else None,
            execution_number=1,
            retry_attempt=i % 4,
        )


class SyntheticSource:
    """ListJobExecutionsForJob over the fleet's counts: one token per call, a page of up
    to PAGE_SIZE summaries, the next token the offset of the next page."""

    def __init__(
        self,
        counts: Mapping[str, tuple[int, int]],
        pool: Pool,
        bucket: FairBucket | None,
        clock: VirtualClock,
    ) -> None:
        self.counts = counts
        self.pool = pool
        self.bucket = bucket
        self.clock = clock
        self.calls = 0

    async def list_executions(
        self, job_id: str, status: str, token: str | None = None
    ) -> tuple[list[ExecutionSummary], str | None, float | None]:
        if self.bucket is not None:
            await self.bucket.acquire(TARGET, SWEEP)
        self.calls += 1
        queued, running = self.counts[job_id]
        total = queued if status == "QUEUED" else running
        start = int(token) if token else 0
        end = min(start + PAGE_SIZE, total)
        page = self.pool.page(status, start, end)
        # The answer's Date, on the server's clock: the virtual one.
        return page, (str(end) if end < total else None), self.clock.time()


class _Telemetry:
    """The reports a Sweeper makes; it calls nothing else of Telemetry."""

    def __init__(self) -> None:
        self.age: Callable[[], float] = lambda: 0.0

    def sweep_page(self, target: str, executions: int) -> None:
        pass

    def sweep_truncated(self, target: str) -> None:
        pass

    def sweep_date_ignored(self, target: str) -> None:
        pass

    def api_call(self, target: str, operation: str, outcome: str) -> None:
        pass

    def watch_sweep_age(self, target: str, read: Callable[[], float]) -> None:
        self.age = read


def split(executions: int) -> tuple[int, int]:
    """Queued and in progress: half each."""
    return executions // 2, executions - executions // 2


def ideal_calls(queued: int, running: int) -> int:
    """The fewest calls that read a job: pages of PAGE_SIZE per state, none for an empty
    state, at most max_executions_per_job summaries per state."""
    cap = math.ceil(SETTINGS.max_executions_per_job / PAGE_SIZE)
    return min(math.ceil(queued / PAGE_SIZE), cap) + min(math.ceil(running / PAGE_SIZE), cap)


@dataclass(slots=True)
class Fleet:
    """Identical jobs, and the real Sweeper that sweeps them."""

    jobs: int
    queued: int
    running: int
    rate: float | None  # None: no budget (the CPU measurements)
    pool: Pool
    snapshots: dict[str, JobSnapshot] = field(default_factory=dict)
    sweeps: dict[str, int] = field(default_factory=dict)
    # Called as a sweep is published: before (the gauge still reads the job's last sweep)
    # and after the job's new sweep is stored.
    before: Callable[[str], None] = lambda job_id: None
    after: Callable[[str], None] = lambda job_id: None

    def build(self, clock: VirtualClock) -> tuple[Sweeper, SyntheticSource, _Telemetry]:
        executions = (("queued", self.queued), ("in_progress", self.running))
        self.snapshots = {
            f"job-{i:05d}": JobSnapshot(
                f"job-{i:05d}", WALL0, status="IN_PROGRESS", executions=executions
            )
            for i in range(self.jobs)
        }
        bucket = None
        if self.rate is not None:
            bucket = FairBucket(self.rate, burst=BURST, clock=clock.monotonic, sleep=clock.sleep)
        counts = dict.fromkeys(self.snapshots, (self.queued, self.running))
        source = SyntheticSource(counts, self.pool, bucket, clock)
        telemetry = _Telemetry()

        def amend(job_id: str, change: Callable[[JobSnapshot], JobSnapshot]) -> None:
            self.before(job_id)
            self.snapshots[job_id] = change(self.snapshots[job_id])
            self.sweeps[job_id] = self.sweeps.get(job_id, 0) + 1
            self.after(job_id)

        sweeper = Sweeper(
            TARGET,
            SETTINGS,
            INTERVAL,
            lambda: cast(ExecutionSource, source),
            lambda: self.snapshots,
            amend,
            cast(Telemetry, telemetry),
            clock,
        )
        return sweeper, source, telemetry


async def _until(sweeper: Sweeper, done: asyncio.Event) -> None:
    task = asyncio.create_task(sweeper.run())
    await done.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- calls and time per full sweep of the fleet ------------------------------------------


@dataclass(frozen=True, slots=True)
class Round:
    calls: int  # calls of the first full sweep of the fleet (of the sample)
    seconds: float  # virtual seconds it took
    age: float  # the largest sweep age in the second round; 0 when not measured


def _rounds(jobs: int, executions: int, rate: float, pool: Pool) -> Round:
    """Two full rounds of the real Sweeper: the first after a start, then the steady one."""

    async def main() -> Round:
        loop = asyncio.get_running_loop()
        fleet = Fleet(jobs, *split(executions), rate, pool)
        sweeper, source, telemetry = fleet.build(VirtualClock(loop))
        first: list[tuple[int, float]] = []
        ages: list[float] = []
        twice = [0]
        done = asyncio.Event()

        def before(job_id: str) -> None:
            # In the steady state, the gauge's value right before this sweep lowers it.
            if first:
                ages.append(telemetry.age())

        def after(job_id: str) -> None:
            if not first and len(fleet.sweeps) == jobs:
                first.append((source.calls, loop.time()))
            if fleet.sweeps[job_id] == 2:
                twice[0] += 1
                if twice[0] == jobs:
                    done.set()

        fleet.before, fleet.after = before, after
        await _until(sweeper, done)
        return Round(*first[0], max(ages))

    result: Round = run_virtual(main)
    return result


def _sample(jobs: int, executions: int, rate: float, sweeps: int, pool: Pool) -> Sample:
    """The first `sweeps` sweeps of the whole fleet's first round."""

    async def main() -> Sample:
        loop = asyncio.get_running_loop()
        fleet = Fleet(jobs, *split(executions), rate, pool)
        sweeper, source, _ = fleet.build(VirtualClock(loop))
        ended: list[tuple[int, float]] = []
        done = asyncio.Event()

        def after(job_id: str) -> None:
            if len(fleet.sweeps) in (1, sweeps) and len(ended) < 2:
                ended.append((source.calls, loop.time()))
            if len(ended) == 2:
                done.set()

        fleet.after = after
        await _until(sweeper, done)
        (calls, seconds), (last_calls, last_seconds) = ended
        return Sample(sweeps, calls, seconds, last_calls, last_seconds)

    result: Sample = run_virtual(main)
    return result


@dataclass(frozen=True, slots=True)
class Sample:
    """The first sweep of a sample, then the whole sample: calls and virtual seconds. The
    first sweep's first calls take the bucket's burst; the calls after it, its rate."""

    sweeps: int
    first_calls: int
    first_seconds: float
    calls: int
    seconds: float

    def fleet(self, jobs: int) -> tuple[float, float]:
        """Calls and seconds of a full sweep of `jobs` such jobs."""
        calls = self.calls / self.sweeps * jobs
        per_call = (self.seconds - self.first_seconds) / (self.calls - self.first_calls)
        return calls, self.first_seconds + (calls - self.first_calls) * per_call


@dataclass(frozen=True, slots=True)
class Combination:
    jobs: int
    executions: int
    ideal: int  # calls per full sweep of the fleet
    sampled: int  # jobs in the sample; 0 when two full rounds were simulated
    calls: float  # measured (sampled: per job, times the jobs)
    seconds: float  # a full sweep at RATE
    seconds_quota: float  # at QUOTA
    age: float  # steady-state sweep age at RATE
    age_quota: float
    real: float  # wall seconds this row took

    @property
    def how(self) -> str:
        if not self.sampled:
            return f"simulated: 2 rounds at {RATE:g}/s and at {QUOTA:g}/s"
        if self.sampled == self.jobs:
            return f"sampled: the first round at {RATE:g}/s"
        return f"sampled: {self.sampled:,} jobs at {RATE:g}/s, times {self.jobs // self.sampled:,}"


def steady_age(seconds: float) -> float:
    """A job waits a round, or the interval when a round is shorter."""
    return max(seconds, INTERVAL)


def combination(jobs: int, executions: int, budget: int, pool: Pool) -> Combination:
    per_job = ideal_calls(*split(executions))
    started = time.monotonic()
    # Two rounds at each rate: 4 sweeps of every job; each sweep visits every job.
    if 4 * jobs * max(executions, jobs) <= budget:
        slow = _rounds(jobs, executions, RATE, pool)
        fast = _rounds(jobs, executions, QUOTA, pool)
        return Combination(
            jobs,
            executions,
            per_job * jobs,
            0,
            slow.calls,
            slow.seconds,
            fast.seconds,
            slow.age,
            fast.age,
            time.monotonic() - started,
        )
    sweeps = max(2, min(jobs, budget // max(executions, jobs)))
    while jobs % sweeps:
        sweeps -= 1
    calls, seconds = _sample(jobs, executions, RATE, sweeps, pool).fleet(jobs)
    # The bucket's burst, then its rate: as the simulated rows at 10/s.
    quota = (calls - BURST) / QUOTA
    return Combination(
        jobs,
        executions,
        per_job * jobs,
        sweeps,
        calls,
        seconds,
        quota,
        steady_age(seconds),
        steady_age(quota),
        time.monotonic() - started,
    )


@dataclass(frozen=True, slots=True)
class Capped:
    queued: int
    running: int
    calls: int
    counted_queued: int
    counted_running: int
    truncated: bool


def capped(queued: int, running: int, pool: Pool) -> Capped:
    """One job past max_executions_per_job, swept once by the real Sweeper."""

    async def main() -> Capped:
        fleet = Fleet(1, queued, running, None, pool)
        sweeper, source, _ = fleet.build(VirtualClock(asyncio.get_running_loop()))
        sweep = await sweeper.sweep("job-00000")
        assert sweep is not None
        q, r = sweep.counts("queued"), sweep.counts("in_progress")
        assert q is not None and r is not None
        return Capped(queued, running, source.calls, q.by_age[-1], r.by_age[-1], sweep.truncated)

    result: Capped = run_virtual(main)
    return result


# --- a changed job while a backlog waits -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Priority:
    jobs: int
    executions: int
    round: float  # seconds a round of the fleet takes at RATE
    ideal: float  # the marked job's own calls ÷ RATE
    waits: list[float]  # mark to the end of the job's sweep, virtual seconds
    open: list[float]  # marks not served by the end of the window: seconds waited so far
    window: float
    real: float


def priority(
    jobs: int, executions: int, marks: int, max_sweeps: int, pool: Pool, seed: int = 21
) -> Priority:
    """The steady state of a fleet: every job swept once in the previous round, one after
    the other, so that each falls due in turn; jobs are marked changed at random moments,
    as a describe or an execution's terminal event marks them. The real Sweeper runs until
    every mark is served or it has made `max_sweeps` sweeps."""
    queued, running = split(executions)
    own = ideal_calls(queued, running) / RATE
    period = jobs * own
    rng = random.Random(seed)
    started = time.monotonic()

    async def main() -> tuple[list[float], list[float], float]:
        loop = asyncio.get_running_loop()
        fleet = Fleet(jobs, queued, running, RATE, pool)
        sweeper, _, _ = fleet.build(VirtualClock(loop))
        # The previous round: job k began its sweep at -period + k * own.
        sweeper.state.tried = {
            job_id: -period + k * own for k, job_id in enumerate(fleet.snapshots)
        }
        pending: dict[str, float] = {}
        waits: list[float] = []
        swept = [0]
        done = asyncio.Event()
        placed = asyncio.Event()

        def before(job_id: str) -> None:
            marked = pending.get(job_id)
            # The sweep that serves a mark is one that began after it.
            if marked is not None and sweeper.state.tried[job_id] >= marked:
                del pending[job_id]
                waits.append(loop.time() - marked)

        def after(job_id: str) -> None:
            swept[0] += 1
            if placed.is_set() and (not pending or swept[0] >= max_sweeps):
                done.set()

        async def marker() -> None:
            ids = list(fleet.snapshots)
            for _ in range(marks):
                # Apart enough that marks rarely wait behind each other when they are
                # served at once.
                await asyncio.sleep(rng.uniform(2.5, 4.5) * own)
                job_id = rng.choice(ids)
                pending.setdefault(job_id, loop.time())
                sweeper.mark(job_id)
            placed.set()

        fleet.before, fleet.after = before, after
        mark_task = asyncio.create_task(marker())
        await _until(sweeper, done)
        await mark_task
        now = loop.time()
        return waits, [now - at for at in pending.values()], now

    waits, still, window = run_virtual(main)
    return Priority(jobs, executions, period, own, waits, still, window, time.monotonic() - started)


# --- queue times observed once ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    jobs: int
    running: int  # in progress per job
    after: list[int]  # queued→started observations over the fleet after each round


def observed(jobs: int, running: int, rounds: int, pool: Pool) -> Observed:
    """Every job swept `rounds` times by the real Sweeper, the same executions in progress
    each time: each one's queue time should be observed once."""

    async def main() -> list[int]:
        fleet = Fleet(jobs, 0, running, None, pool)
        sweeper, _, _ = fleet.build(VirtualClock(asyncio.get_running_loop()))
        out = []
        for _ in range(rounds):
            for job_id in list(fleet.snapshots):
                await sweeper.sweep(job_id)
            out.append(
                sum(
                    s.time_in_state.queued.count
                    for s in fleet.snapshots.values()
                    if s.time_in_state is not None
                )
            )
        return out

    return Observed(jobs, running, run_virtual(main))


# --- CPU, real time ----------------------------------------------------------------------


def page_body(size: int = PAGE_SIZE) -> bytes:
    """A ListJobExecutionsForJob answer for IN_PROGRESS as AWS sends it: epoch seconds with
    milliseconds, a thing ARN per execution, a next token."""
    items = []
    for i in range(size):
        age = (i * 7919) % AGE_SPREAD + 0.123
        summary = {
            "status": "IN_PROGRESS",
            "queuedAt": round(WALL0 - age - 600.0, 3),
            "startedAt": round(WALL0 - age, 3),
            "lastUpdatedAt": round(WALL0 - age, 3),
            "executionNumber": 1,
            "retryAttempt": i % 4,
        }
        items.append({"thingArn": f"{THING_ARN}device-{i:06d}", "jobExecutionSummary": summary})
    return json.dumps({"executionSummaries": items, "nextToken": "x" * 120}).encode()


def botocore_parser() -> Callable[[bytes], Any]:
    """botocore's parser for the operation's protocol, with aws.py's timestamp parser:
    what every page costs before the exporter's own code sees it."""
    import botocore.parsers
    import botocore.session

    from exporter.aws import _lenient_timestamp

    model = botocore.session.get_session().get_service_model("iot")
    shape = model.operation_model("ListJobExecutionsForJob").output_shape
    factory = botocore.parsers.ResponseParserFactory()
    factory.set_parser_defaults(timestamp_parser=_lenient_timestamp)
    parser = factory.create_parser(model.metadata["protocol"])

    def parse(body: bytes) -> Any:
        return parser.parse({"status_code": 200, "headers": {}, "body": body}, shape)

    return parse


def cpu(work: Callable[[], object], repeats: int = 7, budget: float = 0.1) -> float:
    """Process CPU seconds of one call of `work`: the median of `repeats` batches."""
    work()
    start = time.process_time()
    work()
    n = max(1, int(budget / max(time.process_time() - start, 1e-6)))
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(n):
            work()
        samples.append((time.process_time() - start) / n)
    return statistics.median(samples)


@dataclass(frozen=True, slots=True)
class Cost:
    what: str
    per_page: float  # CPU seconds per page of PAGE_SIZE summaries


def page_costs(pool: Pool) -> list[Cost]:
    body = page_body()
    parse_boto = botocore_parser()
    parsed = json.loads(body)
    one = {"IN_PROGRESS": parse_page(parsed)[0]}
    thresholds = {"queued": SETTINGS.stuck_queued_after, "in_progress": 3600.0}
    never = dict.fromkeys(thresholds, math.inf)
    half = SETTINGS.max_executions_per_job // 2
    large = {state: pool.page(state, 0, half) for state in STATES}
    pages = 2 * half / PAGE_SIZE
    first, again = _sweep_costs(pool)
    return [
        Cost("json.loads of the page (baseline)", cpu(lambda: json.loads(body))),
        Cost("botocore's parse, aws.py's timestamps (before ours)", cpu(lambda: parse_boto(body))),
        Cost("parse_page", cpu(lambda: parse_page(parsed))),
        Cost("summarise, 1 page", cpu(lambda: summarise(one, WALL0, thresholds))),
        Cost("parse_page + summarise, 1 page",
             cpu(lambda: summarise({"IN_PROGRESS": parse_page(parsed)[0]}, WALL0, thresholds))),
        Cost("summarise, 400 pages (per page)",
             cpu(lambda: summarise(large, WALL0, thresholds), repeats=5) / pages),
        Cost("summarise, 400 pages, none stuck (per page)",
             cpu(lambda: summarise(large, WALL0, never), repeats=5) / pages),
        Cost("Sweeper.sweep, 400 pages, first sweep (per page)", first),
        Cost("Sweeper.sweep, 400 pages, next sweeps (per page)", again),
    ]  # fmt: skip


def _sweep_costs(pool: Pool, again: int = 3) -> tuple[float, float]:
    """Sweeper.sweep of one job of 100,000 executions without a budget, pages served as
    parsed summaries, CPU per page: the first sweep observes the queue time of every
    in-progress execution it sees; the next ones (the median of `again`) see them again."""
    queued, running = split(SETTINGS.max_executions_per_job)
    pages = ideal_calls(queued, running)

    async def main() -> tuple[float, float]:
        fleet = Fleet(1, queued, running, None, pool)
        sweeper, _, _ = fleet.build(VirtualClock(asyncio.get_running_loop()))
        out = []
        for _ in range(1 + again):
            start = time.process_time()
            await sweeper.sweep("job-00000")
            out.append((time.process_time() - start) / pages)
        return out[0], statistics.median(out[1:])

    result: tuple[float, float] = run_virtual(main)
    return result


@dataclass(frozen=True, slots=True)
class Choice:
    jobs: int
    per_sweep: float  # CPU seconds of next_job and the idle check, once per sweep
    age_read: float  # CPU seconds of one read of the sweep-age gauge


def choice_cost(jobs: int, pool: Pool) -> Choice:
    """What the Sweeper spends between two sweeps however small they are: the check for
    jobs whose counts went to zero and next_job, each over every job; and what one read of
    the sweep-age gauge (every scrape) costs."""
    fleet = Fleet(jobs, *split(1_000), None, pool)

    async def main() -> Choice:
        sweeper, _, telemetry = fleet.build(VirtualClock(asyncio.get_running_loop()))
        state = SweepState(tried={job_id: -3600.0 - i for i, job_id in enumerate(fleet.snapshots)})

        def choose() -> None:
            sweeper._empty_idle(fleet.snapshots)
            next_job(fleet.snapshots, state, 0.0, INTERVAL)

        return Choice(jobs, cpu(choose, repeats=5), cpu(telemetry.age, repeats=5))

    result: Choice = run_virtual(main)
    return result


# --- the tables --------------------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _times(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"


def _sweep_table(rows: list[Combination]) -> Table:
    table = Table(
        f"Execution sweeps: calls and time per full sweep of the fleet at the default "
        f"budget ({RATE:g}/s) and at AWS's whole default quota ({QUOTA:g}/s)",
        ["jobs", "executions per job", "calls", "ideal", "calls / ideal",
         f"sweep at {RATE:g}/s", f"sweep at {QUOTA:g}/s", f"age at {RATE:g}/s",
         f"age at {QUOTA:g}/s", "how"],
    )  # fmt: skip
    for r in rows:
        table.add(
            f"{r.jobs:,}",
            f"{r.executions:,}",
            f"{r.calls:,.0f}",
            f"{r.ideal:,}",
            f"{r.calls / r.ideal:.3f}x",
            duration(r.seconds),
            duration(r.seconds_quota),
            duration(r.age),
            duration(r.age_quota),
            r.how,
        )
    cap = SETTINGS.max_executions_per_job
    table.note(
        "executions per job: non-terminal, half QUEUED and half IN_PROGRESS; ideal: "
        f"ceil(queued / {PAGE_SIZE}) + ceil(in progress / {PAGE_SIZE}) per job, at most "
        f"{cap:,} summaries ({ideal_calls(cap, 0)} calls) per state"
    )
    table.note(
        "age: the largest aws_iot_jobs_exporter_sweep_oldest_age_seconds in the steady state "
        f"(second round), measured when simulated, else max(sweep, interval {INTERVAL:g} s)"
    )
    simulated = [r for r in rows if not r.sampled]
    if simulated:
        off = max(
            abs(age / steady_age(seconds) - 1)
            for r in simulated
            for age, seconds in ((r.age, r.seconds), (r.age_quota, r.seconds_quota))
        )
        table.note(
            f"simulated rows: measured ages within {off:.1%} of max(sweep, interval); "
            f"every row took {sum(r.real for r in rows):.0f} s of real time"
        )
    return table


def _cap_table(caps: list[Capped]) -> Table:
    cap = SETTINGS.max_executions_per_job
    table = Table(
        f"A job past max_executions_per_job ({cap:,} per state): one sweep, the real Sweeper",
        ["queued", "in progress", "calls", "ideal", "queued counted", "in progress counted",
         "sweep truncated"],
    )  # fmt: skip
    for c in caps:
        table.add(
            f"{c.queued:,}",
            f"{c.running:,}",
            f"{c.calls:,}",
            f"{ideal_calls(c.queued, c.running):,}",
            f"{c.counted_queued:,}",
            f"{c.counted_running:,}",
            "yes" if c.truncated else "no",
        )
    return table


def _priority_table(rows: list[Priority]) -> Table:
    table = Table(
        f"A changed job in the steady state, budget {RATE:g}/s: from the mark to the end of "
        "its sweep",
        ["jobs", "executions per job", "round", "marks", "served", "ideal", "p50 wait",
         "max wait", "p50 / ideal", "max / ideal", "window"],
    )  # fmt: skip
    for p in rows:
        # A mark not served yet has waited at least this long: its wait is at least that.
        waits = p.waits + p.open
        bound = ">= " if p.open else ""
        p50 = percentile(waits, 50)
        p50_bound = ">= " if p.open and p50 >= min(p.open) else ""
        table.add(
            f"{p.jobs:,}",
            f"{p.executions:,}",
            duration(p.round),
            str(len(waits)),
            str(len(p.waits)),
            duration(p.ideal),
            p50_bound + duration(p50),
            bound + duration(max(waits)),
            p50_bound + _times(p50 / p.ideal),
            bound + _times(max(waits) / p.ideal),
            duration(p.window),
        )
    table.note(
        "round: every job's sweep one after the other (jobs times own calls ÷ budget); the "
        "previous round's sweeps are spread over it, so jobs fall due in turn"
    )
    table.note(
        f"ideal: the marked job's own calls ÷ budget; a mark makes the job due "
        f"{MIN_GAP_SECONDS:g} s after its last sweep instead of {INTERVAL:g} s; window: the "
        "virtual time simulated; '>=': marks still waiting at its end count what they waited"
    )
    return table


def _observed_table(rows: list[Observed]) -> Table:
    bound = SETTINGS.max_tracked_executions
    table = Table(
        "Queue times (queued→started) observed, each in-progress execution seen by every "
        f"sweep of two (max_tracked_executions {bound:,})",
        ["jobs", "in progress per job", "in progress", "after sweep 1", "after sweep 2",
         "expected"],
    )  # fmt: skip
    for o in rows:
        table.add(
            f"{o.jobs:,}",
            f"{o.running:,}",
            f"{o.jobs * o.running:,}",
            f"{o.after[0]:,}",
            f"{o.after[1]:,}",
            f"{o.jobs * o.running:,}",
        )
    table.note("aws_iot_job_execution_queued_duration_seconds' count: once per execution")
    return table


def _cost_tables(costs: list[Cost], choices: list[Choice]) -> list[Table]:
    base = costs[0].per_page
    table = Table(
        f"CPU per page of {PAGE_SIZE} in-progress summaries (process CPU, median of batches)",
        ["what", "per page", "per 1,000 summaries", "vs json.loads"],
    )
    for c in costs:
        table.add(
            c.what, _ms(c.per_page), _ms(c.per_page * 1000 / PAGE_SIZE), f"{c.per_page / base:.2f}x"
        )
    table.note(
        "ages spread over 0 to 8 days: most executions are stuck (1 h and 24 h), the dearest "
        "case for summarise; 'none stuck': the same with infinite thresholds"
    )
    table.note(
        "Sweeper.sweep: 100,000 executions, pages served already parsed without a budget: "
        "summarise, the queue times of executions first seen in progress, publishing"
    )
    page = next(c.per_page for c in costs if c.what.startswith("parse_page + summarise"))
    choice = Table(
        "CPU of choosing the next job (the idle check and next_job, once per sweep) and of "
        "one read of the sweep-age gauge (once per scrape)",
        ["jobs", "per sweep", "vs a page (parse_page + summarise)", "sweep-age read"],
    )
    for ch in choices:
        choice.add(f"{ch.jobs:,}", _ms(ch.per_sweep), f"{ch.per_sweep / page:.2f}x",
                   _ms(ch.age_read))  # fmt: skip
    return [table, choice]


def run(budget: int = 4_000_000, marks: int = 30) -> list[Table]:
    """Every table; `budget`: summaries read (and job visits) per simulated combination."""
    cheap, timed = Pool(timed=False), Pool(timed=True)
    rows: list[Combination] = []
    for jobs in JOB_COUNTS:
        for executions in SIZES:
            row = combination(jobs, executions, budget, cheap)
            print(
                f"sweeps: {jobs:,} jobs of {executions:,} executions: {row.calls:,.0f} calls, "
                f"{duration(row.seconds)} at {RATE:g}/s ({row.real:.1f} s)",
                flush=True,
            )
            rows.append(row)
    cap = SETTINGS.max_executions_per_job
    caps = [capped(cap + cap // 2, cap // 2, cheap), capped(cap // 2, cap + cap // 2, cheap)]

    priorities = []
    for jobs in (20, 1_000, 10_000):
        # Every mark served at up to 1,000 jobs; at 10,000, a window (a round is 10,000
        # sweeps, each choice a pass over every job).
        p = priority(jobs, 1_000, marks, min(3 * jobs, 2 * budget // jobs), cheap)
        print(
            f"sweeps: marks among {jobs:,} jobs: {len(p.waits)} of {marks} served, "
            f"round {duration(p.round)} ({p.real:.1f} s)",
            flush=True,
        )
        priorities.append(p)

    bound = SETTINGS.max_tracked_executions
    per_job = 10_000
    seen = [
        observed(bound // per_job // 2, per_job, 2, timed),
        observed(bound // per_job * 2, per_job, 2, timed),
    ]
    costs = page_costs(timed)
    choices = [choice_cost(n, cheap) for n in JOB_COUNTS]
    return [
        _sweep_table(rows),
        _cap_table(caps),
        _priority_table(priorities),
        _observed_table(seen),
        *_cost_tables(costs, choices),
    ]
