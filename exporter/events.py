"""AWS IoT job events from an SQS queue: parsed, de-duplicated, counted, and turned into work.

AWS publishes an event when a job completes, is canceled or deleted, and when an
execution reaches a terminal state. An IoT topic rule sends them to an SQS queue, which
this module reads. A job event says the job's new status and times (`completed` also five
of the eight counts), which the event path applies at once; an execution event says
nothing of the counts. Neither replaces a DescribeJob: each says which job to describe now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.config import Events
from exporter.model import JOB_ID
from exporter.telemetry import EventTelemetry

log = logging.getLogger(__name__)

# The topics' last segment: `$aws/events/job/<jobId>/<event>` and
# `$aws/events/jobExecution/<jobId>/<event>`, also the payload's `operation`.
JOB_EVENTS = (
    "completed",
    "canceled",
    "deleted",
    "cancellation_in_progress",
    "deletion_in_progress",
)
EXECUTION_EVENTS = (
    "succeeded",
    "failed",
    "rejected",
    "canceled",
    "timed_out",
    "removed",
    "deleted",
)
# A job event's `status` in DescribeJob's words (model.JOB_STATUSES), by the event's
# operation: the only place the two vocabularies meet. AWS's job events say
# `CANCELLATION_IN_PROGRESS` while DescribeJob says `CANCELED` (with isConcurrent true
# until the cancellation ends); `deleted` has no DescribeJob status: the job is gone.
JOB_EVENT_STATUS = {
    "completed": "COMPLETED",
    "canceled": "CANCELED",
    "cancellation_in_progress": "CANCELED",
    "deletion_in_progress": "DELETION_IN_PROGRESS",
}
# The counts a `completed` event carries (jobProcessDetails), as model.EXECUTION_STATES
# names them.
COMPLETED_COUNTS = (
    ("succeeded", "numberOfSucceededThings"),
    ("failed", "numberOfFailedThings"),
    ("rejected", "numberOfRejectedThings"),
    ("canceled", "numberOfCanceledThings"),
    ("removed", "numberOfRemovedThings"),
)
# botocore's `long`, the largest count AWS's model allows.
_MAX_COUNT = 2**63 - 1
# Milliseconds since the epoch up to the year 5138: larger is not a time.
_MAX_MILLIS = 10**14
# Execution statuses whose reasons are counted: the ones an operator asks "why" about.
FAILURE_STATUSES = ("FAILED", "REJECTED", "TIMED_OUT")
# The `event` label of the received-events counter: every known event, plus what is not one.
EVENT_NAMES = (
    *(f"job_{e}" for e in JOB_EVENTS),
    *(f"execution_{e}" for e in EXECUTION_EVENTS),
    "unknown",
    "malformed",
)
OTHER_REASON = "other"
REASON_MAX_LENGTH = 64
# Bodies larger than this are not events (AWS's are well under 8 KiB; SQS allows 256 KiB).
MAX_BODY_BYTES = 64 * 1024

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# AWS's thing name pattern (CreateThing).
THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
# Execution statuses that end an execution.
ENDED_STATUSES = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED")


class MalformedEvent(ValueError):
    """A message that is not a job event: counted, logged once, and deleted."""


class QueueError(Exception):
    """A failed queue call, classified like every AWS call (see aws.classify)."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(f"{outcome}: {detail}")
        self.outcome = outcome
        self.detail = detail


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One job or execution event, as much of it as the exporter uses."""

    event_id: str
    # "job" or "execution"
    kind: str
    # the topic's last segment: completed, failed, timed_out, ...
    name: str
    job_id: str
    # epoch seconds when AWS published it; None when the payload has no usable one
    timestamp: float | None
    status: str | None = None
    reason: str | None = None
    # The thing of an execution event (thingArn's name), when it is a valid thing name.
    thing: str | None = None
    # Of a job event, in epoch seconds: AWS's lastUpdatedAt and completedAt.
    last_updated_at: float | None = None
    completed_at: float | None = None
    # Of a `completed` event: the counts it carries, (state, count) as in JobSnapshot.
    counts: tuple[tuple[str, int], ...] | None = None

    @property
    def label(self) -> str:
        """The `event` label value of the received-events counter."""
        prefix = "job" if self.kind == "job" else "execution"
        known = JOB_EVENTS if self.kind == "job" else EXECUTION_EVENTS
        return f"{prefix}_{self.name}" if self.name in known else "unknown"

    @property
    def is_failure(self) -> bool:
        return self.kind == "execution" and self.status in FAILURE_STATUSES

    @property
    def deletes_job(self) -> bool:
        return self.kind == "job" and self.name == "deleted"

    @property
    def job_status(self) -> str | None:
        """What a job event says the job's DescribeJob status is now (None: not a job event
        that says one)."""
        return JOB_EVENT_STATUS.get(self.name) if self.kind == "job" else None


def sanitise_reason(value: str) -> str:
    """A label-safe reason: printable ASCII, at most REASON_MAX_LENGTH characters."""
    return _UNPRINTABLE.sub("_", value)[:REASON_MAX_LENGTH]


def parse_event(body: str | bytes, reason_key: str | None = None) -> JobEvent:
    """An SQS message body (the IoT rule's `SELECT *` payload) → JobEvent; MalformedEvent else.

    Tolerant of new fields and new event names (counted as `unknown`), strict about what
    the exporter acts on: the event id, the job id and the kind. Whatever the body holds
    (numbers of any size, any type where another belongs), the only exception raised is
    MalformedEvent: one message must never stop the consumer.
    """
    try:
        return _parse_event(body, reason_key)
    except MalformedEvent:
        raise
    except Exception as exc:
        # A value no check above foresaw: not an event, whatever it was meant to be.
        raise MalformedEvent(f"unreadable body ({type(exc).__name__})") from None


def _parse_event(body: str | bytes, reason_key: str | None) -> JobEvent:
    if not isinstance(body, str | bytes):
        raise MalformedEvent("body is not text")
    if len(body) > MAX_BODY_BYTES:
        raise MalformedEvent(f"body of {len(body)} bytes is larger than {MAX_BODY_BYTES}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedEvent("body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedEvent("body is not a JSON object")
    event_type = data.get("eventType")
    if event_type == "JOB":
        kind = "job"
    elif event_type == "JOB_EXECUTION":
        kind = "execution"
    else:
        raise MalformedEvent("eventType: expected JOB or JOB_EXECUTION")
    job_id = data.get("jobId")
    if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
        raise MalformedEvent("jobId: expected a job id")
    event_id = data.get("eventId")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 128:
        raise MalformedEvent("eventId: expected a string of 1-128 characters")
    name = data.get("operation")
    name = name.lower() if isinstance(name, str) and len(name) <= 64 else ""
    status = data.get("status")
    status = status if isinstance(status, str) and len(status) <= 64 else None
    stamp = data.get("timestamp")
    timestamp: float | None = None
    if isinstance(stamp, float) and math.isfinite(stamp) and 0 < stamp < 1e11:
        timestamp = stamp
    elif isinstance(stamp, int) and not isinstance(stamp, bool) and 0 < stamp < 10**11:
        # Compared as an integer first: float() of a 400-digit integer overflows.
        timestamp = float(stamp)
    reason: str | None = None
    if kind == "execution" and reason_key:
        details = data.get("statusDetails")
        if isinstance(details, dict):
            raw = details.get(reason_key)
            if isinstance(raw, str):
                reason = sanitise_reason(raw)
    thing: str | None = None
    arn = data.get("thingArn")
    if kind == "execution" and isinstance(arn, str) and len(arn) <= 2048:
        _, marker, name_part = arn.rpartition(":thing/")
        if marker and THING_NAME.fullmatch(name_part):
            thing = name_part
    if kind == "execution":
        return JobEvent(event_id, kind, name, job_id, timestamp, status, reason, thing)
    counts: tuple[tuple[str, int], ...] | None = None
    details = data.get("jobProcessDetails")
    if name == "completed" and isinstance(details, dict):
        read = [(state, _count(details.get(key))) for state, key in COMPLETED_COUNTS]
        # All five or none: a partial set would mix the event's counts with older ones.
        if all(count is not None for _, count in read):
            counts = tuple((state, count) for state, count in read if count is not None)
    return JobEvent(
        event_id,
        kind,
        name,
        job_id,
        timestamp,
        status,
        last_updated_at=_millis(data.get("lastUpdatedAt")),
        completed_at=_millis(data.get("completedAt")),
        counts=counts,
    )


def _count(value: object) -> int | None:
    """A count as AWS's model allows it (0 to a `long`), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT:
        return value
    return None


def _millis(value: object) -> float | None:
    """Epoch milliseconds (a job event's times) → seconds; None unless a plausible time."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 0 < value < _MAX_MILLIS:
        return value / 1000.0
    if isinstance(value, float) and math.isfinite(value) and 0 < value < _MAX_MILLIS:
        return value / 1000.0
    return None


class RecentIds:
    """The last `capacity` event ids: SQS delivers at least once, so each is applied once.

    An OrderedDict of ids costs about 150 bytes per entry: 100,000 ids are about 15 MB,
    which covers SQS's redelivery window at thousands of events per minute.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, event_id: str) -> bool:
        """True when the id was seen already; otherwise remembers it and returns False."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


class ReasonCounts:
    """Failed, rejected and timed-out execution events per job, by status and reason.

    At most `max_reasons` distinct reasons per job; later ones count as `other`, so a
    device that reports a fresh string each time cannot grow the series without bound.
    """

    def __init__(self, max_reasons: int) -> None:
        self.max_reasons = max_reasons
        self._counts: dict[str, dict[tuple[str, str], int]] = {}
        self._reasons: dict[str, set[str]] = {}

    def count(self, job_id: str, status: str, reason: str) -> None:
        reasons = self._reasons.setdefault(job_id, set())
        if reason not in reasons:
            if len(reasons) >= self.max_reasons:
                reason = OTHER_REASON
            else:
                reasons.add(reason)
        counts = self._counts.setdefault(job_id, {})
        counts[(status, reason)] = counts.get((status, reason), 0) + 1

    def forget(self, job_id: str) -> None:
        self._counts.pop(job_id, None)
        self._reasons.pop(job_id, None)

    def job_ids(self) -> list[str]:
        return list(self._counts)

    def samples(self, job_id: str) -> Iterator[tuple[str, str, int]]:
        """(status, reason, count) of one job."""
        for (status, reason), value in sorted(self._counts.get(job_id, {}).items()):
            yield status, reason, value


class LogThrottle:
    """One warning in full, then at most one summary per `every` seconds with a count.

    A queue full of junk, or a flood of job ids, must not flood the logs: a log line per
    message was 80,000 lines in 15 s.
    """

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: float | None = None
        self.suppressed = 0

    def allow(self) -> bool:
        """True when this occurrence is logged (then `suppressed` says how many were not)."""
        now = self.clock()
        if self._last is None or now - self._last >= self.every:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def take(self) -> int:
        """The count suppressed since the last line logged, reset to 0."""
        count, self.suppressed = self.suppressed, 0
        return count

    def summarise(self, logger: logging.Logger, what: str, target: str) -> None:
        """Logs `what target=... suppressed=N` when occurrences were held back and their
        period is over: the periodic summary, even when no new occurrence comes."""
        if self.suppressed and (self._last is None or self.clock() - self._last >= self.every):
            self._last = self.clock()
            logger.warning("%s target=%s suppressed=%d", what, target, self.take())


@dataclass(frozen=True, slots=True)
class Message:
    """An SQS message as the consumer needs it."""

    message_id: str
    receipt_handle: str
    body: str


class Queue(Protocol):
    """The SQS queue of one target (aws.py's EventQueue); failures raise QueueError."""

    # How long a receive with `wait` may hold the request when the queue is empty.
    wait_seconds: float

    async def receive(self, wait: bool = True) -> list[Message]: ...

    async def delete(self, receipt_handles: list[str]) -> list[str]:
        """Deletes the messages; returns what SQS says of each it could not delete."""
        ...


class EventSink(Protocol):
    """What the scheduler does with events (eventpath.EventPath)."""

    def owns(self, job_id: str) -> bool: ...
    # True when the job is followed; `mark` False: the caller marks it (execution_ended).
    def job_changed(self, job_id: str, mark: bool = True) -> bool: ...
    def job_event(self, event: JobEvent) -> bool: ...
    def job_deleted(self, job_id: str) -> None: ...
    # A followed job's execution ended: counted from the event where it can be, and the
    # job marked for a describe.
    def execution_ended(self, event: JobEvent) -> None: ...


class EventConsumer:
    """Long-polls a target's queue, applies each event once, deletes what it applied.

    Messages are deleted only after they are applied, so an exporter that stops
    half-way leaves the rest in the queue for its next start. Malformed messages are
    deleted too: they would come back forever otherwise. The queue is input from outside:
    no message, answer or failure raises out of run(), which only cancellation ends.
    """

    # A long poll lasts 20 s; a receive that has not succeeded for this long means the
    # consumer is failing, and the target falls back to polling every interval.
    HEALTHY_WITHIN = 60.0
    RECEIVERS = 4
    BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
    # Warnings of one kind per target: the first in full, then a summary this often.
    LOG_EVERY = 60.0

    def __init__(
        self,
        target: str,
        settings: Events,
        queue: Queue,
        sink: EventSink,
        telemetry: EventTelemetry,
        reasons: ReasonCounts,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target
        self.settings = settings
        self.queue = queue
        self.sink = sink
        self.telemetry = telemetry
        self.reasons = reasons
        self.clock = clock
        self._recent = RecentIds(settings.dedup_capacity)
        self._last_receive: float | None = None
        self._last_message: float | None = None
        self._started = clock()
        self._errors = 0
        # Empty answers in a row that came back faster than the long poll asked for.
        self._early_empty = 0
        # For the status page: the last failure (when, outcome, detail), messages read, and
        # the lag of the last event that had a timestamp.
        self.last_error: tuple[float, str, str] | None = None
        self.received = 0
        self.lag: float | None = None
        self._malformed_log = LogThrottle(self.LOG_EVERY)
        self._failed_log = LogThrottle(self.LOG_EVERY)
        self._undeleted_log = LogThrottle(self.LOG_EVERY)
        # Set once the queue has answered (or failed) the first time: until then, whether
        # events flow is not known, and the scheduler waits a moment rather than guess.
        self.answered = asyncio.Event()

    def healthy(self) -> bool:
        """The queue answered lately and without errors since."""
        last = self._last_receive
        return self._errors == 0 and last is not None and self.clock() - last < self.HEALTHY_WITHIN

    @property
    def last_message(self) -> float | None:
        return self._last_message

    def polling_reason(self) -> str | None:
        """Why events cannot drive the target now (None: they can, if not silent)."""
        if not self.answered.is_set():
            return "waiting for the queue's first answer"
        if self._errors:
            outcome, detail = self.last_error[1:] if self.last_error else ("error", "")
            return f"the queue is failing ({outcome}: {detail})"
        last = self._last_receive
        if last is None or self.clock() - last >= self.HEALTHY_WITHIN:
            return f"no answer from the queue for {self.HEALTHY_WITHIN:g} s"
        return None

    def silent(self) -> bool:
        """No message for silence_timeout: while jobs are active, events are probably lost."""
        last = self._last_message if self._last_message is not None else self._started
        return self.clock() - last > self.settings.silence_timeout

    async def run(self) -> None:
        """RECEIVERS long polls at once, each deleting what it applied in the background.

        One poller reads at most 10 messages per round trip; a burst of a thousand
        execution events (a rollout failing on every device) would wait seconds in the
        queue. Several pollers, and deletes that do not hold the next receive, keep the
        lag at a round trip or two. SQS spreads messages across concurrent receivers.
        """
        deletes = asyncio.Semaphore(self.RECEIVERS * 2)
        pending: set[asyncio.Task[None]] = set()
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(self.RECEIVERS):
                    group.create_task(self._receive(i, deletes, pending))
        finally:
            for task in pending:
                task.cancel()

    async def _receive(
        self, index: int, deletes: asyncio.Semaphore, pending: set[asyncio.Task[None]]
    ) -> None:
        # The first poller's first call does not wait, so that a working queue is known at
        # once; the others start long polling right away.
        wait = index > 0
        while True:
            try:
                await self._receive_once(wait, deletes, pending)
                wait = True
            except QueueError as exc:
                self.answered.set()
                await self._failed(exc.outcome, exc.detail)
            except Exception as exc:
                # A bug, or an answer nothing foresaw: it costs this receive, never the
                # consumer, and never the target's polling.
                self.answered.set()
                log.exception("event consumer crashed target=%s", self.target)
                await self._failed("error", type(exc).__name__)
            self._flush_logs()

    async def _receive_once(
        self, wait: bool, deletes: asyncio.Semaphore, pending: set[asyncio.Task[None]]
    ) -> None:
        started = time.monotonic()
        messages = await self.queue.receive(wait)
        self.answered.set()
        self._errors = 0
        self._last_receive = self.clock()
        if not messages:
            if wait and time.monotonic() - started < self.queue.wait_seconds / 2:
                # An endpoint that answers empty at once, whatever the wait asked, would
                # make this loop spin: wait as the long poll should have.
                self._early_empty += 1
                await asyncio.sleep(self.BACKOFF[min(self._early_empty, len(self.BACKOFF)) - 1])
            else:
                self._early_empty = 0
            return
        self._early_empty = 0
        self._last_message = self._last_receive
        done = [m.receipt_handle for m in messages if self.apply(m)]
        if done:
            await deletes.acquire()
            task = asyncio.create_task(self._delete(done, deletes))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def _delete(self, handles: list[str], deletes: asyncio.Semaphore) -> None:
        try:
            failed = await self.queue.delete(handles)
            if failed:
                # SQS answered, but did not delete these: they come back after the
                # visibility timeout, and the de-duplication drops them then.
                for _ in failed:
                    self.telemetry.event_consumer_error(self.target)
                self.last_error = (self.clock(), "error", f"DeleteMessageBatch: {failed[0]}")
                if self._undeleted_log.allow():
                    log.warning(
                        "event messages not deleted target=%s count=%d error=%r suppressed=%d",
                        self.target,
                        len(failed),
                        failed[0],
                        self._undeleted_log.take(),
                    )
        except QueueError as exc:
            # Undeleted messages come back after the visibility timeout; the de-duplication
            # drops them then.
            await self._failed(exc.outcome, exc.detail)
        except Exception as exc:
            log.exception("event delete crashed target=%s", self.target)
            await self._failed("error", type(exc).__name__)
        finally:
            deletes.release()

    async def _failed(self, outcome: str, detail: str) -> None:
        self._errors += 1
        self.last_error = (self.clock(), outcome, detail)
        self.telemetry.event_consumer_error(self.target)
        delay = self.BACKOFF[min(self._errors, len(self.BACKOFF)) - 1]
        if self._failed_log.allow():
            log.warning(
                "event queue failed target=%s outcome=%s error=%r retry_in_seconds=%g "
                "suppressed=%d",
                self.target,
                outcome,
                detail,
                delay,
                self._failed_log.take(),
            )
        await asyncio.sleep(delay)

    def _flush_logs(self) -> None:
        """The summaries of warnings held back, once their period is over."""
        self._malformed_log.summarise(log, "malformed events", self.target)
        self._failed_log.summarise(log, "event queue failed", self.target)
        self._undeleted_log.summarise(log, "event messages not deleted", self.target)

    def apply(self, message: Message) -> bool:
        """Applies one message; True when it can be deleted (applied, duplicate or malformed)."""
        try:
            return self._apply(message)
        except Exception as exc:
            # Parsing raises only MalformedEvent; this is a bug in applying one. Deleted
            # like a malformed message, or it would come back to fail again.
            self.telemetry.event_received(self.target, "malformed")
            if self._malformed_log.allow():
                log.error(
                    "event could not be applied target=%s message_id=%r error=%s suppressed=%d",
                    self.target,
                    message.message_id[:128],
                    type(exc).__name__,
                    self._malformed_log.take(),
                )
            return True

    def _apply(self, message: Message) -> bool:
        try:
            event = parse_event(message.body, self.settings.reason_key)
        except MalformedEvent as exc:
            self.telemetry.event_received(self.target, "malformed")
            self.received += 1
            if self._malformed_log.allow():
                log.warning(
                    "malformed event target=%s message_id=%r error=%r suppressed=%d",
                    self.target,
                    message.message_id[:128],
                    str(exc),
                    self._malformed_log.take(),
                )
            return True
        self.telemetry.event_received(self.target, event.label)
        self.received += 1
        if self._recent.seen(event.event_id):
            self.telemetry.event_duplicate(self.target)
            return True
        if event.timestamp is not None:
            self.lag = max(0.0, self.clock() - event.timestamp)
            self.telemetry.event_lag(self.target, self.lag)
        if not self.sink.owns(event.job_id):
            return True
        if event.deletes_job:
            self.reasons.forget(event.job_id)
            self.sink.job_deleted(event.job_id)
            return True
        if event.kind == "job":
            self.sink.job_event(event)
            return True
        # An execution's end is counted from the event where it can be, and the sink marks
        # the job for the describe that follows (EventSink.execution_ended).
        ended = event.kind == "execution" and event.status in ENDED_STATUSES
        tracked = self.sink.job_changed(event.job_id, mark=not ended)
        if tracked and ended:
            if event.is_failure and event.status is not None:
                self.reasons.count(event.job_id, event.status, event.reason or "")
            self.sink.execution_ended(event)
        return True


def message_from_sqs(item: Any) -> Message | None:
    """One element of ReceiveMessage's `Messages`; None when it lacks what deletion needs."""
    if not isinstance(item, dict):
        return None
    handle, body = item.get("ReceiptHandle"), item.get("Body")
    message_id = item.get("MessageId")
    if not isinstance(handle, str) or not handle:
        return None
    return Message(
        message_id if isinstance(message_id, str) else "",
        handle,
        body if isinstance(body, str) else "",
    )
