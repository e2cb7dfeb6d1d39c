"""Shared fixtures: real servers on free ports, and AWS credentials that can only reach them."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from hypothesis import HealthCheck, settings

from simulator import Simulator, start_simulator
from tests.simulator_client import Admin

# Older imports name these here; tests/support.py is where they live.
from tests.support import ROOT as ROOT
from tests.support import SCENARIOS as SCENARIOS
from tests.support import free_port as free_port

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

# Property tests check properties, not wall time: on more workers than cores an example
# can outlast hypothesis' 200 ms deadline, or its data take long to draw, with nothing wrong.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")


# Parallel runs (`make test`: pytest-xdist, `--dist loadgroup`) hand a worker one test at a
# time, but all the tests of a module with a fixture wider than a test (a Prometheus stack, a
# built wheel, a frozen fleet) go to one worker together, so that the fixture is set up once,
# as its scope promises. The controller does not collect tests: it reads the module's source.
# (xdist's own `xdist_group` marks rename node ids, which pytest 9.2 no longer lets it do.)
_WIDE_FIXTURE = re.compile(
    r"""@pytest\.fixture\([^)]*scope=["'](?:class|module|package|session)["']"""
)


@functools.cache
def _has_wide_fixture(module: str) -> bool:
    path = ROOT / module
    return path.suffix == ".py" and bool(_WIDE_FIXTURE.search(path.read_text()))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ModuleFixturesTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if _has_wide_fixture(module) else super()._split_scope(nodeid)

    return ModuleFixturesTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Under xdist, the tests of minutes go first: started last, one of them would be the
    # run's tail. A serial run keeps the order of the files.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
