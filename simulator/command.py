"""The `simulator` subcommand: serve a scenario until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import sys
import time

from simulator.scenario import ScenarioError
from simulator.server import start_simulator

log = logging.getLogger("simulator")

# Prometheus' level names, as the exporter spells them in its flags and lines.
LEVELS = ("debug", "info", "warn", "error")
_LEVEL_NAMES = {"WARNING": "warn", "CRITICAL": "error"}
# A message written `event key=%s key=%r`: its trailing pairs become fields of their own.
_FIELDS = re.compile(r"(?: [a-z_]+=%[sr])+$")
_FIELD = re.compile(r" ([a-z_]+)=%[sr]")
# A logfmt value left bare: printable ASCII but space, '"', '=' and '\'.
_BARE = re.compile(r"[!#-<>-\[\]-~]+")


def _fields(record: logging.LogRecord) -> tuple[str, list[tuple[str, str]]]:
    """The event and its `key=value` context; any other message is the event whole."""
    fmt, args = record.msg, record.args
    if isinstance(fmt, str) and isinstance(args, tuple):
        tail = _FIELDS.search(fmt)
        if tail is not None and fmt.count("%") == len(args) == tail.group(0).count("%"):
            keys = _FIELD.findall(tail.group(0))
            return fmt[: tail.start()], [(k, str(v)) for k, v in zip(keys, args, strict=True)]
    return record.getMessage(), []


def _logfmt(value: str) -> str:
    # json.dumps escapes every control and non-ASCII character: one line, safe to print.
    return value if _BARE.fullmatch(value) else json.dumps(value)


class _Formatter(logging.Formatter):
    """One line per event: logfmt (`ts= level= logger= msg=` then fields) or JSON."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        event, fields = _fields(record)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": _LEVEL_NAMES.get(record.levelname, record.levelname.lower()),
            "logger": record.name,
            "msg": event,
            **dict(fields),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(entry)
        return " ".join(f"{key}={_logfmt(value)}" for key, value in entry.items())


def setup_logging(level: str, style: str) -> None:
    """One handler on stderr for the whole process, in the exporter's line format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    # aiohttp logs every request at info; botocore (the service model) chats at debug.
    for noisy in ("aiohttp.access", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
        help="scenario YAML file, or a bundled name: abort, demo, packages, scale",
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
