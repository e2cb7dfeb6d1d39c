"""The `simulator` subcommand: serve a scenario until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from exporter.logs import LEVELS, setup_logging
from simulator.scenario import ScenarioError
from simulator.server import start_simulator

log = logging.getLogger("simulator")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter simulator",
        description="Serve a simulated AWS IoT Jobs control plane (ListJobs, DescribeJob, "
        "ListJobExecutionsForJob) for a scenario file.",
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8980),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8980; port 0 picks one)",
    )
    p.add_argument(
        "--scenario",
        required=True,
        metavar="FILE",
        help="scenario YAML file, or a bundled name: abort, demo, scale",
    )
    p.add_argument(
        "--jobs", type=int, metavar="N", help="number of generated jobs (scale scenarios)"
    )
    p.add_argument("--no-quotas", action="store_true", help="lift the per-operation API quotas")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (overrides the scenario's)")
    p.add_argument(
        "--speed",
        type=float,
        metavar="X",
        help="simulated minutes per real second (overrides the scenario's)",
    )
    p.add_argument(
        "--log.level", dest="log_level", default="info", choices=LEVELS, help="(default: info)"
    )
    # The spelling of earlier versions, kept working but no longer shown.
    p.add_argument(
        "--log-level", dest="log_level", choices=(*LEVELS, "warning"), help=argparse.SUPPRESS
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=("logfmt", "json"),
        help="(default: logfmt)",
    )
    return p


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.listen
    sim = await start_simulator(
        args.scenario,
        host=host,
        port=port,
        jobs=args.jobs,
        no_quotas=args.no_quotas,
        seed=args.seed,
        speed=args.speed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("simulator stopping")
        await sim.close()


def main(argv: list[str] | None = None) -> int:
    """Run the simulator; 0 on a signal, 2 on a bad scenario or arguments, 1 if it cannot listen."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        # The same lines as the exporter's: one style to read and to parse.
        setup_logging(args.log_level, args.log_format)
    try:
        asyncio.run(_serve(args))
    except ScenarioError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except OSError as e:
        sys.stderr.write(
            f"error: cannot listen on {args.listen[0]}:{args.listen[1]}: {e.strerror or e}\n"
        )
        return 1
    return 0
