"""A hostile SQS endpoint over real HTTP, in botocore's JSON protocol: ReceiveMessage and
DeleteMessageBatch answer whatever a test sets (tests/integration/test_events_hostile.py)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

QUEUE_PATH = "/123456789012/events"
_JSON = "application/x-amz-json-1.0"


def event_body(job_id: str, event_id: str, **extra: Any) -> str:
    """A failed-execution event as an IoT rule's `SELECT *` queues it."""
    body = {
        "eventType": "JOB_EXECUTION",
        "eventId": event_id,
        "timestamp": 1700000000,
        "operation": "failed",
        "jobId": job_id,
        "thingArn": "arn:aws:iot:eu-west-1:123456789012:thing/t1",
        "status": "FAILED",
    }
    body.update(extra)
    return json.dumps(body)


def messages(*bodies: str, prefix: str = "m") -> list[dict[str, Any]]:
    return [
        {"MessageId": f"{prefix}{i}", "ReceiptHandle": f"{prefix}-handle-{i}", "Body": b}
        for i, b in enumerate(bodies)
    ]


@dataclass
class Stream:
    """A 200 answer sent in chunked encoding, `chunk` bytes `chunks` times (no length)."""

    chunk: bytes
    chunks: int
    # How many chunks went out before the client hung up.
    sent: int = 0


# What ReceiveMessage answers: the JSON body's messages, raw bytes, a stream, or an error
# (status and the error's code).
Receive = list[dict[str, Any]] | bytes | Stream | tuple[int, str]


@dataclass
class HostileSqs:
    # Called per ReceiveMessage with the request's JSON body.
    receive: Callable[[dict[str, Any]], Receive] = lambda data: []
    # Seconds a ReceiveMessage answer waits when it has no message (None: as asked).
    empty_wait: float | None = None
    # DeleteMessageBatch: whether every entry is answered as Failed (with a 200).
    fail_deletes: bool = False
    # GetQueueAttributes answers QueueDoesNotExist.
    missing: bool = False
    calls: Counter[str] = field(default_factory=Counter)
    deleted: list[str] = field(default_factory=list)
    receive_requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    @property
    def queue_url(self) -> str:
        return f"{self.url}{QUEUE_PATH}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers.get("X-Amz-Target", "").removeprefix("AmazonSQS.")
        self.calls[operation] += 1
        data = json.loads(await request.read() or b"{}")
        if operation == "ReceiveMessage":
            self.receive_requests.append(data)
            answer = self.receive(data)
            if isinstance(answer, Stream):
                return await self._stream(request, answer)
            if isinstance(answer, bytes):
                return web.Response(body=answer, headers={"Content-Type": _JSON})
            if isinstance(answer, tuple):
                return error(*answer)
            if not answer:
                asked = float(data.get("WaitTimeSeconds", 0))
                await asyncio.sleep(
                    min(asked, 20.0) if self.empty_wait is None else self.empty_wait
                )
            return _ok({"Messages": answer})
        if operation == "DeleteMessageBatch":
            entries = data.get("Entries", [])
            if self.fail_deletes:
                failed = [
                    {"Id": e["Id"], "SenderFault": False, "Code": "InternalError"} for e in entries
                ]
                return _ok({"Successful": [], "Failed": failed})
            self.deleted.extend(e["ReceiptHandle"] for e in entries)
            return _ok({"Successful": [{"Id": e["Id"]} for e in entries], "Failed": []})
        if operation == "GetQueueAttributes":
            if self.missing:
                return error(400, "QueueDoesNotExist")
            return _ok({"Attributes": {"QueueArn": "arn:aws:sqs:eu-west-1:123456789012:events"}})
        return _ok({})

    async def _stream(self, request: web.Request, answer: Stream) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": _JSON})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(answer.chunks):
                await response.write(answer.chunk)
                answer.sent += 1
                await asyncio.sleep(0.001)
        except (ConnectionError, RuntimeError):
            return response
        await response.write_eof()
        return response

    async def start(self) -> HostileSqs:
        app = web.Application(client_max_size=1024**2)
        app.router.add_post("/", self._handle)
        # Long polls still sleeping end with the server, not 20 s later.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def error(status: int, code: str) -> web.Response:
    """An SQS error as the JSON protocol sends it (code in the body and the query header)."""
    body = {"__type": f"com.amazonaws.sqs#{code}", "message": f"{code} (hostile endpoint)"}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={"Content-Type": _JSON, "x-amzn-query-error": f"{code};Sender"},
    )


def _ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), headers={"Content-Type": _JSON})
