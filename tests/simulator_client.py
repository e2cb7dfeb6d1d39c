"""Test helpers for the simulator: clients, polling, shape checks, admin calls."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
from aiobotocore.session import get_session
from botocore.config import Config

T = TypeVar("T")

DUMMY_CREDENTIALS = {
    "aws_access_key_id": "AKIDSIMULATOR",
    "aws_secret_access_key": "simulator-secret",
}


@asynccontextmanager
async def iot_client(
    url: str, region: str = "eu-west-1", attempts: int = 1, validate: bool = True
) -> AsyncIterator[Any]:
    """A real aiobotocore IoT client pointed at the simulator, retries off by default.

    `validate=False` turns off botocore's client-side parameter checks, to see what the
    server says about out-of-range values.
    """
    config = Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        parameter_validation=validate,
    )
    async with _session().create_client(
        "iot", region_name=region, endpoint_url=url, config=config, **DUMMY_CREDENTIALS
    ) as client:
        yield client


@functools.cache
def _session() -> Any:
    # One session for the process: loading botocore's iot model is the slow part of
    # creating a client, and the session caches it.
    return get_session()


def capture_raw(client: Any) -> list[dict[str, Any]]:
    """Record each raw HTTP response (status, headers, body bytes) the client receives."""
    seen: list[dict[str, Any]] = []

    def hook(response_dict: dict[str, Any], **_: Any) -> None:
        seen.append(response_dict)

    client.meta.events.register("before-parse.iot.*", hook)
    return seen


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, deadline: float = 10.0, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something other than None or False; fail at the deadline."""
    # A deadline rather than asyncio.timeout: a probe in flight is never cancelled midway.
    end = time.monotonic() + deadline
    while True:
        value = await probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"condition not met within {deadline} s")
        await asyncio.sleep(interval)


class Admin:
    """The simulator's /_sim API over HTTP."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def _call(
        self, method: str, path: str, body: Any = None, status: int | None = None
    ) -> Any:
        async with self.session.request(method, self.url + path, json=body) as r:
            data = await r.json()
            if status is not None and r.status != status:
                raise AssertionError(f"{method} {path}: HTTP {r.status} {data}")
            if status is None and r.status >= 400:
                raise AssertionError(f"{method} {path}: HTTP {r.status} {data}")
            return data

    async def stats(self) -> Any:
        return await self._call("GET", "/_sim/stats")

    async def job(self, job_id: str) -> Any:
        return (await self.stats())["jobs"].get(job_id)

    async def faults(self, body: Any | None = None) -> Any:
        if body is None:
            return await self._call("GET", "/_sim/faults")
        return await self._call("POST", "/_sim/faults", body)

    async def advance(self, minutes: float) -> Any:
        return await self._call("POST", "/_sim/clock", {"advance_minutes": minutes})

    async def speed(self, speed: float) -> Any:
        return await self._call("POST", "/_sim/clock", {"speed": speed})

    async def create_job(self, job: dict[str, Any]) -> Any:
        return await self._call("POST", "/_sim/jobs", job, status=201)

    async def cancel(self, job_id: str, **body: Any) -> Any:
        return await self._call("POST", f"/_sim/jobs/{job_id}/cancel", body)

    async def delete(self, job_id: str) -> Any:
        return await self._call("POST", f"/_sim/jobs/{job_id}/delete", {})

    async def add_things(self, group: str, things: list[str] | None = None, count: int = 0) -> Any:
        return await self._call(
            "POST", f"/_sim/groups/{group}/add", {"things": things or [], "count": count}
        )

    async def remove_things(
        self, group: str, things: list[str] | None = None, count: int = 0
    ) -> Any:
        body = {"things": things or [], "count": count}
        return await self._call("POST", f"/_sim/groups/{group}/remove", body)

    async def rollout(self, job_id: str) -> Any:
        return await self._call("GET", f"/_sim/jobs/{job_id}/rollout")

    async def packages(self) -> Any:
        """The truth of the $package shadows: per version, group and job, and as indexed."""
        return await self._call("GET", "/_sim/packages")

    async def indexing(self, **changes: Any) -> Any:
        """Fleet indexing's status and lag; changes only the keys given."""
        if not changes:
            return await self._call("GET", "/_sim/indexing")
        return await self._call("POST", "/_sim/indexing", changes)

    async def report_version(self, package: str, group: str, version: str, count: int = 1) -> Any:
        body = {"group": group, "version": version, "count": count}
        return await self._call("POST", f"/_sim/packages/{package}/report", body)


def shape_problems(value: Any, shape: Any, path: str = "$") -> list[str]:
    """Compare raw JSON with a botocore shape: unknown members, missing required, wrong types.

    An empty list means botocore's model accepts every member as sent.
    """
    problems: list[str] = []
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected object for {shape.name}, got {type(value).__name__}"]
        wire = {m.serialization.get("name", name): (name, m) for name, m in shape.members.items()}
        for key, item in value.items():
            if key not in wire:
                problems.append(f"{path}.{key}: not a member of {shape.name}")
                continue
            problems += shape_problems(item, wire[key][1], f"{path}.{key}")
        for required in shape.required_members:
            member = shape.members[required]
            if member.serialization.get("name", required) not in value:
                problems.append(f"{path}.{required}: required by {shape.name}, missing")
    elif kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected list, got {type(value).__name__}"]
        for i, item in enumerate(value):
            problems += shape_problems(item, shape.member, f"{path}[{i}]")
    elif kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected map, got {type(value).__name__}"]
        for key, item in value.items():
            problems += shape_problems(key, shape.key, f"{path}<key>")
            problems += shape_problems(item, shape.value, f"{path}[{key!r}]")
    elif kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected string, got {type(value).__name__}"]
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            problems.append(f"{path}: {value!r} not in {shape.name} enum")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected integer, got {value!r}")
    elif kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected number, got {value!r}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            problems.append(f"{path}: expected boolean, got {value!r}")
    elif kind == "timestamp":
        # REST-JSON timestamps default to epoch seconds.
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{path}: expected epoch seconds, got {value!r}")
    else:
        problems.append(f"{path}: unhandled shape type {kind}")
    if isinstance(value, str | list) and kind in ("string", "list"):
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if low is not None and len(value) < low:
            problems.append(f"{path}: shorter than {low}")
        if high is not None and len(value) > high:
            problems.append(f"{path}: longer than {high}")
    return problems
