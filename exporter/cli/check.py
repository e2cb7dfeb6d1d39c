"""The config commands: check-config validates a file (with --probe, calls AWS once);
example-config prints the example configuration."""

from __future__ import annotations

import argparse
import asyncio
import sys
from importlib import resources

from exporter.cli.flags import add_metrics_flags, fail, families_of, load_with_flags
from exporter.otel import OtelUnavailable, check_packages
from exporter.table import FAMILIES

# Every key with its default and meaning, shipped in the package: a pip user has no
# checkout to copy it from.
EXAMPLE_CONFIG = resources.files("exporter") / "example.yaml"


def example_main(argv: list[str]) -> int:
    """The example-config command: print the example configuration."""
    parser = argparse.ArgumentParser(
        prog="aws-iot-jobs-exporter example-config",
        description="Print the example configuration (every key, with its default and "
        "meaning) to start a config.yaml from: "
        "aws-iot-jobs-exporter example-config > config.yaml",
    )
    parser.parse_args(argv)
    sys.stdout.write(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    return 0


def main(argv: list[str]) -> int:
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
        help="per target: resolve credentials (and assume role_arn), GetCallerIdentity, "
        "ListJobs (one job, with discovery), DescribeJob (one job), unless sweeps are off "
        "ListJobExecutionsForJob (one page of that job) and, with events:, SQS "
        "GetQueueAttributes (consumes no message); exit 1 if any target fails",
    )
    # The run command's flags that change what the file means, checked the same way.
    add_metrics_flags(parser)
    args = parser.parse_args(argv)
    loaded = load_with_flags(args.config_file, args)
    if isinstance(loaded, int):
        return loaded
    config = loaded.config
    try:
        check_packages(config.otel)
    except OtelUnavailable as exc:
        return fail(f"{args.config_file}: {exc}")
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
