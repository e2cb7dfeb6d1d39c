"""A hostile fleet index and package catalog over real HTTP: GetBucketsAggregation,
GetStatistics and ListPackages answer whatever a test sets, beside a DescribeJob that
stays sane (tests/integration/test_packages_hostile.py)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ACCOUNT = "123456789012"
REGION = "eu-west-1"

Answer = bytes | tuple[int, bytes]


def error(code: str, status: int = 400, message: str = "no") -> tuple[int, bytes]:
    return status, json.dumps({"__type": code, "message": message}).encode()


def buckets_body(total: int, **versions: int) -> bytes:
    return json.dumps(
        {
            "totalCount": total,
            "buckets": [{"keyValue": k, "count": n} for k, n in versions.items()],
        }
    ).encode()


def count_body(count: Any) -> bytes:
    return json.dumps({"statistics": {"count": count}}).encode()


def version_arn(package: str, version: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:package/{package}/version/{version}"


def group_arn(group: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{group}"


def thing_arn(thing: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{thing}"


def job_body(job_id: str, versions: list[str], targets: list[str]) -> bytes:
    return json.dumps(
        {
            "job": {
                "jobId": job_id,
                "jobArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:job/{job_id}",
                "status": "IN_PROGRESS",
                "targetSelection": "SNAPSHOT",
                "targets": targets,
                "destinationPackageVersions": versions,
                "jobProcessDetails": {"numberOfSucceededThings": 3, "numberOfQueuedThings": 2},
            }
        }
    ).encode()


@dataclass
class HostilePackages:
    # GetBucketsAggregation by the aggregation field's package name.
    buckets: dict[str, Answer] = field(default_factory=dict)
    # GetStatistics by query string; `statistics_default` for the others.
    statistics: dict[str, Answer] = field(default_factory=dict)
    statistics_default: Callable[[str], Answer] = lambda query: count_body(0)
    # ListPackages pages by token (None: the first page).
    packages: Callable[[str | None], Answer] = lambda token: b'{"packageSummaries": []}'
    describe: dict[str, Answer] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    queries: list[str] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    @staticmethod
    def _send(answer: Answer) -> web.Response:
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        return web.Response(status=status, body=body, content_type="application/json")

    async def _buckets(self, request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        field_name = str(data.get("aggregationField", ""))
        package = field_name.removeprefix("shadow.name.$package.reported.").removesuffix(".version")
        self.calls[f"GetBucketsAggregation:{package}"] += 1
        self.queries.append(str(data.get("queryString")))
        return self._send(self.buckets.get(package, buckets_body(0)))

    async def _statistics(self, request: web.Request) -> web.Response:
        query = str(json.loads(await request.read()).get("queryString"))
        self.calls["GetStatistics"] += 1
        self.queries.append(query)
        answer = self.statistics.get(query)
        return self._send(answer if answer is not None else self.statistics_default(query))

    async def _packages(self, request: web.Request) -> web.Response:
        self.calls["ListPackages"] += 1
        return self._send(self.packages(request.query.get("nextToken")))

    async def _describe(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        self.calls["DescribeJob"] += 1
        return self._send(self.describe.get(job_id, error("ResourceNotFoundException", 404)))

    async def _list_jobs(self, request: web.Request) -> web.Response:
        return self._send(b'{"jobs": []}')

    async def start(self) -> HostilePackages:
        app = web.Application()
        app.router.add_post("/indices/buckets", self._buckets)
        app.router.add_post("/indices/statistics", self._statistics)
        app.router.add_get("/packages", self._packages)
        app.router.add_get("/jobs/{job_id}", self._describe)
        app.router.add_get("/jobs", self._list_jobs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
