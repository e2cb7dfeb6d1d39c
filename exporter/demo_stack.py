"""The demo's Prometheus and Alertmanager: started with the mixin's rules when on the PATH."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from exporter.config import Config
from exporter.mixin import generate, shipped, shipped_rules

log = logging.getLogger(__name__)

# The usual 9090 and 9093 with a 1 in front: Debian's packages start Prometheus and
# Alertmanager as services on the usual ports, and the demo must not collide with them.
PROMETHEUS_ADDRESS = "127.0.0.1:19090"
ALERTMANAGER_ADDRESS = "127.0.0.1:19093"
# The scrape job the mixin's exporter_selector names (exporter/mixin/mixin.yaml).
SCRAPE_JOB = "aws-iot-jobs-exporter"
SCRAPE_INTERVAL = 15.0  # seconds, at real time
REAL_TIME = 1 / 60  # simulated minutes per real second
# No duration of the demo goes below this when sped up: Prometheus' scrape and evaluation
# intervals are whole seconds, and the rules' durations are generated as whole seconds.
SHORTEST = 1.0
# The largest quota, in calls per second, the simulator's admin API accepts.
QUOTA_LIMIT = 100_000.0
READY_DEADLINE = 30.0
STOP_DEADLINE = 5.0
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"
# Where each page lives in the UI a Prometheus build serves, best first: the new UI
# (2.x's React UI, 3.x), the classic UI of builds without it (Debian's 2.42: /alerts is
# 404 there, /graph redirects), and the API, which every build answers.
PROMETHEUS_PAGES = {
    "alerts": ("/alerts", "/classic/alerts", "/api/v1/alerts"),
    "rules": ("/rules", "/classic/rules", "/api/v1/rules"),
    "query": ("/query", "/graph", "/classic/graph", "/api/v1/query?query=ALERTS"),
}
# Alertmanager's web UI loads this script; Debian's build has no UI, and its / says so.
ALERTMANAGER_UI_ASSET = "/script.js"


def time_factor(speed: float) -> float:
    """How many times as fast as the wall clock a simulator at `speed` moves (at least 1)."""
    return max(1.0, speed / REAL_TIME) if speed > 0 else 1.0


def scaled_seconds(seconds: float, factor: float) -> float:
    """A duration of the demo's story at `factor` times real time."""
    return seconds if factor <= 1 else max(SHORTEST, seconds / factor)


def time_scaled_config(config: Config, factor: float) -> Config:
    """The exporter's side of the demo at `factor` times real time.

    Every duration of the story shrinks by the factor, as the rules' windows do:
    collection and discovery intervals, the event path's reconcile interval, spacing and
    silence timeout, and the retention of finished jobs. Otherwise a job that no event
    touches is described every 5 minutes while the sped-up rules call its data stale after
    15/factor minutes (`AwsIotJobsExporterDataStale` at --speed 0.1). The request budget
    grows by the factor with the simulator's quotas (scaled_quotas), or the shorter
    intervals would queue calls at the budget and fail cycles that were never late.
    Timeouts stay: they are about the network, which is no faster.
    """
    if factor <= 1:
        return config

    def scale(seconds: float) -> float:
        return scaled_seconds(seconds, factor)

    c = config.collector
    collector = dataclasses.replace(
        c,
        interval=scale(c.interval),
        discovery_interval=scale(c.discovery_interval),
        terminal_job_retention=scale(c.terminal_job_retention),
        requests_per_second=c.requests_per_second * factor,
        # Sweeps too; their stuck thresholds stay: ages are measured on the simulator's
        # clock (its answers' Date), in simulated seconds like the thresholds. That clock
        # runs ahead of the host's by design, so no Date is too far from it.
        executions=dataclasses.replace(
            c.executions,
            requests_per_second=c.executions.requests_per_second * factor,
            max_clock_skew=math.inf,
        ),
        packages=dataclasses.replace(
            c.packages,
            interval=scale(c.packages.interval),
            requests_per_second=c.packages.requests_per_second * factor,
        ),
    )
    targets = tuple(
        dataclasses.replace(
            t,
            events=t.events
            and dataclasses.replace(
                t.events,
                reconcile_interval=scale(t.events.reconcile_interval),
                min_describe_interval=scale(t.events.min_describe_interval),
                silence_timeout=scale(t.events.silence_timeout),
            ),
        )
        for t in config.targets
    )
    return dataclasses.replace(config, collector=collector, targets=targets)


def scaled_quotas(rates: Iterable[tuple[str, float]], factor: float) -> dict[str, float]:
    """The simulator's quotas at `factor` times real time, for POST /_sim/faults.

    A fleet that lives `factor` minutes per minute answers `factor` times the calls per
    real second, as the exporter's budget asks; the simulator's own limit is the bound.
    """
    return {op: min(QUOTA_LIMIT, rate * max(1.0, factor)) for op, rate in rates}


async def scale_simulator_quotas(
    url: str, rates: Iterable[tuple[str, float]], factor: float
) -> None:
    """Sets the simulator's quotas through its admin API (docs/simulator.md)."""
    async with (
        _session() as session,
        session.post(f"{url}/_sim/faults", json={"quotas": scaled_quotas(rates, factor)}) as r,
    ):
        r.raise_for_status()


def _duration(seconds: float, factor: float) -> str:
    # Prometheus and Alertmanager syntax, whole seconds as the rules' generator writes them.
    return f"{max(SHORTEST, round(scaled_seconds(seconds, factor))):g}s"


@dataclass(slots=True)
class _Child:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path


@dataclass(slots=True)
class DemoStack:
    """Prometheus (and Alertmanager when found) scraping the demo exporter.

    `speed` is the simulator's, in simulated minutes per real second. Above real time
    every duration shrinks by the same factor: the rules' windows and `for:`, the scrape
    and evaluation intervals, Alertmanager's grouping waits (and, through
    time_scaled_config, the exporter's intervals), so the story fires the same alerts
    sooner and nothing else.
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
        return time_factor(self.speed)

    async def start(self) -> list[str]:
        """Start what is installed; lines to show the user (URLs, or how to install)."""
        prometheus = shutil.which("prometheus")
        alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
        if prometheus is None:
            return [f"prometheus:   not on the PATH, not started ({INSTALL_HINT})"]
        self._tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="aws-iot-jobs-demo-"))
        await asyncio.to_thread(self._write_files)
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
                lines.append(await self._alertmanager_line())
            else:
                alertmanager = None
                lines.append(f"alertmanager: did not start, see {am.log_path}")
        else:
            lines.append(f"alertmanager: not on the PATH, not started ({INSTALL_HINT})")
        config = self._tmp / "prometheus.yml"
        await asyncio.to_thread(
            config.write_text, yaml.safe_dump(self._prometheus_config(alertmanager is not None))
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
            lines[:0] = await self._prometheus_lines(prom)
        else:
            lines.insert(0, f"prometheus:   did not start, see {prom.log_path}")
        return lines

    def _write_files(self) -> None:
        """The shipped rules and Alertmanager config, time-scaled when sped up."""
        assert self._tmp is not None
        rules = self._tmp / "rules"
        rules.mkdir()
        if self.factor == 1:
            texts = shipped_rules()
        else:
            texts = generate.render(generate.time_scaled(generate.load_config(), self.factor))
        for name, text in texts.items():
            (rules / name).write_text(text, encoding="utf-8")
        alertmanager = yaml.safe_load(shipped("alertmanager.yml"))
        if self.factor > 1:
            self._scale_route(alertmanager["route"])
        (self._tmp / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager))

    def _scale_route(self, route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = _duration(generate.seconds(route[key]), self.factor)
        for child in route.get("routes", []):
            self._scale_route(child)

    def _prometheus_config(self, alerting: bool) -> dict[str, Any]:
        assert self._tmp is not None
        interval = _duration(SCRAPE_INTERVAL, self.factor)
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(self._tmp / "rules" / "*.rules.yml")],
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

    async def _prometheus_lines(self, prom: _Child) -> list[str]:
        base = f"http://{self.prometheus_address}"
        async with _session() as session:
            # The API answers on every build; it is shown should no page answer.
            pages = {
                name: await _first_ok(session, base, paths) or paths[-1]
                for name, paths in PROMETHEUS_PAGES.items()
            }
            groups = await _rule_groups(session, base)
        lines = [
            f"prometheus:   {base}{pages['alerts']}  "
            f"(rules: {base}{pages['rules']}, query: {base}{pages['query']})"
        ]
        if groups:
            rules = sum(len(g.get("rules", [])) for g in groups)
            lines.append(f"              {rules} rules in {len(groups)} groups loaded")
        else:
            lines.append(f"              no rules loaded, see {prom.log_path}")
        if self.factor > 1:
            lines.append(
                f"              at {self.factor:g}x real time: the rules' windows and for:, "
                "the scrape interval and the exporter's intervals are divided by "
                f"{self.factor:g}, its request budget and the simulator's quotas multiplied"
            )
        return lines

    async def _alertmanager_line(self) -> str:
        base = f"http://{self.alertmanager_address}"
        async with _session() as session:
            ui = await _first_ok(session, base, (ALERTMANAGER_UI_ASSET,))
        where = [f"API: {base}/api/v2/alerts"] if ui else ["no web UI in this build"]
        if shutil.which("amtool"):
            where.append(f"amtool alert query --alertmanager.url={base}")
        shown = f"{base}/#/alerts" if ui else f"{base}/api/v2/alerts"
        return f"alertmanager: {shown}  ({'; '.join(where)})"

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
        async with _session() as session:
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


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))


async def _first_ok(
    session: aiohttp.ClientSession, base: str, paths: tuple[str, ...]
) -> str | None:
    """The first of `paths` answering 200 itself (a redirect is not the page)."""
    for path in paths:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(base + path, allow_redirects=False) as response:
                if response.status == 200:
                    return path
    return None


async def _rule_groups(session: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        async with session.get(f"{base}/api/v1/rules") as response:
            groups: list[dict[str, Any]] = (await response.json())["data"]["groups"]
            return groups
    return []
