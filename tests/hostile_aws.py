"""A hostile AWS endpoint over real HTTP: IoT ListJobs, DescribeJob, ListJobExecutionsForJob
and STS AssumeRole that answer whatever bytes a test sets, at whatever pace and date
(tests/integration/test_hostile_aws.py, tests/integration/test_sweep_hostile.py)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Credentials an STS answer hands out; no output of the exporter may ever contain them.
SECRET_KEY = "hostile-secret-access-key-Zq9xW2"
SESSION_TOKEN = "hostile-session-token-Fh7Kp1"


def job_body(job_id: str, **extra: Any) -> dict[str, Any]:
    job = {
        "jobId": job_id,
        "jobArn": f"arn:aws:iot:eu-west-1:123456789012:job/{job_id}",
        "status": "IN_PROGRESS",
        "targetSelection": "SNAPSHOT",
        "createdAt": 1700000000.0,
        "jobProcessDetails": {"numberOfQueuedThings": 1, "numberOfSucceededThings": 2},
    }
    job.update(extra)
    return {"job": job}


def unclosed_sts_body() -> bytes:
    """Well-formed credentials in XML that never closes: botocore's parser quotes it."""
    return (
        '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        "<AssumeRoleResult><Credentials><AccessKeyId>ASIAHOSTILE0001</AccessKeyId>"
        f"<SecretAccessKey>{SECRET_KEY}</SecretAccessKey>"
        f"<SessionToken>{SESSION_TOKEN}</SessionToken>"
        "<Expiration>2099-01-01T00:00:00Z</Expiration>"
    ).encode()


@dataclass
class Drip:
    """A 200 answer that sends `body` one byte every `every` seconds."""

    body: bytes
    every: float = 0.3


Answer = bytes | Drip | tuple[int, bytes]


@dataclass
class HostileAws:
    # DescribeJob answers by job id; a job without one gets a plain valid body.
    describe: dict[str, Answer] = field(default_factory=dict)
    # ListJobs: the page for a token (None for the first page).
    list_page: Callable[[str | None], Answer] = lambda token: b'{"jobs": []}'
    # ListJobExecutionsForJob: the page for (job id, status, token).
    executions: Callable[[str, str, str | None], Answer] = lambda job_id, status, token: (
        b'{"executionSummaries": []}'
    )
    sts: Answer = field(default_factory=unclosed_sts_body)
    # The Date header of ListJobExecutionsForJob answers (None: aiohttp's, the host's clock).
    executions_date: str | None = None
    # While set and not open, ListJobExecutionsForJob answers wait for it.
    executions_gate: asyncio.Event | None = None
    calls: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _send(
        self, request: web.Request, answer: Answer, headers: dict[str, str] | None = None
    ) -> web.StreamResponse:
        headers = headers or {}
        if isinstance(answer, tuple):
            status, body = answer
            return web.Response(
                status=status, body=body, content_type="application/json", headers=headers
            )
        if isinstance(answer, bytes):
            return web.Response(body=answer, content_type="application/json", headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Length": str(len(answer.body))})
        response.content_type = "application/json"
        await response.prepare(request)
        for i in range(len(answer.body)):
            await response.write(answer.body[i : i + 1])
            await asyncio.sleep(answer.every)
        return response

    async def _describe(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        self.calls[f"DescribeJob:{job_id}"] += 1
        answer = self.describe.get(job_id)
        if answer is None:
            answer = json.dumps(job_body(job_id)).encode()
        return await self._send(request, answer)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.calls["ListJobs"] += 1
        return await self._send(request, self.list_page(request.query.get("nextToken")))

    async def _executions(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["job_id"]
        self.calls[f"ListJobExecutionsForJob:{job_id}"] += 1
        status = request.query.get("status", "")
        if self.executions_gate is not None:
            await self.executions_gate.wait()
        answer = self.executions(job_id, status, request.query.get("nextToken"))
        headers = {"Date": self.executions_date} if self.executions_date else None
        return await self._send(request, answer, headers)

    async def _sts(self, request: web.Request) -> web.StreamResponse:
        self.calls["AssumeRole"] += 1
        if isinstance(self.sts, bytes):
            return web.Response(body=self.sts, content_type="text/xml")
        return await self._send(request, self.sts)

    async def start(self) -> HostileAws:
        app = web.Application()
        app.router.add_get("/jobs", self._list)
        app.router.add_get("/jobs/{job_id}", self._describe)
        app.router.add_get("/jobs/{job_id}/things", self._executions)
        app.router.add_post("/", self._sts)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def listing(*job_ids: str, token: str | None = None, **extra: Any) -> bytes:
    page: dict[str, Any] = {
        "jobs": [{"jobId": j, "status": "IN_PROGRESS", **extra} for j in job_ids]
    }
    if token is not None:
        page["nextToken"] = token
    return json.dumps(page).encode()


def executions_page(*summaries: dict[str, Any], token: str | None = None) -> bytes:
    """A ListJobExecutionsForJob page of `summaries` (thingArn and jobExecutionSummary)."""
    page: dict[str, Any] = {"executionSummaries": list(summaries)}
    if token is not None:
        page["nextToken"] = token
    return json.dumps(page).encode()


def execution(thing: str, status: str, since: float, retry: int = 0) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "status": status,
        "queuedAt": since,
        "lastUpdatedAt": since,
        "executionNumber": 1,
        "retryAttempt": retry,
    }
    if status == "IN_PROGRESS":
        summary["startedAt"] = since
    return {
        "thingArn": f"arn:aws:iot:eu-west-1:123456789012:thing/{thing}",
        "jobExecutionSummary": summary,
    }
