"""The exporter as users run it: `python -m exporter` in a child process, read over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT

NS = "aws_iot_jobs_exporter"

Sample = tuple[str, dict[str, str], float]


def free_port() -> int:
    """A port nobody listens on now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


class ExporterProcess:
    """`with ExporterProcess(config, directory) as exporter:` a running exporter.

    The config is written as JSON (a YAML subset); the child's log goes to a file beside it
    and its last lines are shown when the child dies early.
    """

    def __init__(self, config: dict[str, Any], directory: Path, log_level: str = "warn") -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / "exporter.yaml"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.log_path = directory / "exporter.log"
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0  # time.monotonic() just before the child was spawned
        self.started_wall = 0.0  # time.time() at the same moment

    def __enter__(self) -> ExporterProcess:
        env = {
            **os.environ,
            # The simulator accepts any signature; these keep botocore from looking further.
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        with self.log_path.open("wb") as log:
            self.started_wall = time.time()
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    "--config.file",
                    str(self.config_path),
                    "--web.listen-address",
                    f"127.0.0.1:{self.port}",
                    "--log.level",
                    self.log_level,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process = self.process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"exporter exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """Status and body of GET `path`; status 0 while nothing listens yet."""
        self._check_alive()
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def wait_for(self, path: str, timeout: float, poll: float = 0.1) -> float:
        """Seconds from the child's start to the first 200 of `path`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, _ = self.get(path)
            if status == 200:
                return time.monotonic() - self.started
            time.sleep(poll)
        raise TimeoutError(f"{path} not 200 within {timeout:g} s:\n{self.log_tail()}")

    def samples(self) -> list[Sample]:
        """Every sample of /metrics, parsed by prometheus_client's own text parser."""
        status, body = self.get("/metrics", timeout=30.0)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        ]
