"""What every benchmark shares: the scale fleet, its DescribeJob bodies, child processes, RSS."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from exporter.config import Discover, Jobs, Target
from exporter.model import JobSnapshot, parse_describe_job

ROOT = Path(__file__).resolve().parent.parent
SCALE_SCENARIO = ROOT / "simulator" / "scenarios" / "scale.yaml"
REGION = "eu-west-1"
# A SigV4 credential scope is how the simulator learns the region of a request.
SIGV4_HEADER = {
    "Authorization": f"AWS4-HMAC-SHA256 Credential=bench/20250101/{REGION}/iot/aws4_request"
}


def bench_target(endpoint_url: str | None = None, discover: bool = False) -> Target:
    """One target with a static label, as a typical production config has."""
    return Target(
        name="production",
        region=REGION,
        jobs=Jobs(discover=Discover() if discover else None),
        endpoint_url=endpoint_url,
        labels=(("environment", "prod"),),
    )


def job_ids(count: int) -> list[str]:
    """The ids the scale scenario generates."""
    return [f"scale-job-{i:05d}" for i in range(count)]


async def _fetch_bodies(url: str, ids: list[str], concurrency: int = 16) -> list[Any]:
    semaphore = asyncio.Semaphore(concurrency)

    async with aiohttp.ClientSession(headers=SIGV4_HEADER) as session:

        async def one(job_id: str) -> Any:
            async with semaphore, session.get(f"{url}/jobs/{job_id}") as response:
                response.raise_for_status()
                return await response.json()

        return list(await asyncio.gather(*(one(i) for i in ids)))


def fetch_describe_bodies(url: str, count: int) -> list[Any]:
    """The DescribeJob JSON of every job of a running scale simulator, as AWS would send it."""
    return asyncio.run(_fetch_bodies(url, job_ids(count)))


def write_fixture(directory: Path, count: int, bodies: list[Any]) -> Path:
    """The first `count` bodies, with one fetch time so every reader renders the same values."""
    path = directory / f"describe-{count}.json"
    path.write_text(json.dumps({"fetched_at": round(time.time()), "bodies": bodies[:count]}))
    return path


def load_bodies(path: str | os.PathLike[str]) -> tuple[float, list[Any]]:
    data = json.loads(Path(path).read_text())
    return float(data["fetched_at"]), list(data["bodies"])


def snapshot_of(body: Any, fetched_at: float) -> JobSnapshot:
    """A body parsed by the exporter's own model, as after two describes a minute apart."""
    first = parse_describe_job(body, fetched_at - 60.0)
    return parse_describe_job(body, fetched_at).with_observed_rate(first)


def load_snapshots(path: str | os.PathLike[str]) -> list[JobSnapshot]:
    fetched_at, bodies = load_bodies(path)
    return [snapshot_of(body, fetched_at) for body in bodies]


def touched(snapshot: JobSnapshot, step: int) -> JobSnapshot:
    """The same job a moment later: one more execution succeeded, as an active job does."""
    executions = tuple(
        (state, value + step if state == "succeeded" else value)
        for state, value in (snapshot.executions or (("succeeded", 0),))
    )
    return dataclasses.replace(
        snapshot,
        executions=executions,
        last_updated_at=(snapshot.last_updated_at or 0.0) + step,
    )


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Child:
    """A `python -m bench.worker ROLE` process that answers with JSON lines on stdout."""

    def __init__(self, role: str, **params: Any) -> None:
        self.role = role
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", role, json.dumps(params)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self, timeout: float = 900.0) -> dict[str, Any]:
        """The child's next JSON line; raises if it exits first."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line:
                message: dict[str, Any] = json.loads(line)
                return message
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.role} exited with {self.process.returncode}")
        raise TimeoutError(f"{self.role}: no answer within {timeout} s")

    def close(self) -> None:
        """Closing stdin asks the child to finish; it is killed if it does not."""
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def child(role: str, **params: Any) -> Iterator[Child]:
    process = Child(role, **params)
    try:
        yield process
    finally:
        process.close()


def reply(message: dict[str, Any]) -> None:
    """A child's answer to its parent: one JSON line."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def wait_for_parent() -> None:
    """Blocks until the parent closes our stdin."""
    sys.stdin.read()
