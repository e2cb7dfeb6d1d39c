"""Entry point of the benchmarks' child processes: `python -m bench.worker ROLE PARAMS_JSON`."""

from __future__ import annotations

import json
import logging
import sys


def main() -> None:
    role, params = sys.argv[1], json.loads(sys.argv[2])
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    if role == "serve-store":
        from bench.servers import serve_store

        serve_store(**params)
    elif role == "serve-static":
        from bench.servers import serve_static

        serve_static(**params)
    elif role == "serve-prom":
        from bench.servers import serve_prometheus_client

        serve_prometheus_client(**params)
    elif role == "fill-store":
        from bench.memory import fill_store

        fill_store(**params)
    elif role == "collect":
        from bench.collection import run_collector

        run_collector(**params)
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
