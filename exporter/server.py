"""aiohttp server: /metrics from the store (never AWS), /healthz, /readyz and a landing page."""

from __future__ import annotations

import asyncio
import gzip
import html
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import generate_latest

from exporter import __version__
from exporter.metrics import SelfMetrics
from exporter.store import MetricsStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Bodies above this are compressed off the event loop (zlib releases the GIL), so a
# large gzip never stalls the collector or other scrapes.
_INLINE_GZIP_LIMIT = 256 * 1024
# Fast compression: at 10,000 jobs the body is tens of MB and level 1 keeps most of
# the gain at a fraction of the CPU.
_GZIP_LEVEL = 1


class MetricsHandler:
    """Serves the store's body; the gzip of the job part is cached per store version."""

    def __init__(self, store: MetricsStore, telemetry: SelfMetrics) -> None:
        self.store = store
        self.telemetry = telemetry
        self._gzip_version = -1
        self._gzip_body = b""
        self._gzip_lock = asyncio.Lock()

    async def _gzipped_jobs(self) -> bytes:
        async with self._gzip_lock:
            version = self.store.version
            if version != self._gzip_version:
                body = self.store.body()
                if len(body) > _INLINE_GZIP_LIMIT:
                    self._gzip_body = await asyncio.to_thread(gzip.compress, body, _GZIP_LEVEL)
                else:
                    self._gzip_body = gzip.compress(body, _GZIP_LEVEL)
                self._gzip_version = version
            return self._gzip_body

    async def handle(self, request: web.Request) -> web.StreamResponse:
        own = generate_latest(self.telemetry.registry)
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            # Concatenated gzip members are one valid gzip stream (RFC 1952 §2.2), so the
            # cached job part and the small self-metrics part are compressed separately.
            body = await self._gzipped_jobs() + gzip.compress(own, _GZIP_LEVEL)
            headers["Content-Encoding"] = "gzip"
        else:
            body = self.store.body() + own
        return web.Response(body=body, headers=headers)


def _landing(telemetry_path: str) -> bytes:
    path = html.escape(telemetry_path)
    return f"""<!DOCTYPE html>
<html><head><title>AWS IoT Jobs Exporter</title></head>
<body><h1>AWS IoT Jobs Exporter</h1><p>Version {html.escape(__version__)}</p>
<ul><li><a href="{path}">Metrics</a></li><li><a href="/healthz">Health</a></li>
<li><a href="/readyz">Readiness</a></li></ul></body></html>
""".encode()


def build_app(
    store: MetricsStore,
    telemetry: SelfMetrics,
    ready: Callable[[], bool],
    telemetry_path: str = "/metrics",
) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    landing = _landing(telemetry_path)

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=landing, content_type="text/html", charset="utf-8")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="waiting for the first collection\n")

    app.router.add_get(telemetry_path, MetricsHandler(store, telemetry).handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if telemetry_path != "/":
        app.router.add_get("/", index)
    return app
