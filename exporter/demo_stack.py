"""The demo's Prometheus and Alertmanager: started with the mixin's rules when on the PATH."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from exporter.mixin import generate, shipped, shipped_rules

log = logging.getLogger("exporter.demo")

# The usual 9090 and 9093 with a 1 in front: Debian's packages start Prometheus and
# Alertmanager as services on the usual ports, and the demo must not collide with them.
PROMETHEUS_ADDRESS = "127.0.0.1:19090"
ALERTMANAGER_ADDRESS = "127.0.0.1:19093"
# The scrape job the mixin's exporter_selector names (exporter/mixin/mixin.yaml).
SCRAPE_JOB = "aws-iot-jobs-exporter"
SCRAPE_INTERVAL = 15.0  # seconds, at real time
REAL_TIME = 1 / 60  # simulated minutes per real second
READY_DEADLINE = 30.0
STOP_DEADLINE = 5.0
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"


@dataclass(slots=True)
class _Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path


@dataclass(slots=True)
class DemoStack:
    """Prometheus (and Alertmanager when found) scraping the demo exporter.

    `speed` is the simulator's, in simulated minutes per real second. Above real time
    the rules are generated with every window and `for:` shrunk by the same factor (and
    the scrape interval with them), so the story fires the same alerts sooner.
    """

    exporter_address: str  # host:port Prometheus scrapes
    speed: float = REAL_TIME
    metrics_path: str = "/metrics"
    prometheus_address: str = PROMETHEUS_ADDRESS
    alertmanager_address: str = ALERTMANAGER_ADDRESS
    _children: list[_Child] = field(default_factory=list)
    _tmp: Path | None = None

    @property
    def factor(self) -> float:
        """How many times as fast as the wall clock the simulated fleet moves."""
        return max(1.0, self.speed / REAL_TIME) if self.speed > 0 else 1.0

    async def start(self) -> list[str]:
        """Start what is installed; lines to show the user (URLs, or how to install)."""
        prometheus = shutil.which("prometheus")
        alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if prometheus is None:
            return [f"prometheus: not on the PATH, not started ({INSTALL_HINT})"]
        self._tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aws-iot-jobs-demo-"))
        rules = await asyncio.to_thread(self._write_files)
        lines: list[str] = []
        if alertmanager is not None:
            am = await self._spawn(
                "alertmanager",
                [
                    alertmanager,
                    f"--config.file={self._tmp / 'alertmanager.yml'}",
                    f"--storage.path={self._tmp / 'alertmanager'}",
                    f"--web.listen-address={self.alertmanager_address}",
                    # No cluster: one instance, and no third port to collide.
                    "--cluster.listen-address=",
                    "--log.level=warn",
                ],
            )
            if await self._ready(am, f"http://{self.alertmanager_address}/-/ready"):
                lines.append(f"alertmanager: http://{self.alertmanager_address}")
            else:
                alertmanager = None
                lines.append(f"alertmanager: did not start, see {am.log_path}")
        else:
            lines.append(f"alertmanager: not on the PATH, not started ({INSTALL_HINT})")
        config = self._tmp / "prometheus.yml"
        await asyncio.to_thread(
            config.write_text,
            yaml.safe_dump(self._prometheus_config(rules, alertmanager is not None)),
        )
        prom = await self._spawn(
            "prometheus",
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={self._tmp / 'prometheus'}",
                f"--web.listen-address={self.prometheus_address}",
                "--log.level=warn",
            ],
        )
        if await self._ready(prom, f"http://{self.prometheus_address}/-/ready"):
            lines.insert(
                0, f"prometheus:   http://{self.prometheus_address}/alerts  (rules: {rules})"
            )
            if self.factor > 1:
                lines.insert(
                    1,
                    f"              at {self.factor:g}x real time: the rules' windows and "
                    f"for: are divided by {self.factor:g}",
                )
        else:
            lines.insert(0, f"prometheus: did not start, see {prom.log_path}")
        return lines

    def _write_files(self) -> str:
        """The shipped rules (time-scaled when sped up) and Alertmanager config, written
        where the children read them; the rule files' glob."""
        assert self._tmp is not None
        rules = self._tmp / "rules"
        rules.mkdir()
        if self.factor == 1:
            texts = shipped_rules()
        else:
            texts = generate.render(generate.time_scaled(generate.load_config(), self.factor))
        for name, text in texts.items():
            (rules / name).write_text(text, encoding="utf-8")
        (self._tmp / "alertmanager.yml").write_text(shipped("alertmanager.yml"), encoding="utf-8")
        return str(rules / "*.rules.yml")

    def _prometheus_config(self, rules: str, alerting: bool) -> dict[str, Any]:
        interval = f"{max(1, round(SCRAPE_INTERVAL / self.factor))}s"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [rules],
            "scrape_configs": [
                {
                    "job_name": SCRAPE_JOB,
                    "metrics_path": self.metrics_path,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": [self.exporter_address]}],
                }
            ],
        }
        if alerting:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [self.alertmanager_address]}]}]
            }
        return config

    async def _spawn(self, name: str, argv: list[str]) -> _Child:
        assert self._tmp is not None
        log_path = self._tmp / f"{name}.log"
        with log_path.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
        child = _Child(name, process, log_path)
        self._children.append(child)
        log.info("started name=%s pid=%d log=%s", name, process.pid, log_path)
        return child

    async def _ready(self, child: _Child, url: str) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + READY_DEADLINE
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while loop.time() < end and child.process.returncode is None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.25)
        return False

    async def stop(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL after a deadline) and remove the data."""
        for child in reversed(self._children):
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.terminate()
        for child in reversed(self._children):
            try:
                async with asyncio.timeout(STOP_DEADLINE):
                    await child.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        self._children.clear()
        if self._tmp is not None:
            await asyncio.to_thread(shutil.rmtree, self._tmp, True)
            self._tmp = None
