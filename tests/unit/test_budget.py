"""The API budget: one bucket per account, region and operation, shared fairly.

On a fake clock: the bucket's sleeps advance it, so a thousand tokens take milliseconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from exporter.budget import EVENT, FIRST, REFRESH, UNKNOWN, WORK_WEIGHTS, Budgets, FairBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def bucket(rate: float = 10.0) -> tuple[FairBucket, FakeClock]:
    clock = FakeClock()
    return FairBucket(rate, burst=1.0, clock=clock, sleep=clock.sleep), clock


async def callers(bucket: FairBucket, flows: dict[tuple[str, str], int], grants: int) -> Counter:
    """Keeps `flows[(target, kind)]` callers waiting per flow (like a target's concurrent
    calls) until `grants` tokens were handed out; returns the grants per flow."""
    got: Counter[tuple[str, str]] = Counter()
    done = asyncio.Event()

    async def caller(target: str, kind: str) -> None:
        while not done.is_set():
            await bucket.acquire(target, kind)
            got[(target, kind)] += 1
            if sum(got.values()) >= grants:
                done.set()

    tasks = [
        asyncio.create_task(caller(target, kind))
        for (target, kind), count in flows.items()
        for _ in range(count)
    ]
    await done.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return got


def test_targets_of_one_account_share_a_bucket_and_shards_split_it() -> None:
    budgets = Budgets(divisor=4)
    a = budgets.bucket("123456789012", "eu-west-1", "DescribeJob", 10.0)
    assert budgets.bucket("123456789012", "eu-west-1", "DescribeJob", 10.0) is a
    assert budgets.bucket("123456789012", "us-east-1", "DescribeJob", 10.0) is not a
    assert budgets.bucket("123456789012", "eu-west-1", "ListJobs", 10.0) is not a
    assert a.rate == 2.5  # a quarter each for four shards
    budgets.set_rate(4.0)  # a reload's new budget reaches every bucket
    assert a.rate == 1.0
    # The sweeps' budget is a setting of its own: a reload sets each to its operations.
    sweeps = budgets.bucket("123456789012", "us-east-1", "ListJobExecutionsForJob", 2.0)
    budgets.set_rate(8.0, ("DescribeJob", "ListJobs"))
    budgets.set_rate(6.0, ("ListJobExecutionsForJob",))
    assert (a.rate, sweeps.rate) == (2.0, 1.5)


async def test_an_event_storm_on_one_target_leaves_the_other_its_half() -> None:
    # The starvation of the old strict priority: t1's event describes always waiting,
    # t2 polling. Each target gets half, whatever kind of work it waits with.
    fair, clock = bucket(rate=20.0)
    got = await callers(fair, {("t1", EVENT): 10, ("t2", REFRESH): 10}, grants=1000)
    assert abs(got[("t2", REFRESH)] - 500) <= 2, got
    assert 49.0 <= clock.now <= 51.0  # the rate holds: 1000 tokens at 20/s


async def test_three_targets_get_a_third_each_however_many_callers_wait() -> None:
    fair, _ = bucket()
    got = await callers(fair, {("a", EVENT): 10, ("b", REFRESH): 1, ("c", FIRST): 3}, grants=900)
    for target in ("a", "b", "c"):
        share = sum(v for (t, _), v in got.items() if t == target)
        assert abs(share - 300) <= 2, got


async def test_kinds_of_work_within_a_target_share_by_weight() -> None:
    fair, _ = bucket()
    kinds = (FIRST, EVENT, REFRESH, UNKNOWN)
    got = await callers(fair, {("t", k): 5 for k in kinds}, grants=1200)
    total = sum(WORK_WEIGHTS[k] for k in kinds)
    for kind in kinds:
        expected = 1200 * WORK_WEIGHTS[kind] / total
        assert abs(got[("t", kind)] - expected) <= 2, (kind, got)
    # The smallest share is a share: unknown job ids never starve, and never take more.
    assert got[("t", UNKNOWN)] >= 1200 * WORK_WEIGHTS[UNKNOWN] / total - 2 > 0


async def test_a_kind_alone_takes_the_whole_budget() -> None:
    # A share is a floor while others wait, not a cap: a target polling alone is not held
    # to a fraction of the quota it does not share.
    fair, clock = bucket(rate=5.0)
    got = await callers(fair, {("t", REFRESH): 10}, grants=100)
    assert got[("t", REFRESH)] == 100
    assert 19.0 <= clock.now <= 20.5


async def test_an_idle_flow_saves_no_credit_for_a_burst() -> None:
    # t2 idle while t1 spends 500 tokens; when t2 starts, it gets half from then on, not
    # the 500 it "missed" in a row (which would starve t1 in turn).
    fair, _ = bucket()
    await callers(fair, {("t1", REFRESH): 5}, grants=500)
    got = await callers(fair, {("t1", REFRESH): 5, ("t2", REFRESH): 5}, grants=100)
    assert abs(got[("t1", REFRESH)] - 50) <= 2, got


async def test_callers_that_give_up_do_not_hold_the_queue() -> None:
    fair, clock = bucket(rate=1.0)
    await fair.acquire("t", REFRESH)  # the one free token
    gave_up = [asyncio.create_task(fair.acquire("t", EVENT)) for _ in range(5)]
    await asyncio.sleep(0)
    for task in gave_up:
        task.cancel()
    await asyncio.gather(*gave_up, return_exceptions=True)
    before = clock.now
    await fair.acquire("other", REFRESH)
    # One token's wait, not six: the cancelled callers took nothing.
    assert clock.now - before <= 1.01
    assert fair.granted.get(("t", EVENT), 0) == 0


async def test_a_waiter_cancelled_while_the_dispatcher_runs_leaves_no_one_stuck() -> None:
    # A waiter's deadline and the dispatcher's wake-up in the same loop pass: the queues
    # say who waits, so no count can drift and leave the next caller without a dispatcher.
    fair, _ = bucket(rate=1.0)
    await fair.acquire("t", REFRESH)  # the free token
    waiter = asyncio.create_task(fair.acquire("t", EVENT))
    await asyncio.sleep(0)
    waiter.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.gather(waiter, return_exceptions=True)
    for _ in range(3):
        await asyncio.wait_for(fair.acquire("t", REFRESH), timeout=2)
    assert not fair._waiting()
