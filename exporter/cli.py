"""Command line: flags, subcommands (run, check-config, simulator, demo), logging, signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from exporter import __version__
from exporter.collector import Collector, Shard
from exporter.config import Config, ConfigError, load_config
from exporter.demo_stack import ALERTMANAGER_ADDRESS, PROMETHEUS_ADDRESS, DemoStack
from exporter.metrics import SelfMetrics
from exporter.otel import OtelExporter, OtelUnavailable
from exporter.server import build_app
from exporter.store import MetricsStore
from exporter.webconfig import WebConfig, load_web_config

log = logging.getLogger("exporter")

DEFAULT_PORT = 9947
SHUTDOWN_DEADLINE = 4.0  # seconds: SIGTERM must end the process within 5
# Probes must work without credentials, as with exporter-toolkit's health endpoints.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"


_FIELD = re.compile(r" ([a-z_]+)=(%[-#0-9.]*[sdirfg])")
_RESERVED_KEYS = frozenset({"ts", "level", "logger", "msg", "exc"})


def event_fields(record: logging.LogRecord) -> tuple[str, list[tuple[str, str]]]:
    """The event and its context as separate keys, for messages written `event key=%s ...`.

    Call sites stay plain `logging` calls whose text reads well anywhere (pytest's caplog
    included); the formatters lift the trailing `key=%s` pairs into fields of their own.
    Any other message is the event whole.
    """
    fmt, args = record.msg, record.args
    if not isinstance(fmt, str) or not isinstance(args, tuple):
        return record.getMessage(), []
    matches = list(_FIELD.finditer(fmt))
    if not matches or len(matches) != len(args) or fmt.count("%") != len(matches):
        return record.getMessage(), []
    start = matches[0].start()
    if fmt[start:] != "".join(m.group(0) for m in matches):
        return record.getMessage(), []
    if any(m.group(1) in _RESERVED_KEYS for m in matches):
        return record.getMessage(), []
    fields = [
        # %r exists for readable quoting in the plain text; a field is quoted by the format.
        (m.group(1), str(arg) if m.group(2) == "%r" else m.group(2) % (arg,))
        for m, arg in zip(matches, args, strict=True)
    ]
    return fmt[:start], fields


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
        f".{int(record.msecs):03d}Z"
    )


class LogfmtFormatter(logging.Formatter):
    """One logfmt line per event: time, level, logger, message, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = event_fields(record)
        line = f"ts={_timestamp(record)} level={record.levelname.lower()} "
        line += f"logger={record.name} msg={_logfmt_value(event)}"
        for key, value in fields:
            line += f" {key}={_logfmt_value(value)}"
        if record.exc_info:
            line += f" exc={_logfmt_value(self.formatException(record.exc_info))}"
        return line


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' "=\n\\'):
        return value
    return json.dumps(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per event, its fields as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        event, fields = event_fields(record)
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": event,
        }
        entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # botocore and aiohttp are chatty at debug and can echo request details; keep them
    # at warning unless asked for explicitly through their own loggers.
    for noisy in ("botocore", "aiobotocore", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parse_listen_address(address: str) -> tuple[str | None, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--web.listen-address {address!r}: expected [host]:port")
    host = host.strip("[]")
    return (host or None), int(port)


def _add_run_flags(parser: argparse.ArgumentParser, with_config: bool = True) -> None:
    if with_config:
        parser.add_argument(
            "--config.file",
            dest="config_file",
            default="config.yaml",
            help="configuration file (default: %(default)s)",
        )
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        help="address to serve metrics on (default: %(default)s)",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path of the metrics endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default="",
        help="TLS, client certificates and basic auth, in the exporter-toolkit format "
        "(docs/security.md)",
    )
    parser.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="enable POST /-/reload (SIGHUP always reloads)",
    )
    parser.add_argument(
        "--web.max-requests",
        dest="max_requests",
        type=int,
        default=64,
        help="concurrent HTTP requests served before answering 503 (default: %(default)s)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=("debug", "info", "warn", "error")
    )
    parser.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=("logfmt", "json")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter",
        description="Prometheus exporter for AWS IoT Jobs. Subcommands: check-config, "
        "simulator, demo (see `aws-iot-jobs-exporter SUBCOMMAND --help`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_run_flags(parser)
    parser.add_argument(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=1,
        help="number of replicas sharing the jobs (default: %(default)s)",
    )
    parser.add_argument(
        "--shard",
        dest="shard",
        type=int,
        default=None,
        help="this replica's shard, 0-based; default: the ordinal of $POD_NAME when "
        "--total-shards > 1",
    )
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _load(path: str) -> Config | int:
    try:
        return load_config(path)
    except ConfigError as exc:
        return _fail(str(exc))


class Reloader:
    """SIGHUP and POST /-/reload share this one path: parse fully, swap only if valid."""

    def __init__(
        self,
        path: str,
        collector: Collector,
        telemetry: SelfMetrics,
        adjust: Callable[[Config], Config] = lambda config: config,
    ) -> None:
        self.path = path
        self.adjust = adjust
        self.collector = collector
        self.telemetry = telemetry
        self._lock = asyncio.Lock()

    def loaded(self) -> None:
        self.telemetry.config_reload_ok.set(1)
        self.telemetry.config_reload_time.set(time.time())

    async def reload(self) -> str | None:
        """None when the new config is running; else the error, with the old one kept."""
        async with self._lock:
            try:
                config = self.adjust(await asyncio.to_thread(load_config, self.path))
                if config.otel != self.collector.config.otel:
                    # The OTLP pipeline is built once; pretending to apply a change to it
                    # would leave operators believing it took effect.
                    raise ConfigError(self.path, "otel", "changes need a restart")
            except ConfigError as exc:
                self.telemetry.config_reload_ok.set(0)
                log.error("reload failed, keeping the running config error=%s", exc)
                return str(exc)
            await self.collector.apply(config)
            self.loaded()
            log.info("configuration reloaded targets=%d", len(config.targets))
            return None


def _check_web_flags(args: argparse.Namespace) -> str | None:
    """What is wrong with the web flags, if anything."""
    try:
        parse_listen_address(args.listen_address)
    except ValueError as exc:
        return str(exc)
    if not args.telemetry_path.startswith("/"):
        return f"--web.telemetry-path {args.telemetry_path!r}: expected a path starting with /"
    if args.max_requests < 1:
        return "--web.max-requests must be at least 1"
    return None


def _web_config(args: argparse.Namespace) -> WebConfig | int | None:
    if not args.web_config_file:
        return None
    try:
        web_config = load_web_config(args.web_config_file)
        web_config.ssl_context()  # certificates and keys are checked now, not at a handshake
    except ConfigError as exc:
        return _fail(str(exc))
    return web_config


async def _serve_until_signalled(
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
    store = MetricsStore()
    telemetry = SelfMetrics()
    try:
        otel = OtelExporter(
            config.otel, store, lambda: {t.name: t for t in collector.config.targets}
        )
    except OtelUnavailable as exc:
        return _fail(str(exc))
    if config.otel.enabled:
        telemetry.registry.register(otel)
    collector = Collector(config, store, telemetry, shard, tracing=otel.tracing)
    reloader = Reloader(args.config_file, collector, telemetry, adjust)
    reloader.loaded()
    reloads: set[asyncio.Task[str | None]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(reloader.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    app = build_app(
        store,
        telemetry,
        lambda: collector.ready,
        args.telemetry_path,
        reload=reloader.reload if args.enable_lifecycle else None,
        max_requests=args.max_requests,
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
        return _fail(f"--web.listen-address {args.listen_address}: {exc.strerror or exc}")
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


def _shard(args: argparse.Namespace) -> Shard | int:
    if args.total_shards < 1:
        return _fail("--total-shards must be at least 1")
    if args.shard is not None:
        if not 0 <= args.shard < args.total_shards:
            return _fail(f"--shard must be from 0 to {args.total_shards - 1}")
        return Shard(args.shard, args.total_shards)
    if args.total_shards == 1:
        return Shard()
    try:
        return Shard.from_pod_name(args.total_shards)
    except ValueError as exc:
        return _fail(str(exc))


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    config = _load(args.config_file)
    if isinstance(config, int):
        return config
    shard = _shard(args)
    if isinstance(shard, int):
        return shard
    problem = _check_web_flags(args)
    if problem:
        return _fail(problem)
    web_config = _web_config(args)
    if isinstance(web_config, int):
        return web_config
    return asyncio.run(_serve_until_signalled(config, args, shard, web_config=web_config))


def check_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter check-config", description="Validate a configuration file."
    )
    parser.add_argument("--config.file", dest="config_file", default="config.yaml")
    args = parser.parse_args(argv)
    config = _load(args.config_file)
    if isinstance(config, int):
        return config
    jobs = sum(len(t.jobs.ids) for t in config.targets)
    discovering = sum(1 for t in config.targets if t.jobs.discover is not None)
    print(
        f"{args.config_file}: valid: {len(config.targets)} target(s), {jobs} explicit job id(s), "
        f"{discovering} target(s) with discovery"
    )
    return 0


def demo(argv: list[str]) -> int:
    """The simulator and the exporter in one process: a living fleet on /metrics."""
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter demo",
        description="Run the exporter against a local simulated AWS IoT Jobs fleet.",
    )
    _add_run_flags(parser, with_config=False)
    parser.add_argument("--config.file", dest="config_file", default=str(REPO_CONFIG / "demo.yaml"))
    parser.add_argument(
        "--scenario",
        default=str(REPO_CONFIG / "simulator" / "demo.yaml"),
        help="simulator scenario",
    )
    parser.add_argument(
        "--simulator.listen-address",
        dest="sim_address",
        default="127.0.0.1:4566",
        help="address of the simulated AWS IoT endpoint (default: %(default)s; port 0 picks one)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=None,
        help="simulated minutes per real second (default: the scenario's; the demo "
        "scenario runs in real time, 1/60). Faster runs get time-scaled rules",
    )
    parser.add_argument(
        "--prometheus.listen-address",
        dest="prometheus_address",
        default=PROMETHEUS_ADDRESS,
        help="where the demo's Prometheus listens, when `prometheus` is on the PATH "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--alertmanager.listen-address",
        dest="alertmanager_address",
        default=ALERTMANAGER_ADDRESS,
        help="where the demo's Alertmanager listens, when `prometheus-alertmanager` or "
        "`alertmanager` is on the PATH (default: %(default)s)",
    )
    parser.add_argument(
        "--no-prometheus",
        dest="prometheus",
        action="store_false",
        help="do not start Prometheus and Alertmanager even when they are installed",
    )
    args = parser.parse_args(argv)
    if args.speed is not None and not (math.isfinite(args.speed) and args.speed >= 0):
        return _fail(f"--speed {args.speed}: expected a number ≥ 0 (1/60 is real time)")
    for flag, address in (
        ("--simulator.listen-address", args.sim_address),
        ("--prometheus.listen-address", args.prometheus_address),
        ("--alertmanager.listen-address", args.alertmanager_address),
    ):
        try:
            parse_listen_address(address)
        except ValueError:
            return _fail(f"{flag} {address!r}: expected [host]:port")
    setup_logging(args.log_level, args.log_format)
    config = _load(args.config_file)
    if isinstance(config, int):
        return config
    if not Path(args.scenario).is_file():
        return _fail(f"{args.scenario}: scenario file not found")
    problem = _check_web_flags(args)
    if problem:
        return _fail(problem)
    web_config = _web_config(args)
    if isinstance(web_config, int):
        return web_config
    # The simulator accepts any signature; these keep botocore from searching for real
    # credentials (and from ever sending real ones to a local endpoint).
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[key] = "demo"
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    return asyncio.run(_demo(config, args, web_config))


async def _demo(config: Config, args: argparse.Namespace, web_config: WebConfig | None) -> int:
    from exporter.simulator import ScenarioError, start_simulator

    sim_host, sim_port = parse_listen_address(args.sim_address)
    try:
        sim = await start_simulator(
            args.scenario, host=sim_host or "127.0.0.1", port=sim_port, speed=args.speed
        )
    except ScenarioError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"--simulator.listen-address {args.sim_address}: {exc.strerror or exc}")
    stack: DemoStack | None = None

    def to_simulator(config: Config) -> Config:
        targets = tuple(dataclasses.replace(t, endpoint_url=sim.url) for t in config.targets)
        return dataclasses.replace(config, targets=targets)

    async def announce(url: str) -> None:
        nonlocal stack
        print(
            f"simulator:    {sim.url}  (state: {sim.url}/_sim/stats, faults: {sim.url}/_sim/faults)"
        )
        print(f"metrics:      {url}")
        sys.stdout.flush()
        if not args.prometheus:
            return
        if web_config is not None:
            print(
                "prometheus:   not started: the demo's Prometheus scrapes without --web.config.file"
            )
            return
        stack = DemoStack(
            urllib.parse.urlsplit(url).netloc,
            speed=sim.clock.speed,
            metrics_path=args.telemetry_path,
            prometheus_address=args.prometheus_address,
            alertmanager_address=args.alertmanager_address,
        )
        for line in await stack.start():
            print(line)
        sys.stdout.flush()

    try:
        return await _serve_until_signalled(
            to_simulator(config), args, Shard(), announce, web_config, to_simulator
        )
    finally:
        if stack is not None:
            await stack.stop()
        await sim.close()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        if command == "check-config":
            return check_config(argv[1:])
        if command == "simulator":
            from exporter.simulator import main as simulator_main

            return simulator_main(argv[1:])
        if command == "demo":
            return demo(argv[1:])
        if command is not None:
            return _fail(f"unknown command {command!r}; expected check-config, simulator or demo")
        return run(argv)
    except KeyboardInterrupt:
        return 130
