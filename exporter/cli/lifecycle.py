"""The running exporter's life: start the server and the collector, reload, shut down."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from exporter.cli.flags import fail, families_of, parse_listen_address
from exporter.collect.shard import Shard
from exporter.collect.supervisor import Supervisor
from exporter.config import Config, ConfigError, load_config
from exporter.detached import run_detached
from exporter.otel import OtelExporter, OtelUnavailable
from exporter.reader import cut, parse_duration
from exporter.selfmetrics import SelfMetrics
from exporter.server import DEFAULT_WRITE_TIMEOUT, build_app
from exporter.store import MetricsStore
from exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

SHUTDOWN_DEADLINE = 4.0  # seconds: SIGTERM must end the process within 5
_RELOAD_ERROR_MAX = 1000
# Probes must work without credentials, as with exporter-toolkit's health endpoints.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class Reloader:
    """SIGHUP and POST /-/reload share this one path: parse fully, swap only if valid."""

    def __init__(
        self,
        path: str,
        collector: Supervisor,
        store: MetricsStore,
        telemetry: SelfMetrics,
        adjust: Callable[[Config], Config] = lambda config: config,
    ) -> None:
        self.path = path
        self.adjust = adjust
        self.collector = collector
        self.store = store
        self.telemetry = telemetry
        self._lock = asyncio.Lock()

    def loaded(self) -> None:
        self.telemetry.config_loaded(True, time.time())

    async def reload(self) -> str | None:
        """None when the new config is running; else the error, with the old one kept.

        Every failure, of any kind, leaves the gauge at 0 and comes back as a short
        message: a reload is triggered from outside (SIGHUP, HTTP) and must never end as
        an exception nobody retrieves, nor leave the gauge saying the last one worked.
        """
        async with self._lock:
            log.info("reloading configuration file=%s", self.path)
            try:
                # A daemon thread: parsing a large file must not hold SIGTERM, and the
                # loop keeps serving scrapes meanwhile.
                config = self.adjust(await run_detached(load_config, self.path))
                if config.otel != self.collector.config.otel:
                    # The OTLP pipeline is built once; pretending to apply a change to it
                    # would leave operators believing it took effect.
                    raise ConfigError(self.path, "otel", "changes need a restart")
                await self.collector.apply(config)
                # After apply, which has dropped the jobs of removed targets.
                families = families_of(config)
                await self.store.select(families, {t.name: t for t in config.targets})
            except ConfigError as exc:
                return self._failed(str(exc))
            except Exception as exc:  # MemoryError, RecursionError, a bug: same outcome
                # The class only: the message of an unexpected error can quote anything.
                return self._failed(f"{self.path}: unexpected {type(exc).__name__}")
            self.loaded()
            log.info(
                "configuration reloaded targets=%d families=%d", len(config.targets), len(families)
            )
            return None

    def _failed(self, error: str) -> str:
        self.telemetry.config_loaded(False, time.time())
        error = cut(error, _RELOAD_ERROR_MAX)
        log.error("reload failed, keeping the running config error=%s", error)
        return error


async def serve_until_signalled(
    config: Config,
    args: argparse.Namespace,
    shard: Shard,
    on_started: Callable[[str], Awaitable[None]] | None = None,
    web_config: WebConfig | None = None,
    adjust: Callable[[Config], Config] = lambda config: config,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    host, port = parse_listen_address(args.listen_address)
    store = MetricsStore(families_of(config))
    telemetry = SelfMetrics()
    try:
        otel = OtelExporter(
            config.otel, store, lambda: {t.name: t for t in collector.config.targets}
        )
    except OtelUnavailable as exc:
        return fail(f"{args.config_file}: {exc}")
    if config.otel.enabled:
        telemetry.watch_otel_push(lambda: (otel.failures, otel.last_success))
    collector = Supervisor(config, store, telemetry, shard, tracing=otel.tracing)
    reloader = Reloader(args.config_file, collector, store, telemetry, adjust)
    reloader.loaded()
    reloads: set[asyncio.Task[str | None]] = set()

    def reload_done(task: asyncio.Task[str | None]) -> None:
        reloads.discard(task)
        # Retrieved here so that nothing is ever reported as "never retrieved"; the
        # reloader has logged and counted every failure already.
        if not task.cancelled() and task.exception() is not None:
            log.error("reload crashed error=%s", type(task.exception()).__name__)

    def on_sighup() -> None:
        task = asyncio.create_task(reloader.reload())
        reloads.add(task)
        task.add_done_callback(reload_done)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    app = build_app(
        store,
        telemetry,
        lambda: collector.ready,
        args.telemetry_path,
        reload=reloader.reload if args.enable_lifecycle else None,
        max_requests=args.max_requests,
        write_timeout=parse_duration(args.write_timeout) or DEFAULT_WRITE_TIMEOUT,
        status=collector.status,
        packages=collector.versions.body,
    )
    if web_config is not None:
        web_config.install(app, OPEN_PATHS)
    ssl_context = web_config.ssl_context() if web_config is not None else None
    # Bounded request lines and headers: a scrape needs little, a hostile client gets 400.
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        max_line_size=8190,
        max_field_size=8190,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        return fail(f"--web.listen-address {args.listen_address}: {exc.strerror or exc}")
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    scheme = "https" if ssl_context is not None else "http"
    # All interfaces: print a URL a browser on this machine can open.
    url = f"{scheme}://{host or 'localhost'}:{bound}{args.telemetry_path}"
    log.info(
        "listening address=%s targets=%d shard=%s",
        url,
        len(config.targets),
        f"{shard.index}/{shard.total}",
    )
    try:
        await collector.start()
        otel.start()
        if on_started is not None:
            await on_started(url)
        await stop.wait()
    finally:
        log.info("shutting down")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SHUTDOWN_DEADLINE):
                for task in list(reloads):
                    task.cancel()
                await collector.stop()
                await otel.shutdown()
                await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0
