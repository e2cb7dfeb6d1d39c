"""Command line: flags, subcommands (run, check-config, simulator, demo), logging, signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

import aiohttp
from aiohttp import web

from exporter import __version__
from exporter.collector import Collector
from exporter.config import Config, ConfigError, Metrics, load_config
from exporter.demo_stack import (
    ALERTMANAGER_ADDRESS,
    PROMETHEUS_ADDRESS,
    DemoStack,
    scale_simulator_quotas,
    time_factor,
    time_scaled_config,
)
from exporter.detached import run_detached
from exporter.logs import LEVELS, setup_logging
from exporter.otel import OtelExporter, OtelUnavailable, check_packages
from exporter.reader import cut, parse_duration
from exporter.selfmetrics import SelfMetrics
from exporter.server import DEFAULT_WRITE_TIMEOUT, build_app
from exporter.shard import Shard
from exporter.store import MetricsStore
from exporter.table import FAMILIES, Family, family_name_problem, select_families
from exporter.webconfig import WebConfig, load_web_config

log = logging.getLogger("exporter")

DEFAULT_PORT = 9947
SHUTDOWN_DEADLINE = 4.0  # seconds: SIGTERM must end the process within 5
_RELOAD_ERROR_MAX = 1000
# Probes must work without credentials, as with exporter-toolkit's health endpoints.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# The demo's exporter side ships in the package: pip unpacks a wheel into a directory, so
# this is a real file, which a reload re-reads like any other.
DEMO_CONFIG = str(resources.files("exporter") / "demo.yaml")


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
    _add_metrics_flags(parser)
    parser.add_argument(
        "--web.write-timeout",
        dest="write_timeout",
        default=f"{DEFAULT_WRITE_TIMEOUT:g}s",
        help="cut off a response whose client reads nothing for this long (default: %(default)s)",
    )
    parser.add_argument("--log.level", dest="log_level", default="info", choices=LEVELS)
    parser.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=("logfmt", "json")
    )


def _add_metrics_flags(parser: argparse.ArgumentParser) -> None:
    for verb, meaning in (("allow", "export only these"), ("deny", "do not export these")):
        parser.add_argument(
            f"--metrics.{verb}",
            dest=f"metrics_{verb}",
            action="append",
            default=[],
            metavar="NAME[,NAME...]",
            help=f"job metric families: {meaning} (repeatable or comma-separated; replaces "
            "the config file's metrics section; allow and deny cannot be combined)",
        )


def _metrics_flags(args: argparse.Namespace) -> Metrics | int | None:
    """The families the flags select, None without the flags, or exit code 2."""
    lists: dict[str, tuple[str, ...]] = {}
    for verb in ("allow", "deny"):
        flag, names = f"--metrics.{verb}", []
        for value in getattr(args, f"metrics_{verb}"):
            for name in (part.strip() for part in value.split(",")):
                if not name:
                    continue
                problem = family_name_problem(name)
                if problem is not None:
                    return _fail(f"{flag}: {problem}")
                if name not in names:
                    names.append(name)
        lists[verb] = tuple(names)
    if lists["allow"] and lists["deny"]:
        return _fail(
            "--metrics.allow and --metrics.deny: set one or the other, not both: allow keeps "
            "only the families it lists, deny drops the ones it lists"
        )
    if not args.metrics_allow and not args.metrics_deny:
        return None
    return Metrics(allow=lists["allow"], deny=lists["deny"])


def _with_metrics(config: Config, metrics: Metrics | None) -> Config:
    """The config with the flags' selection in place of its own, when flags were given."""
    return config if metrics is None else dataclasses.replace(config, metrics=metrics)


def families_of(config: Config) -> tuple[Family, ...]:
    return select_families(config.metrics.allow, config.metrics.deny)


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
        self.telemetry.config_reload_ok.set(1)
        self.telemetry.config_reload_time.set(time.time())

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
        self.telemetry.config_reload_ok.set(0)
        error = cut(error, _RELOAD_ERROR_MAX)
        log.error("reload failed, keeping the running config error=%s", error)
        return error


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
    if parse_duration(args.write_timeout) is None:
        return f"--web.write-timeout {cut(repr(args.write_timeout))}: expected a duration like 30s"
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
    store = MetricsStore(families_of(config))
    telemetry = SelfMetrics()
    try:
        otel = OtelExporter(
            config.otel, store, lambda: {t.name: t for t in collector.config.targets}
        )
    except OtelUnavailable as exc:
        return _fail(f"{args.config_file}: {exc}")
    if config.otel.enabled:
        telemetry.watch_otel_push(lambda: (otel.failures, otel.last_success))
    collector = Collector(config, store, telemetry, shard, tracing=otel.tracing)
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
    metrics = _metrics_flags(args)
    if isinstance(metrics, int):
        return metrics
    config = _with_metrics(config, metrics)
    shard = _shard(args)
    if isinstance(shard, int):
        return shard
    problem = _check_web_flags(args)
    if problem:
        return _fail(problem)
    web_config = _web_config(args)
    if isinstance(web_config, int):
        return web_config
    return asyncio.run(
        _serve_until_signalled(
            config,
            args,
            shard,
            web_config=web_config,
            # Flags outlast reloads: they replace the metrics section of every file read.
            adjust=lambda new: _with_metrics(new, metrics),
        )
    )


def check_config(argv: list[str]) -> int:
    """Exit 0 valid, 2 invalid; with --probe, 1 when a target's AWS calls fail."""
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter check-config",
        description="Validate a configuration file, and the packages it needs. With --probe, "
        "also call AWS once per target with the exporter's credentials.",
    )
    parser.add_argument("--config.file", dest="config_file", default="config.yaml")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="per target: resolve credentials (and the role), GetCallerIdentity, ListJobs "
        "(one job) and DescribeJob (one job); exit 1 if any target fails",
    )
    # The run command's flags that change what the file means, checked the same way.
    _add_metrics_flags(parser)
    args = parser.parse_args(argv)
    config = _load(args.config_file)
    if isinstance(config, int):
        return config
    metrics = _metrics_flags(args)
    if isinstance(metrics, int):
        return metrics
    config = _with_metrics(config, metrics)
    try:
        check_packages(config.otel)
    except OtelUnavailable as exc:
        return _fail(f"{args.config_file}: {exc}")
    jobs = sum(len(t.jobs.ids) for t in config.targets)
    discovering = sum(1 for t in config.targets if t.jobs.discover is not None)
    print(
        f"{args.config_file}: valid: {len(config.targets)} target(s), {jobs} explicit job id(s), "
        f"{discovering} target(s) with discovery, "
        f"{len(families_of(config))} of {len(FAMILIES)} job metric families"
    )
    if not args.probe:
        return 0
    from exporter.probe import probe

    results = asyncio.run(probe(config))
    for result in results:
        print(result.line())
    failed = sum(1 for r in results if not r.ok)
    print(f"probe: {len(results) - failed} of {len(results)} target(s) OK")
    return 1 if failed else 0


def demo(argv: list[str]) -> int:
    """The simulator and the exporter in one process: a living fleet on /metrics."""
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter demo",
        description="Run the exporter against a local simulated AWS IoT Jobs fleet.",
    )
    _add_run_flags(parser, with_config=False)
    parser.add_argument("--config.file", dest="config_file", default=DEMO_CONFIG)
    parser.add_argument(
        "--scenario",
        default="demo",
        help="simulator scenario: a file, or a bundled name (abort, demo, scale)",
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
    metrics = _metrics_flags(args)
    if isinstance(metrics, int):
        return metrics
    from simulator.scenario import bundled_scenario

    if not Path(args.scenario).is_file() and bundled_scenario(args.scenario) is None:
        return _fail(f"{args.scenario}: no such scenario file, nor a bundled scenario")
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
    return asyncio.run(_demo(config, args, web_config, metrics))


async def _demo(
    config: Config,
    args: argparse.Namespace,
    web_config: WebConfig | None,
    metrics: Metrics | None = None,
) -> int:
    from simulator import ScenarioError, start_simulator

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
    # A sped-up fleet gets an exporter as sped up as the rules Prometheus evaluates, and
    # an API that answers as many more calls per real second.
    factor = time_factor(sim.clock.speed)
    if factor > 1:
        try:
            await scale_simulator_quotas(sim.url, sim.quotas.rates, factor)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await sim.close()
            return _fail(f"simulator: cannot set its quotas: {exc}")

    def to_simulator(config: Config) -> Config:
        targets = tuple(
            dataclasses.replace(
                t,
                endpoint_url=sim.url,
                events=t.events
                and dataclasses.replace(t.events, sqs_queue_url=sim.queue_url, endpoint_url=None),
            )
            for t in config.targets
        )
        config = dataclasses.replace(_with_metrics(config, metrics), targets=targets)
        return time_scaled_config(config, factor)

    async def announce(url: str) -> None:
        nonlocal stack
        # Only URLs that answer a GET: the AWS endpoints themselves are listed on the
        # simulator's own page, the queue's URL is for SQS calls only.
        print(
            f"simulator:    {sim.url}/  (AWS IoT Jobs and SQS; any dummy key pair works; "
            f"state: {sim.url}/_sim/stats, faults: {sim.url}/_sim/faults)"
        )
        print(f"events:       {sim.url}/_sim/events  (the queue of job events the exporter reads)")
        split = urllib.parse.urlsplit(url)
        if args.telemetry_path in ("/", "/status"):
            print(f"metrics:      {url}")
        else:
            print(f"metrics:      {url}  (status: {split.scheme}://{split.netloc}/status)")
        sys.stdout.flush()
        if not args.prometheus:
            return
        if web_config is not None:
            print(
                "prometheus:   not started: the demo's Prometheus scrapes without --web.config.file"
            )
            return
        stack = DemoStack(
            split.netloc,
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
            from simulator import main as simulator_main

            return simulator_main(argv[1:])
        if command == "demo":
            return demo(argv[1:])
        if command is not None:
            return _fail(f"unknown command {command!r}; expected check-config, simulator or demo")
        return run(argv)
    except KeyboardInterrupt:
        return 130
