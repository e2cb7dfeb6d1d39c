"""What the commands share: their flags, the checks of flags and config file, and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from exporter.config import Config, ConfigError, Metrics, load_config
from exporter.logs import LEVELS
from exporter.reader import cut, parse_duration
from exporter.server import DEFAULT_WRITE_TIMEOUT
from exporter.table import Family, family_name_problem, select_families
from exporter.webconfig import WebConfig, load_web_config

DEFAULT_PORT = 9947


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def load(path: str) -> Config | int:
    try:
        return load_config(path)
    except ConfigError as exc:
        return fail(str(exc))


def parse_listen_address(address: str) -> tuple[str | None, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--web.listen-address {address!r}: expected [host]:port")
    host = host.strip("[]")
    return (host or None), int(port)


def add_run_flags(parser: argparse.ArgumentParser, with_config: bool = True) -> None:
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
    add_metrics_flags(parser)
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


def add_metrics_flags(parser: argparse.ArgumentParser) -> None:
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


def metrics_flags(args: argparse.Namespace) -> Metrics | int | None:
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
                    return fail(f"{flag}: {problem}")
                if name not in names:
                    names.append(name)
        lists[verb] = tuple(names)
    if lists["allow"] and lists["deny"]:
        return fail(
            "--metrics.allow and --metrics.deny: set one or the other, not both: allow keeps "
            "only the families it lists, deny drops the ones it lists"
        )
    if not args.metrics_allow and not args.metrics_deny:
        return None
    return Metrics(allow=lists["allow"], deny=lists["deny"])


def with_metrics(config: Config, metrics: Metrics | None) -> Config:
    """The config with the flags' selection in place of its own, when flags were given."""
    return config if metrics is None else dataclasses.replace(config, metrics=metrics)


@dataclass(frozen=True, slots=True)
class Loaded:
    """A command's configuration: the file as read, with the flags that change it."""

    config: Config
    # The --metrics.* selection, None without those flags; it outlasts reloads.
    metrics: Metrics | None

    def adjust(self, config: Config) -> Config:
        """A configuration read again (a reload), with the same flags applied."""
        return with_metrics(config, self.metrics)


def load_with_flags(path: str, args: argparse.Namespace) -> Loaded | int:
    """What every command starts with: the file loaded, then the --metrics.* flags checked
    and put in place of its metrics section; exit code 2 with the error printed."""
    config = load(path)
    if isinstance(config, int):
        return config
    metrics = metrics_flags(args)
    if isinstance(metrics, int):
        return metrics
    return Loaded(with_metrics(config, metrics), metrics)


def families_of(config: Config) -> tuple[Family, ...]:
    return select_families(config.metrics.allow, config.metrics.deny)


def check_web_flags(args: argparse.Namespace) -> str | None:
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


def web_flags(args: argparse.Namespace) -> WebConfig | int | None:
    """The serving commands' web flags checked, and their --web.config.file read (None
    without one); exit code 2 with the error printed."""
    problem = check_web_flags(args)
    if problem:
        return fail(problem)
    return read_web_config(args)


def read_web_config(args: argparse.Namespace) -> WebConfig | int | None:
    if not args.web_config_file:
        return None
    try:
        web_config = load_web_config(args.web_config_file)
        web_config.ssl_context()  # certificates and keys are checked now, not at a handshake
    except ConfigError as exc:
        return fail(str(exc))
    return web_config
