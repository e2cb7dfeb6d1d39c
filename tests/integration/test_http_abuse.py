"""Hostile HTTP clients against a really started exporter app: login floods, clients that
never read. A scraper that behaves must keep getting its metrics through both."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from exporter.config import parse_config
from exporter.model import parse_describe_job
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from exporter.webconfig import MAX_UNVERIFIED_LOGINS, load_web_config
from tests.support import ROOT, until

FULL = json.loads((ROOT / "tests" / "data" / "describe_job_full.json").read_text())
PASSWORD = "scraper-password"
# A low cost keeps the test quick; the flood still outruns one bcrypt at a time.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(6)).decode()
PROBES = frozenset({"/healthz", "/readyz"})


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def big_store(jobs: int) -> MetricsStore:
    """A store whose identity body is a few MB, as a fleet of a few thousand jobs gives."""
    target = parse_config(
        "targets: [{name: fleet, region: us-east-1, jobs: {ids: [x]}}]\n", "abuse.yaml"
    ).targets[0]
    store = MetricsStore()
    for i in range(jobs):
        body = copy.deepcopy(FULL)
        body["job"]["jobId"] = f"job-{i:05d}"
        store.put_job(target, f"job-{i:05d}", parse_describe_job(body, time.time()))
    return store


# --- D2: a flood of bad logins ------------------------------------------------------------


async def test_bad_login_flood_never_shuts_out_a_remembered_login(tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  scraper: '{HASH}'\n")
    # Few slots, many attackers: before, each bad login held a slot while it waited for
    # the one bcrypt at a time, and the good scraper found every slot taken.
    app = build_app(MetricsStore(), SelfMetrics(), lambda: True, max_requests=4)
    load_web_config(web_file).install(app, PROBES)
    good_auth = basic("scraper", PASSWORD)
    async with serve(app) as url, aiohttp.ClientSession() as good:
        async with good.get(f"{url}/metrics", headers=good_auth) as first:
            assert first.status == 200  # now remembered

        stop = asyncio.Event()
        seen: dict[int, int] = {}

        async def attacker(http: aiohttp.ClientSession, n: int) -> None:
            headers = basic("scraper" if n % 2 else "mallory", f"guess-{n}")
            for _ in range(200):  # bounded, and stopped as soon as the scrapes are done
                if stop.is_set():
                    return
                async with http.get(f"{url}/metrics", headers=headers) as r:
                    await r.read()
                    seen[r.status] = seen.get(r.status, 0) + 1

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as bad:
            attackers = [asyncio.create_task(attacker(bad, n)) for n in range(32)]
            try:
                # Let the flood fill the bcrypt queue before the scrapes begin.
                await until(lambda: sum(seen.values()) >= 32, what="the flood", interval=0.01)
                statuses = []
                for _ in range(30):
                    async with good.get(f"{url}/metrics", headers=good_auth) as r:
                        await r.read()
                        statuses.append(r.status)
            finally:
                stop.set()
                await asyncio.gather(*attackers)
    assert statuses == [200] * 30
    # Wrong passwords are refused, and past the queue of unverified logins shed at once.
    assert seen.get(401, 0) > 0
    assert seen.get(503, 0) > 0
    assert set(seen) <= {401, 503}
    assert MAX_UNVERIFIED_LOGINS < 32


# --- D3: clients that never read -----------------------------------------------------------


def stuck_client(url: str) -> socket.socket:
    """Sends GET /metrics without Accept-Encoding, then never reads a byte."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    # Set before connect, so the window the server sees is small from the start.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.connect((host, int(port)))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
    return s


async def scrape(http: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    async with http.get(f"{url}/metrics", headers={"Accept-Encoding": "identity"}) as r:
        return r.status, len(await r.read())


async def test_clients_that_never_read_do_not_block_scrapes() -> None:
    store = big_store(1200)
    size = len(store.body())
    assert size > 3_000_000  # beyond what socket buffers absorb: the writes block
    # A long write timeout: what frees the slots here is the stall, not the timeout.
    app = build_app(store, SelfMetrics(), lambda: True, max_requests=4, write_timeout=60)
    async with serve(app) as url, aiohttp.ClientSession() as http:
        stuck = [stuck_client(url) for _ in range(8)]
        try:
            # Until the stuck responses give their slots back, a scrape may get 503.
            async def served() -> bool:
                status = (await scrape(http, url))[0]
                assert status in (200, 503), status
                return status == 200

            await until(served, what="a scrape beside the stuck clients", interval=0.2)
            # From then on, with every stuck socket still open, every scrape is whole.
            for _ in range(5):
                status, length = await scrape(http, url)
                assert status == 200
                assert length >= size
            # The stuck clients were served too (their responses began), and are still
            # waiting: they hold connections, not slots.
            for s in stuck:
                assert s.recv(5, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"HTTP/"
        finally:
            for s in stuck:
                s.close()


async def test_a_response_nobody_reads_is_cut_off_after_the_write_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = big_store(1200)
    size = len(store.body())
    app = build_app(store, SelfMetrics(), lambda: True, max_requests=4, write_timeout=2)
    caplog.set_level(logging.DEBUG, logger="exporter")
    async with serve(app) as url:
        s = stuck_client(url)
        try:
            # Wait until the server gives up, without reading: a closed connection shows
            # as the peer's FIN or RST under whatever the small buffer holds.
            deadline = time.monotonic() + 30
            received, closed = 0, False
            # Time is what is under test here: two write timeouts without reading a byte.
            await asyncio.sleep(4)
            s.setblocking(False)
            while not closed and time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    await asyncio.sleep(0.05)
                    continue
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                received += len(chunk)
            assert closed, "the server kept a response nobody reads open"
            assert received < size  # cut short, not completed
        finally:
            s.close()
        # An expected event, not an error: no traceback from aiohttp's handler either.
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        assert "response cut off" in caplog.text
