"""An SQS queue of the fleet's job events, in the JSON protocol botocore speaks to SQS.

It stands where AWS has an IoT topic rule (`SELECT * FROM '$aws/events/job/#'` and
`'$aws/events/jobExecution/#'`) with an SQS action: ReceiveMessage (long polls included),
DeleteMessageBatch, DeleteMessage and GetQueueAttributes. Faults: duplicate delivery,
reordering, delay, a silent rule (events dropped) and a stopped queue (calls fail).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

QUEUE_NAME = "aws-iot-jobs-events"
VISIBILITY_TIMEOUT = 30.0
MAX_WAIT_SECONDS = 20
# Enough for a fleet's burst; older messages are dropped beyond it, as a full rule would.
MAX_MESSAGES = 1_000_000
_JSON = "application/x-amz-json-1.0"
_FAILURES = ("FAILED", "REJECTED", "TIMED_OUT")


@dataclass
class EventFaults:
    """Faults of the event path; set through POST /admin/events."""

    duplicate_probability: float = 0.0
    reorder: bool = False
    delay_seconds: float = 0.0
    silent: bool = False
    stopped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "duplicate_probability": self.duplicate_probability,
            "reorder": self.reorder,
            "delay_seconds": self.delay_seconds,
            "silent": self.silent,
            "stopped": self.stopped,
        }


@dataclass
class _Message:
    message_id: str
    body: str
    visible_at: float
    receipt: str = ""
    receives: int = 0


@dataclass
class QueueStats:
    published: int = 0
    delivered: int = 0
    deleted: int = 0
    dropped: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    # Failed, rejected and timed-out execution events published, per job and status: what
    # an exporter reading every event once must count.
    failures: dict[str, dict[str, int]] = field(default_factory=dict)


class EventQueue:
    """One queue holding every event of the fleet, in publication order unless reordered."""

    def __init__(self, account_id: str, seed: int = 1, name: str = QUEUE_NAME) -> None:
        self.account_id = account_id
        self.name = name
        self.faults = EventFaults()
        self.stats = QueueStats()
        self._messages: deque[_Message] = deque()
        self._inflight: dict[str, _Message] = {}
        self._arrived = asyncio.Event()
        self._closed = False
        self._rng = random.Random(f"{seed}/sqs")

    def path(self) -> str:
        return f"/{self.account_id}/{self.name}"

    def __len__(self) -> int:
        return len(self._messages) + len(self._inflight)

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """The IoT rule's SQS action: the payload as the body (useBase64 false)."""
        self.stats.published += 1
        kind = topic.split("/")[2] if topic.count("/") >= 3 else topic
        key = f"{kind}/{topic.rsplit('/', 1)[-1]}"
        self.stats.by_topic[key] = self.stats.by_topic.get(key, 0) + 1
        status = payload.get("status")
        if payload.get("eventType") == "JOB_EXECUTION" and status in _FAILURES:
            per_job = self.stats.failures.setdefault(str(payload.get("jobId")), {})
            per_job[status] = per_job.get(status, 0) + 1
        if self.faults.silent:
            self.stats.dropped += 1
            return
        body = json.dumps(payload, separators=(",", ":"))
        copies = 2 if self._rng.random() < self.faults.duplicate_probability else 1
        for _ in range(copies):
            message = _Message(
                str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                body,
                time.monotonic() + self.faults.delay_seconds,
            )
            if self.faults.reorder and self._messages:
                position = self._rng.randrange(len(self._messages) + 1)
                self._messages.insert(position, message)
            else:
                self._messages.append(message)
        while len(self._messages) > MAX_MESSAGES:
            self._messages.popleft()
            self.stats.dropped += 1
        self._arrived.set()

    def _requeue_expired(self) -> None:
        now = time.monotonic()
        for receipt, message in list(self._inflight.items()):
            if message.visible_at <= now:
                del self._inflight[receipt]
                self._messages.appendleft(message)

    def _take(self, limit: int) -> list[_Message]:
        self._requeue_expired()
        now = time.monotonic()
        out: list[_Message] = []
        kept: deque[_Message] = deque()
        while self._messages and len(out) < limit:
            message = self._messages.popleft()
            if message.visible_at > now:
                kept.append(message)
                continue
            message.receives += 1
            message.receipt = f"{message.message_id}#{message.receives}"
            message.visible_at = now + VISIBILITY_TIMEOUT
            self._inflight[message.receipt] = message
            out.append(message)
        self._messages.extendleft(reversed(kept))
        self.stats.delivered += len(out)
        return out

    async def receive(self, limit: int, wait: float) -> list[_Message]:
        deadline = time.monotonic() + wait
        while True:
            taken = self._take(limit)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0 or self._closed:
                return taken
            self._arrived.clear()
            # Delayed messages become visible without a publish: look again at least every
            # half second.
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._arrived.wait()
            except TimeoutError:
                pass

    def release(self, messages: list[_Message]) -> None:
        """Messages taken for a client that went away: visible again at once."""
        for message in reversed(messages):
            if self._inflight.pop(message.receipt, None) is not None:
                message.visible_at = time.monotonic()
                self._messages.appendleft(message)
                self.stats.delivered -= 1
        if messages:
            self._arrived.set()

    def close(self) -> None:
        """Ends waiting long polls, so that the HTTP server can stop at once."""
        self._closed = True
        self._arrived.set()

    def reopen(self) -> None:
        self._closed = False

    def delete(self, receipt: str) -> bool:
        if self._inflight.pop(receipt, None) is None:
            return False
        self.stats.deleted += 1
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "queue_path": self.path(),
            "faults": self.faults.to_json(),
            "published": self.stats.published,
            "delivered": self.stats.delivered,
            "deleted": self.stats.deleted,
            "dropped": self.stats.dropped,
            "waiting": len(self._messages),
            "in_flight": len(self._inflight),
            "by_topic": dict(sorted(self.stats.by_topic.items())),
            "execution_failures": self.stats.failures,
        }


class SqsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _error(e: SqsError) -> web.Response:
    body = {"__type": f"com.amazonaws.sqs#{e.code}", "message": e.message}
    return web.Response(
        status=e.status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": _JSON, "x-amzn-query-error": f"{e.code};Sender"},
    )


def _ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), headers={"Content-Type": _JSON})


async def handle(queue: EventQueue, request: web.Request) -> web.Response:
    """POST / with `X-Amz-Target: AmazonSQS.<Operation>`."""
    target = request.headers.get("X-Amz-Target", "")
    operation = target.removeprefix("AmazonSQS.")
    try:
        if queue.faults.stopped:
            raise SqsError(503, "ServiceUnavailable", "The queue is stopped (simulator fault).")
        try:
            data = json.loads(await request.read() or b"{}")
        except ValueError:
            raise SqsError(400, "InvalidParameterValue", "body is not JSON") from None
        if not isinstance(data, dict):
            raise SqsError(400, "InvalidParameterValue", "body is not a JSON object")
        url = data.get("QueueUrl")
        if not isinstance(url, str) or not url.endswith(queue.path()):
            raise SqsError(400, "QueueDoesNotExist", "The specified queue does not exist.")
        if operation == "ReceiveMessage":
            return await _receive(queue, data, request)
        if operation == "DeleteMessageBatch":
            return _delete_batch(queue, data)
        if operation == "DeleteMessage":
            handle_ = data.get("ReceiptHandle")
            if isinstance(handle_, str):
                queue.delete(handle_)
            return _ok({})
        if operation == "GetQueueAttributes":
            return _ok(
                {
                    "Attributes": {
                        "ApproximateNumberOfMessages": str(len(queue._messages)),
                        "ApproximateNumberOfMessagesNotVisible": str(len(queue._inflight)),
                        "QueueArn": f"arn:aws:sqs:us-east-1:{queue.account_id}:{queue.name}",
                    }
                }
            )
        raise SqsError(400, "InvalidAction", f"operation {operation[:64]!r} is not simulated")
    except SqsError as e:
        return _error(e)


async def _receive(queue: EventQueue, data: dict[str, Any], request: web.Request) -> web.Response:
    limit = data.get("MaxNumberOfMessages", 1)
    wait = data.get("WaitTimeSeconds", 0)
    if not isinstance(limit, int) or not 1 <= limit <= 10:
        raise SqsError(400, "InvalidParameterValue", "MaxNumberOfMessages must be 1 to 10")
    if not isinstance(wait, int) or not 0 <= wait <= MAX_WAIT_SECONDS:
        raise SqsError(400, "InvalidParameterValue", "WaitTimeSeconds must be 0 to 20")
    messages = await queue.receive(limit, float(wait))
    transport = request.transport
    if transport is None or transport.is_closing():
        # The client gave up on its long poll (an exporter stopping or reloading): what
        # it would have been sent stays in the queue for the next receive.
        queue.release(messages)
        return _ok({"Messages": []})
    return _ok(
        {
            "Messages": [
                {
                    "MessageId": m.message_id,
                    "ReceiptHandle": m.receipt,
                    "MD5OfBody": hashlib.md5(m.body.encode()).hexdigest(),
                    "Body": m.body,
                }
                for m in messages
            ]
        }
    )


def _delete_batch(queue: EventQueue, data: dict[str, Any]) -> web.Response:
    entries = data.get("Entries")
    if not isinstance(entries, list) or not 1 <= len(entries) <= 10:
        raise SqsError(400, "InvalidParameterValue", "Entries must hold 1 to 10 entries")
    done, failed = [], []
    for entry in entries:
        if not isinstance(entry, dict):
            raise SqsError(400, "InvalidParameterValue", "an entry is not an object")
        entry_id, receipt = entry.get("Id"), entry.get("ReceiptHandle")
        if isinstance(receipt, str) and queue.delete(receipt):
            done.append({"Id": entry_id})
        else:
            failed.append(
                {
                    "Id": entry_id,
                    "SenderFault": True,
                    "Code": "ReceiptHandleIsInvalid",
                    "Message": "The receipt handle is not valid (expired or already used).",
                }
            )
    return _ok({"Successful": done, "Failed": failed})


def faults_from_json(data: Any, base: EventFaults) -> EventFaults:
    """POST /admin/events body → faults; ValueError names the field."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    out = EventFaults(**base.to_json())
    for key, value in data.items():
        if key == "duplicate_probability":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError("duplicate_probability: expected a number from 0 to 1")
            out.duplicate_probability = float(value)
        elif key == "delay_seconds":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= 900
            ):
                raise ValueError("delay_seconds: expected a number from 0 to 900")
            out.delay_seconds = float(value)
        elif key in ("reorder", "silent", "stopped"):
            if not isinstance(value, bool):
                raise ValueError(f"{key}: expected true or false")
            setattr(out, key, value)
        else:
            raise ValueError(f"{str(key)[:64]}: unknown key")
    return out
