"""The status page sees the event path: event-driven or polling and why, the queue, its last
error, events and describes over the window; failing jobs apart from stale ones (issue 19)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable

import pytest

from exporter.config import parse_config
from tests.hostile_aws import HostileAws, listing
from tests.hostile_sqs import HostileSqs, event_body, messages
from tests.integration.test_status import Served, get, serve
from tests.support import until

__all__ = ["serve"]  # the fixture, used by name


@pytest.fixture
async def aws() -> AsyncIterator[HostileAws]:
    server = await HostileAws().start()
    yield server
    await server.close()


@pytest.fixture
async def sqs() -> AsyncIterator[HostileSqs]:
    server = await HostileSqs().start()
    yield server
    await server.close()


def config(aws: HostileAws, sqs: HostileSqs):  # type: ignore[no-untyped-def]
    return parse_config(
        "collector: {interval: 1s, discovery_interval: 1h, request_timeout: 2s, "
        "max_attempts: 1, requests_per_second: 50}\n"
        f"targets:\n  - name: ep\n    region: eu-west-1\n    endpoint_url: {aws.url}\n"
        "    jobs: {discover: {}}\n"
        f"    events: {{sqs_queue_url: '{sqs.queue_url}', reconcile_interval: 10m}}\n"
    )


async def test_a_queue_that_does_not_exist_shows_polling_and_its_error(
    aws: HostileAws, sqs: HostileSqs, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    aws.list_page = lambda token: listing("job-1")
    sqs.receive = lambda data: (400, "QueueDoesNotExist")
    served = await serve(config(aws, sqs))
    target = served.collector.targets["ep"]
    await until(lambda: target.consumer and target.consumer.last_error, what="a queue error")
    page = json.loads((await get(f"{served.url}/status", Accept="application/json"))[1])
    (t,) = page["targets"]
    assert t["mode"] == "polling"
    events = t["events"]
    assert events["mode"] == "polling" and "failing" in events["reason"]
    assert events["queue_url"] == sqs.queue_url
    assert events["last_error"]["operation"] == "SQS"
    assert "QueueDoesNotExist" in events["last_error"]["message"]
    # Polling, so stale means older than twice the interval.
    assert t["stale"]["basis"] == "interval" and t["stale"]["after_seconds"] == 2.0
    html = (await get(f"{served.url}/status", Accept="text/html"))[1]
    assert ">polling</span>: the queue is failing" in html
    assert "QueueDoesNotExist" in html and sqs.queue_url in html


async def test_a_healthy_event_driven_target_and_a_failing_job_stand_apart(
    aws: HostileAws, sqs: HostileSqs, serve: Callable[..., asyncio.Future[Served]]
) -> None:
    aws.list_page = lambda token: listing("quiet", "denied")
    counter = itertools.count()
    # An event for the quiet job now and then; long polls otherwise.
    sqs.receive = lambda data: (
        messages(event_body("quiet", f"e{n}"), prefix=f"q{n}-")
        if (n := next(counter)) % 5 == 0
        else []
    )
    sqs.empty_wait = 0.5
    served = await serve(config(aws, sqs))
    target = served.collector.targets["ep"]
    await until(lambda: served.collector.ready, what="ready")
    aws.describe["denied"] = (
        403,
        b'{"__type": "AccessDeniedException", "message": "not for you"}',
    )
    await until(lambda: target.events.event_driven(), what="event-driven")
    # The denied job is described again at its next event or reconcile: force one.
    target.job_changed("denied")
    await until(lambda: target.status().failing_total == 1, what="the failing job")
    await until(lambda: target.status().events.describes >= 1, what="events counted")  # type: ignore[union-attr]
    page = json.loads((await get(f"{served.url}/status", Accept="application/json"))[1])
    (t,) = page["targets"]
    assert t["mode"] == "event-driven"
    assert t["events"]["reason"] == "events flow" and t["events"]["last_error"] is None
    assert t["events"]["received"] >= 1 and t["events"]["describes"] >= 1
    # Stale follows the reconcile interval: a quiet job described minutes ago is not stale.
    assert t["stale"] == {
        "after_seconds": 2 * (600 + 1),
        "basis": "reconcile_interval",
        "total": 0,
        "jobs": [],
    }
    (failing,) = t["failing"]["jobs"]
    assert failing["job_id"] == "denied" and failing["error"]["class"] == "denied"
    assert "AccessDeniedException" in failing["error"]["message"]
    assert failing["age_seconds"] is not None
    html = (await get(f"{served.url}/status", Accept="text/html"))[1]
    assert 'class="ok">event-driven</span>' in html
    assert "Failing jobs (last describe failed)" in html and "<code>denied</code>" in html
