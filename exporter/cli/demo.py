"""The demo command: the simulator and the exporter in one process, Prometheus if installed."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import sys
import urllib.parse
from importlib import resources
from pathlib import Path

import aiohttp

from exporter.cli.flags import (
    Loaded,
    add_run_flags,
    fail,
    load_with_flags,
    parse_listen_address,
    web_flags,
)
from exporter.cli.lifecycle import serve_until_signalled
from exporter.collect.shard import Shard
from exporter.config import Config
from exporter.demo_stack import (
    ALERTMANAGER_ADDRESS,
    PROMETHEUS_ADDRESS,
    DemoStack,
    scale_simulator_quotas,
    time_factor,
    time_scaled_config,
)
from exporter.logs import setup_logging
from exporter.webconfig import WebConfig

# The demo's exporter side ships in the package: pip unpacks a wheel into a directory, so
# this is a real file, which a reload re-reads like any other.
DEMO_CONFIG = str(resources.files("exporter") / "demo.yaml")


def main(argv: list[str]) -> int:
    """The simulator and the exporter in one process: a living fleet on /metrics."""
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter demo",
        description="Run the exporter against a local simulated AWS IoT Jobs fleet.",
    )
    add_run_flags(parser, with_config=False)
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
        return fail(f"--speed {args.speed}: expected a number ≥ 0 (1/60 is real time)")
    for flag, address in (
        ("--simulator.listen-address", args.sim_address),
        ("--prometheus.listen-address", args.prometheus_address),
        ("--alertmanager.listen-address", args.alertmanager_address),
    ):
        try:
            parse_listen_address(address)
        except ValueError:
            return fail(f"{flag} {address!r}: expected [host]:port")
    setup_logging(args.log_level, args.log_format)
    loaded = load_with_flags(args.config_file, args)
    if isinstance(loaded, int):
        return loaded
    from simulator.scenario import bundled_scenario

    if not Path(args.scenario).is_file() and bundled_scenario(args.scenario) is None:
        return fail(f"{args.scenario}: no such scenario file, nor a bundled scenario")
    web_config = web_flags(args)
    if isinstance(web_config, int):
        return web_config
    # The simulator accepts any signature; these keep botocore from searching for real
    # credentials (and from ever sending real ones to a local endpoint).
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[key] = "demo"
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    return asyncio.run(_demo(loaded, args, web_config))


async def _demo(loaded: Loaded, args: argparse.Namespace, web_config: WebConfig | None) -> int:
    from simulator import ScenarioError, start_simulator

    sim_host, sim_port = parse_listen_address(args.sim_address)
    try:
        sim = await start_simulator(
            args.scenario, host=sim_host or "127.0.0.1", port=sim_port, speed=args.speed
        )
    except ScenarioError as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"--simulator.listen-address {args.sim_address}: {exc.strerror or exc}")
    stack: DemoStack | None = None
    # A sped-up fleet gets an exporter as sped up as the rules Prometheus evaluates, and
    # an API that answers as many more calls per real second.
    factor = time_factor(sim.clock.speed)
    if factor > 1:
        try:
            await scale_simulator_quotas(sim.url, sim.quotas.rates, factor)
        except (aiohttp.ClientError, TimeoutError) as exc:
            await sim.close()
            return fail(f"simulator: cannot set its quotas: {exc}")

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
        config = dataclasses.replace(loaded.adjust(config), targets=targets)
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
        return await serve_until_signalled(
            to_simulator(loaded.config), args, Shard(), announce, web_config, to_simulator
        )
    finally:
        if stack is not None:
            await stack.stop()
        await sim.close()
