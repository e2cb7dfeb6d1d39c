"""aiohttp server: /metrics from the store (never AWS), probes, /status and a landing page."""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from exporter import __version__, gzipjoin
from exporter.negotiation import qualities
from exporter.reader import cut
from exporter.selfmetrics import SelfMetrics
from exporter.status import (
    JSON_TYPE,
    STATUS_REFRESH_SECONDS,
    Status,
    StatusPages,
    wants_json,
)
from exporter.store import MetricsStore, Segment

log = logging.getLogger(__name__)

# The app's status pages, for what inspects them (how many renders polls have cost).
STATUS_PAGES = web.AppKey("status_pages", StatusPages)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
MAX_REQUEST_BODY = 64 * 1024
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# A response whose client accepts no byte for this long is cut off (--web.write-timeout).
# Prometheus gives up on a scrape after scrape_timeout (10 s by default), so no reader
# that is still waiting is cut.
DEFAULT_WRITE_TIMEOUT = 30.0
# A response that has made no progress for this long gives its in-flight slot back: the
# limit is there to bound work, and a client that does not read costs no work, only a
# connection, until the write timeout. Without this, 64 clients that never read shut
# every scraper out for as long as they keep their sockets open.
STALL_GRACE = 1.0
_STALL_CHECK = 0.25
# Stalled responses kept open at once, per in-flight slot; past it a stalled one is cut
# off at once, so that sockets that never read cannot pile up without bound.
_STALLED_PER_SLOT = 4
# Reload errors in a response body: a config error is already bounded, this is the cap.
_RELOAD_ERROR_MAX = 1000
# Segments above this are compressed off the event loop (zlib releases the GIL), so a
# large gzip never stalls the collector or other scrapes.
_INLINE_GZIP_LIMIT = 256 * 1024
# Fast compression: at 10,000 jobs the body is tens of MB and level 1 keeps most of
# the gain at a fraction of the CPU.
_GZIP_LEVEL = 1


# A plain body is written in parts of at least this size (but a larger segment, whole).
_WRITE_RUN = 1024 * 1024
# A plain body up to this size is joined into one bytes (once per change) and written whole.
_JOIN_LIMIT = 16 * 1024 * 1024


class MetricsHandler:
    """Serves the store's segments as they are, or as one gzip member built from cached parts.

    Each segment is compressed once per version into a raw deflate part
    (`exporter.gzipjoin`); a scrape joins the parts between one gzip header and one
    trailer whose CRC-32 is combined from the parts' own. After a collection cycle only
    the segments that changed are compressed again, and only their families' CRCs
    combined again.
    """

    def __init__(
        self,
        store: MetricsStore,
        telemetry: SelfMetrics,
        packages: Callable[[], bytes] | None = None,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        # The package families (versions.VersionStore.body): rendered when their counts
        # change, joined here ahead of the self-metrics.
        self.packages = packages
        # Per format (OpenMetrics or not), as the segments are: the compressed segments,
        self._parts: dict[bool, dict[tuple[str, int], tuple[int, gzipjoin.Part]]] = {}
        # per family the segment versions it was folded from and the folded run,
        self._families: dict[bool, dict[int, tuple[tuple[tuple[str, int], ...], gzipjoin.Run]]] = {}
        # and the joined body of a store version.
        self._jobs: dict[bool, tuple[int, bytes, gzipjoin.Run]] = {}
        # and the whole body: (the jobs' bytes, the self-metrics' bytes, the body).
        self._bodies: dict[bool, tuple[bytes, bytes, bytes]] = {}
        # Per format, the plain body's parts: (store version, self-metrics, parts, length).
        self._plain: dict[bool, tuple[int, bytes, list[bytes | bytearray], int]] = {}
        # Per format, (package bytes, self-metrics bytes, the two joined).
        self._own_joined: dict[bool, tuple[bytes, bytes, bytes]] = {}
        self._gzip_lock = asyncio.Lock()

    async def _gzip_jobs(self, openmetrics: bool) -> tuple[bytes, gzipjoin.Run]:
        """The gzip header and the jobs' raw deflate (not final), with the jobs' text run.

        Joined once per store version and format.
        """
        async with self._gzip_lock:
            version = self.store.version
            jobs = self._jobs.get(openmetrics)
            if jobs is None or jobs[0] != version:
                joined = await self._join(self.store.segments(openmetrics), openmetrics)
                jobs = self._jobs[openmetrics] = (version, *joined)
            return jobs[1], jobs[2]

    async def _join(self, segments: list[Segment], openmetrics: bool) -> tuple[bytes, gzipjoin.Run]:
        deflates: list[bytes] = []
        families: dict[int, list[tuple[tuple[str, int], int, gzipjoin.Run]]] = {}
        parts = self._parts.setdefault(openmetrics, {})
        folds = self._families.setdefault(openmetrics, {})
        for segment in segments:
            cached = parts.get(segment.key)
            if cached is None or cached[0] != segment.version:
                if len(segment.data) > _INLINE_GZIP_LIMIT:
                    part = await asyncio.to_thread(gzipjoin.compress, segment.data, _GZIP_LEVEL)
                else:
                    part = gzipjoin.compress(segment.data, _GZIP_LEVEL)
                cached = (segment.version, part)
                parts[segment.key] = cached
            deflates.append(cached[1].deflate)
            families.setdefault(segment.key[1], []).append(
                (segment.key, segment.version, cached[1].run)
            )
        # Two levels, so that a change to a few families folds those families and the
        # family runs, not every segment: the combination is Python arithmetic.
        runs = []
        for family, members in families.items():
            versions = tuple((key[0], version) for key, version, _ in members)
            folded = folds.get(family)
            if folded is None or folded[0] != versions:
                folded = (versions, gzipjoin.fold(run for _, _, run in members))
                folds[family] = folded
            runs.append(folded[1])
        # Families and segments that left the body (a bucket emptied) leave the caches.
        for family in folds.keys() - families.keys():
            del folds[family]
        for key in parts.keys() - {segment.key for segment in segments}:
            del parts[key]
        # The header leads the cached bytes: one write fewer per scrape.
        return gzipjoin.header(_GZIP_LEVEL) + b"".join(deflates), gzipjoin.fold(runs)

    async def _gzip_body(self, openmetrics: bool, own: bytes) -> bytes:
        """The whole gzip body: the cached jobs' part, then the self-metrics and trailer.

        Joined again only when the store or the rendered self-metrics changed (`own` is
        the object SelfMetrics.render keeps): with nothing changed a scrape sends bytes
        made before it, as a constant body would be.
        """
        jobs, run = await self._gzip_jobs(openmetrics)
        cached = self._bodies.get(openmetrics)
        if cached is not None and cached[0] is jobs and cached[1] is own:
            return cached[2]
        tail = gzipjoin.compress(own, _GZIP_LEVEL)
        body = b"".join((jobs, tail.deflate, gzipjoin.trailer(run.then(tail.run), _GZIP_LEVEL)))
        self._bodies[openmetrics] = (jobs, own, body)
        return body

    def _plain_parts(self, openmetrics: bool, own: bytes) -> tuple[list[bytes | bytearray], int]:
        """The parts of a plain body and their length, listed once per version of the
        store and of the rendered self-metrics."""
        version = self.store.version
        cached = self._plain.get(openmetrics)
        if cached is not None and cached[0] == version and cached[1] is own:
            return cached[2], cached[3]
        # Small segments (headers, a bucket's few lines) are joined into runs of at least
        # _WRITE_RUN bytes: a write costs the same fixed time whatever its size, and at
        # 1,000 jobs hundreds of small writes made a scrape twice a static body's. Large
        # segments are written as they are, so a change copies only the small ones.
        parts: list[bytes | bytearray] = []
        run = bytearray()
        for data in (*(segment.data for segment in self.store.segments(openmetrics)), own):
            if len(data) >= _WRITE_RUN:
                if run:
                    parts.append(bytes(run))
                    run = bytearray()
                parts.append(data)
            else:
                run += data
                if len(run) >= _WRITE_RUN:
                    parts.append(bytes(run))
                    run = bytearray()
        if run:
            parts.append(bytes(run))
        length = sum(len(part) for part in parts)
        if length <= _JOIN_LIMIT and len(parts) > 1:
            # Small enough to copy once per change: written at once, as a static server
            # writes it.
            parts = [b"".join(parts)]
        self._plain[openmetrics] = (version, own, parts, length)
        return parts, length

    def _own(self, openmetrics: bool) -> bytes:
        """The package families and the self-metrics, joined again only when either
        changed: each is the same bytes object until then, and the caches above key on
        the object."""
        own = self.telemetry.render(openmetrics)
        if self.packages is None:
            return own
        packages = self.packages()
        cached = self._own_joined.get(openmetrics)
        if cached is None or cached[0] is not packages or cached[1] is not own:
            cached = (packages, own, packages + own)
            self._own_joined[openmetrics] = cached
        return cached[2]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # The job families are pre-rendered in both formats (they differ in counter
        # headers and exemplars), the self-metrics rendered when they change
        # (SelfMetrics.render), and OpenMetrics' `# EOF` ends them.
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        own = self._own(openmetrics)
        headers = {
            "Content-Type": OPENMETRICS_TYPE if openmetrics else CONTENT_TYPE,
            "Vary": "Accept, Accept-Encoding",
        }
        parts: list[bytes | bytearray]
        if wants_gzip(request.headers.get("Accept-Encoding", "")):
            # One gzip member: curl and browsers decode only the first of several.
            headers["Content-Encoding"] = "gzip"
            parts = [await self._gzip_body(openmetrics, own)]
            length = len(parts[0])
        else:
            parts, length = self._plain_parts(openmetrics, own)
        # Streamed, even when it is one part: the write is awaited inside the middleware's
        # write timeout, so a client that never reads is cut off instead of holding a copy
        # of the body in the transport's buffer after its slot was handed back.
        response = web.StreamResponse(headers=headers)
        response.content_length = length
        try:
            await response.prepare(request)
            if request.method != "HEAD":
                for part in parts:
                    await response.write(part)
            await response.write_eof()
        except ConnectionError:
            # The scraper went away mid-body (`curl ... | head -c 100`, a scrape timeout):
            # not a server error. Returned, not raised, so that aiohttp closes the
            # connection quietly instead of logging an error with a traceback.
            log.debug(
                "client closed the connection mid-response path=%s remote=%s",
                request.path,
                request.remote,
            )
        return response


def wants_openmetrics(accept: str) -> bool:
    """True when the scraper ranks OpenMetrics at least as high as the text format."""
    q = qualities(accept)
    om = q.get("application/openmetrics-text", 0.0)
    text = max(q.get("text/plain", -1.0), q.get("*/*", -1.0))
    return om > 0 and om >= text


def wants_gzip(accept_encoding: str) -> bool:
    """True when gzip is acceptable: named with q > 0, or `*` with q > 0 and gzip unnamed."""
    q = qualities(accept_encoding)
    return q.get("gzip", q.get("*", 0.0)) > 0


def _landing(telemetry_path: str, status: bool = False) -> bytes:
    path = html.escape(telemetry_path)
    status_link = '<li><a href="/status">Status</a></li>' if status else ""
    return f"""<!DOCTYPE html>
<html><head><title>AWS IoT Jobs Exporter</title></head>
<body><h1>AWS IoT Jobs Exporter</h1><p>Version {html.escape(__version__)}</p>
<ul><li><a href="{path}">Metrics</a></li>{status_link}<li><a href="/healthz">Health</a></li>
<li><a href="/readyz">Readiness</a></li></ul></body></html>
""".encode()


Reload = Callable[[], Awaitable[str | None]]


class _StallWatch:
    """Watches one response's write buffer: hands back its slot once it stalls, and ends
    it (through `deadline`) once it has made no progress for `timeout` seconds.

    Progress is the transport's write buffer emptying or changing size; aiohttp stops
    writing while the buffer is above its high-water mark, so a client that never reads
    leaves it full and unchanged.
    """

    def __init__(
        self,
        request: web.Request,
        deadline: asyncio.Timeout,
        timeout: float,
        on_stall: Callable[[], bool],
    ) -> None:
        self._transport = request.transport
        self._deadline = deadline
        self._timeout = timeout
        self._on_stall = on_stall
        self._loop = asyncio.get_running_loop()
        self._size = 0
        self._progress = self._loop.time()
        self.stalled = False
        self.expired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(_STALL_CHECK, self._tick)

    def _tick(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._handle = None
            return
        now = self._loop.time()
        size = transport.get_write_buffer_size()
        if size == 0 or size != self._size:
            self._size, self._progress = size, now
        idle = now - self._progress
        if not self.stalled and idle >= min(STALL_GRACE, self._timeout):
            self.stalled = True
            if not self._on_stall():
                idle = self._timeout  # no room for another stalled client: cut it now
        if idle >= self._timeout:
            self.expired = True
            self._handle = None
            self._deadline.reschedule(now)
            return
        self._handle = self._loop.call_later(_STALL_CHECK, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def limit_in_flight(
    limit: int,
    exempt: frozenset[str] = frozenset(),
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
) -> Middleware:
    """At most `limit` requests served at once; more get 503 rather than queueing.

    Paths in `exempt` (health probes) are always served: a flood of scrapes or of bad
    logins must not make a kubelet restart a healthy process. A response whose client
    stops reading gives its slot back after STALL_GRACE and is cut off after
    `write_timeout` seconds without progress.
    """
    in_flight = 0
    stalled = 0
    max_stalled = limit * _STALLED_PER_SLOT

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight, stalled
        if request.path in exempt:
            return await handler(request)
        if in_flight >= limit:
            return web.Response(status=503, text="too many concurrent requests\n")
        in_flight += 1
        holding = True

        def on_stall() -> bool:
            nonlocal in_flight, stalled, holding
            in_flight -= 1
            holding = False
            stalled += 1
            return stalled <= max_stalled

        watch: _StallWatch | None = None
        try:
            async with asyncio.timeout(None) as deadline:
                watch = _StallWatch(request, deadline, write_timeout, on_stall)
                return await handler(request)
        except TimeoutError:
            if watch is None or not watch.expired:
                raise
            # Cancelled mid-write by the watch: drop the connection, since its response
            # is cut short, and return a response that aiohttp fails to write quietly.
            if request.transport is not None:
                request.transport.abort()
            log.debug(
                "response cut off: the client read nothing for %ss path=%s remote=%s",
                f"{write_timeout:g}",
                request.path,
                request.remote,
            )
            return web.Response(status=408)
        finally:
            if watch is not None:
                watch.stop()
                if watch.stalled:
                    stalled -= 1
            if holding:
                in_flight -= 1

    return middleware


def build_app(
    store: MetricsStore,
    telemetry: SelfMetrics,
    ready: Callable[[], bool],
    telemetry_path: str = "/metrics",
    reload: Reload | None = None,
    max_requests: int = 64,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    status: Callable[[], Status] | None = None,
    status_refresh: float = STATUS_REFRESH_SECONDS,
    packages: Callable[[], bytes] | None = None,
) -> web.Application:
    """The exporter's routes. `reload` enables POST /-/reload (--web.enable-lifecycle);
    `status` serves /status (HTML, or JSON with `Accept: application/json`), rendered at
    most once per `status_refresh` seconds and format; `packages` gives the package
    families' bytes for /metrics (the same object until they change)."""
    app = web.Application(
        client_max_size=MAX_REQUEST_BODY,
        middlewares=[limit_in_flight(max_requests, PROBE_PATHS, write_timeout)],
    )
    landing = _landing(telemetry_path, status is not None and telemetry_path != "/status")

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=landing, content_type="text/html", charset="utf-8")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="waiting for the first collection\n")

    app.router.add_get(telemetry_path, MetricsHandler(store, telemetry, packages).handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if telemetry_path != "/":
        app.router.add_get("/", index)
    if status is not None and telemetry_path != "/status":
        pages = StatusPages(status, telemetry_path, status_refresh)
        app[STATUS_PAGES] = pages

        async def status_page(request: web.Request) -> web.Response:
            headers = {"Vary": "Accept", "Cache-Control": "no-store"}
            as_json = wants_json(request.headers.get("Accept", ""))
            body = pages.page(as_json)
            if body is None:
                return web.Response(status=503, text="status page unavailable\n")
            if as_json:
                content_type = JSON_TYPE
            else:
                content_type = "text/html"
                # The page has no script; should escaping ever miss, none may run.
                headers["Content-Security-Policy"] = (
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
                )
            return web.Response(
                body=body, content_type=content_type, charset="utf-8", headers=headers
            )

        app.router.add_get("/status", status_page)
    if reload is not None:

        async def do_reload(request: web.Request) -> web.Response:
            try:
                error = await reload()
            except Exception as exc:  # the reloader reports its own; this is a backstop
                error = f"unexpected {type(exc).__name__}"
            if error is None:
                return web.Response(text="configuration reloaded\n")
            return web.Response(
                status=500, text=f"reload failed: {cut(error, _RELOAD_ERROR_MAX)}\n"
            )

        app.router.add_post("/-/reload", do_reload)
    return app
