"""A tiny real HTTP endpoint speaking IoT's REST-JSON, serving canned DescribeJob/ListJobs bodies.

moto lacks several DescribeJob fields (scheduling, retry, exponential rollout, timed-out
counts...); this serves exactly the JSON AWS would, so botocore's real parser sees it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    error_type: str | None = None


@dataclass
class IotEndpoint:
    jobs: dict[str, Any] = field(default_factory=dict)
    # Per job id, replies served before the canned body (throttling, 5xx, broken bodies).
    queued: dict[str, list[Reply]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    # (monotonic time, job id) of every DescribeJob, to check how calls are spread.
    times: list[tuple[float, str]] = field(default_factory=list)
    url: str = ""
    # A broken paginator: every page points back to the first.
    repeat_token: bool = False
    _runner: web.AppRunner | None = None

    def error(self, job_id: str, status: int, code: str, times: int = 1) -> None:
        body = json.dumps({"message": f"simulated {code}"}).encode()
        self.queued.setdefault(job_id, []).extend([Reply(status, body, code)] * times)

    def raw(self, job_id: str, body: bytes, times: int = 1) -> None:
        self.queued.setdefault(job_id, []).extend([Reply(200, body)] * times)

    async def _describe(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        self.calls[f"DescribeJob:{job_id}"] += 1
        self.times.append((time.monotonic(), job_id))
        pending = self.queued.get(job_id)
        if pending:
            reply = pending.pop(0)
            headers = {"x-amzn-ErrorType": reply.error_type} if reply.error_type else {}
            return web.Response(
                status=reply.status,
                body=reply.body,
                headers=headers,
                content_type="application/json",
            )
        if job_id not in self.jobs:
            return web.json_response(
                {"message": f"Job {job_id} not found"},
                status=404,
                headers={"x-amzn-ErrorType": "ResourceNotFoundException"},
            )
        return web.json_response(self.jobs[job_id])

    async def _list(self, request: web.Request) -> web.Response:
        self.calls["ListJobs"] += 1
        summaries = [
            {
                k: v
                for k, v in body["job"].items()
                if k
                in (
                    "jobArn",
                    "jobId",
                    "status",
                    "targetSelection",
                    "createdAt",
                    "lastUpdatedAt",
                    "completedAt",
                    "isConcurrent",
                )
            }
            for body in self.jobs.values()
        ]
        size = int(request.query.get("maxResults", "50"))
        start = int(request.query.get("nextToken", "0"))
        page: dict[str, Any] = {"jobs": summaries[start : start + size]}
        if start + size < len(summaries):
            page["nextToken"] = "0" if self.repeat_token else str(start + size)
        return web.json_response(page)

    async def start(self) -> IotEndpoint:
        app = web.Application()
        app.router.add_get("/jobs", self._list)
        app.router.add_get("/jobs/{job_id}", self._describe)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
