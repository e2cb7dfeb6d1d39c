"""The demo prints only URLs that show something, whichever build of Prometheus and
Alertmanager runs, and the simulator answers a browser at its root.

Debian's prometheus 2.42 has no new UI (/alerts and /rules are 404, /graph redirects to
/classic/graph); Debian's Alertmanager has no web UI at all. Fakes of each build stand in
here; tests/e2e/test_demo_launcher.py and tests/e2e/test_wheel.py fetch what the installed ones
answer.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter import demo_stack
from exporter.demo_stack import DemoStack
from simulator import start_simulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
URL = re.compile(r"https?://[^\s()<>,;]+")
GROUPS = {"data": {"groups": [{"name": "a", "rules": [{}, {}]}, {"name": "b", "rules": [{}]}]}}


def _page(text: str = "page") -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text)

    return handle


def _redirect(to: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(to)

    return handle


async def _rules(request: web.Request) -> web.StreamResponse:
    return web.json_response(GROUPS)


# path → handler of each build; anything else is 404, as on the real servers.
PROMETHEUS_BUILDS: dict[str, dict[str, Handler]] = {
    "debian-2.42": {
        "/graph": _redirect("/classic/graph"),
        "/classic/graph": _page(),
        "/classic/alerts": _page(),
        "/classic/rules": _page(),
    },
    "react-2.x": {"/graph": _page(), "/alerts": _page(), "/rules": _page()},
    "3.x": {
        "/graph": _redirect("/query"),
        "/query": _page(),
        "/alerts": _page(),
        "/rules": _page(),
    },
    "api-only": {},
}
WANTED = {
    "debian-2.42": ("/classic/alerts", "/classic/rules", "/classic/graph"),
    "react-2.x": ("/alerts", "/rules", "/graph"),
    "3.x": ("/alerts", "/rules", "/query"),
    "api-only": ("/api/v1/alerts", "/api/v1/rules", "/api/v1/query?query=ALERTS"),
}


async def _serve(routes: dict[str, Handler]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    for path in ("/api/v1/alerts", "/api/v1/query"):
        app.router.add_get(path, _page("{}"))
    app.router.add_get("/api/v1/rules", _rules)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, allow_redirects=False) as response:
        return response.status


class _Child:
    log_path = Path("/tmp/prometheus.log")


@pytest.mark.parametrize("build", sorted(PROMETHEUS_BUILDS))
async def test_prometheus_pages_are_those_the_build_serves(build: str) -> None:
    runner, address = await _serve(PROMETHEUS_BUILDS[build])
    try:
        stack = DemoStack("127.0.0.1:9947", prometheus_address=address)
        lines = await stack._prometheus_lines(_Child())  # type: ignore[arg-type]
        alerts, rules, query = WANTED[build]
        assert lines[0] == (
            f"prometheus:   http://{address}{alerts}  "
            f"(rules: http://{address}{rules}, query: http://{address}{query})"
        )
        assert lines[1].strip() == "3 rules in 2 groups loaded"
        async with aiohttp.ClientSession() as session:
            for url in URL.findall("\n".join(lines)):
                assert await _status(session, url) == 200, url
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("ui", [False, True], ids=["debian", "upstream"])
@pytest.mark.parametrize("amtool", [None, "/usr/bin/amtool"], ids=["no-amtool", "amtool"])
async def test_alertmanager_is_shown_where_alerts_can_be_seen(
    ui: bool, amtool: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = {"/": _page("Alertmanager"), "/api/v2/alerts": _page("[]")}
    if ui:
        routes["/script.js"] = _page("elm")
    runner, address = await _serve(routes)
    monkeypatch.setattr(demo_stack.shutil, "which", lambda name: amtool)
    try:
        line = await DemoStack("x:1", alertmanager_address=address)._alertmanager_line()
    finally:
        await runner.cleanup()
    base = f"http://{address}"
    if ui:
        assert line.startswith(f"alertmanager: {base}/#/alerts  (API: {base}/api/v2/alerts")
    else:
        assert line.startswith(f"alertmanager: {base}/api/v2/alerts  (no web UI in this build")
    assert (f"amtool alert query --alertmanager.url={base}" in line) == bool(amtool)


@pytest.fixture
async def simulator() -> AsyncIterator[Any]:
    sim = await start_simulator("demo", port=0, speed=0)
    yield sim
    await sim.close()


async def test_the_simulator_root_page_says_what_it_serves(simulator: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(simulator.url + "/") as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            page = await response.text()
        assert html.escape(simulator.queue_url) in page
        assert "dummy key pair" in page
        for endpoint in ("GET /jobs", "/_sim/faults", "/_sim/events", "/_sim/clock", "POST /"):
            assert endpoint in page, endpoint
        # Every link on the page answers.
        links = re.findall(r'href="([^"]+)"', page)
        assert len(links) >= 4
        for link in links:
            assert await _status(session, f"{simulator.url}/{link}") == 200, link
        # POST / is still the SQS endpoint.
        async with session.post(
            simulator.url + "/",
            json={"QueueUrl": simulator.queue_url},
            headers={"X-Amz-Target": "AmazonSQS.GetQueueAttributes"},
        ) as response:
            assert response.status == 200
            assert "Attributes" in await response.json(content_type=None)
