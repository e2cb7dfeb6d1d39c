"""Shared fixtures: real servers on free ports, and AWS credentials that can only reach them."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from simulator import Simulator, start_simulator
from tests.simulator_client import Admin

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "simulator" / "scenarios"

# Tests talk to local endpoints only; fixed dummy credentials keep botocore from looking
# for real ones and make any accidental call to real AWS fail.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
for _key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_key, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server in a thread, shared by the session (tests use distinct job ids)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """The demo fleet, frozen in time: it moves only when a test advances its clock.

    Modules that need another fleet (a thread, faults, a scenario of their own) define
    their own `sim`, which takes precedence.
    """
    s = await start_simulator(SCENARIOS / "demo.yaml", speed=0, no_quotas=True)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def admin(sim: Simulator) -> AsyncIterator[Admin]:
    """The simulator's admin API over HTTP."""
    async with aiohttp.ClientSession() as session:
        yield Admin(session, sim.url)
