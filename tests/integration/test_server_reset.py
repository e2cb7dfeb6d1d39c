"""A scraper that closes /metrics early (`curl ... | head -c 100`) is no server error."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from exporter.config import parse_config
from exporter.model import parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from tests.support import ROOT

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())
# Jobs enough for a body far larger than the socket buffers of both ends, and than the
# 16 MiB up to which a plain body is written in one part: the server is still writing its
# parts when the client goes.
JOBS = 5000


@pytest.fixture
async def big() -> AsyncIterator[tuple[str, int]]:
    store, telemetry = MetricsStore(), SelfMetrics()
    telemetry.init_target("fleet")
    target = parse_config("targets: [{name: fleet, region: eu-west-1, jobs: {ids: [x]}}]").targets[
        0
    ]
    for i in range(JOBS):
        body = {**FULL, "job": {**FULL["job"], "jobId": f"job-{i}"}}
        store.put_job(target, f"job-{i}", parse_describe_job(body, 1.0))
    server = TestServer(build_app(store, telemetry, lambda: True), host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield str(server.make_url("")).rstrip("/"), server.port
    await server.close()


def read_a_little_and_close(port: int, encoding: str) -> bytes:
    """What `curl -s URL | head -c 100` does: read the first bytes, then close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {encoding}\r\n\r\n".encode()
        )
        first = sock.recv(100)
        # An abortive close (RST), as a killed pipe's reader leaves it: the server's next
        # write fails with a reset, not only an end of stream.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return first


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_a_client_that_closes_early_logs_no_error(
    big: tuple[str, int], encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, port = big
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        body = await r.read()
    whole = len(body)
    assert whole > 16 * 1024 * 1024, "the body must outgrow the socket buffers and one part"

    def seen() -> bool:
        return any(
            "client closed the connection mid-response" in r.getMessage() for r in caplog.records
        )

    # Three closes at least; for the plain body, until one reset came mid-write (the last
    # parts can be buffered whole before the reset arrives, on a busy machine often).
    for i in range(20):
        first = await asyncio.to_thread(read_a_little_and_close, port, encoding)
        assert first.startswith(b"HTTP/1.1 200")
        if i >= 2 and (encoding != "identity" or seen()):
            break
    # The server is serving the next scrape, and has said nothing above debug.
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        assert r.status == 200
        again = await r.read()
    # The job series whole again (process metrics such as CPU time may have moved since).
    assert again.count(b"\naws_iot_job_") == body.count(b"\naws_iot_job_") > 0
    loud = [
        f"{r.levelname} {r.name}: {r.getMessage()} {r.exc_info and r.exc_info[1]!r}"
        for r in caplog.records
        if r.levelno >= logging.WARNING
    ]
    assert loud == []
    if encoding == "identity":
        # It was seen: the writes failed mid-body, and said so at debug.
        assert seen()
