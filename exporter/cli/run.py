"""The run command, the default: the top-level flags, sharding, then serve until signalled."""

from __future__ import annotations

import argparse
import asyncio

from exporter import __version__
from exporter.cli.flags import add_run_flags, fail, load_with_flags, web_flags
from exporter.cli.lifecycle import serve_until_signalled
from exporter.collect.shard import Shard
from exporter.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter",
        description="Prometheus exporter for AWS IoT Jobs. Subcommands: check-config, "
        "example-config, simulator, demo (see `aws-iot-jobs-exporter SUBCOMMAND --help`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_run_flags(parser)
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


def _shard(args: argparse.Namespace) -> Shard | int:
    if args.total_shards < 1:
        return fail("--total-shards must be at least 1")
    if args.shard is not None:
        if not 0 <= args.shard < args.total_shards:
            return fail(f"--shard must be from 0 to {args.total_shards - 1}")
        return Shard(args.shard, args.total_shards)
    if args.total_shards == 1:
        return Shard()
    try:
        return Shard.from_pod_name(args.total_shards)
    except ValueError as exc:
        return fail(str(exc))


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    loaded = load_with_flags(args.config_file, args)
    if isinstance(loaded, int):
        return loaded
    shard = _shard(args)
    if isinstance(shard, int):
        return shard
    web_config = web_flags(args)
    if isinstance(web_config, int):
        return web_config
    return asyncio.run(
        serve_until_signalled(
            loaded.config,
            args,
            shard,
            web_config=web_config,
            # Flags outlast reloads: they replace the metrics section of every file read.
            adjust=loaded.adjust,
        )
    )
