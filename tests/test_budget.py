"""The API budget: one bucket per account, region and operation; urgent calls first."""

from __future__ import annotations

import asyncio

from exporter.aws import Budgets, TokenBucket


def test_targets_of_one_account_share_a_bucket_and_shards_split_it() -> None:
    budgets = Budgets(divisor=4)
    a = budgets.bucket("123456789012", "eu-west-1", "DescribeJob", 10.0)
    assert budgets.bucket("123456789012", "eu-west-1", "DescribeJob", 10.0) is a
    assert budgets.bucket("123456789012", "us-east-1", "DescribeJob", 10.0) is not a
    assert budgets.bucket("123456789012", "eu-west-1", "ListJobs", 10.0) is not a
    assert a.rate == 2.5  # a quarter each for four shards
    budgets.set_rate(4.0)  # a reload's new budget reaches every bucket
    assert a.rate == 1.0


async def test_urgent_callers_take_the_next_token_before_queued_ones() -> None:
    bucket = TokenBucket(rate=50.0, burst=1.0)
    done: list[str] = []

    async def take(name: str, urgent: bool = False) -> None:
        await bucket.acquire(urgent)
        done.append(name)

    normal = [asyncio.create_task(take(f"normal-{i}")) for i in range(6)]
    await asyncio.sleep(0.005)  # the normal ones are queued, one holding the first token
    urgent = asyncio.create_task(take("urgent", urgent=True))
    await asyncio.gather(*normal, urgent)
    # At most the one normal caller that held the first token goes before it.
    assert done.index("urgent") <= 1, done
    assert len(done) == 7
