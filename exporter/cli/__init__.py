"""Command line: picks the subcommand (run, check-config, example-config, simulator, demo).

One module per concern: `flags` (what the commands share), `lifecycle` (serving, reload
on SIGHUP, shutdown), and one module per command: `run`, `check`, `demo`.
"""

from __future__ import annotations

import sys

from exporter.cli import check, demo, run
from exporter.cli.flags import fail


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        if command == "check-config":
            return check.main(argv[1:])
        if command == "example-config":
            return check.example_main(argv[1:])
        if command == "simulator":
            from simulator import main as simulator_main

            return simulator_main(argv[1:])
        if command == "demo":
            return demo.main(argv[1:])
        if command is not None:
            return fail(
                f"unknown command {command!r}; expected check-config, example-config, "
                "simulator or demo"
            )
        return run.main(argv)
    except KeyboardInterrupt:
        return 130
