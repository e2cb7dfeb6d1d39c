"""Hostile configuration files: alias bombs, huge values, tens of thousands of ids; through
check-config, SIGHUP and POST /-/reload of a running process, and SIGTERM mid-reload."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from exporter.cli.lifecycle import Reloader
from exporter.collect.supervisor import Supervisor
from exporter.config import Config, ConfigError, _read_jobs, parse_config
from exporter.reader import ALIAS_BUDGET, SHOWN_MAX, Reader
from exporter.selfmetrics import SelfMetrics
from exporter.server import build_app
from exporter.store import MetricsStore
from exporter.webconfig import BCRYPT_MAX_COST, parse_web_config
from tests.support import free_port, http_get, started, wait

TARGET = "targets: [{name: t, region: us-east-1, jobs: {ids: [x]}}]\n"
GAUGE = "aws_iot_jobs_exporter_config_last_reload_successful"


def alias_bomb(levels: int = 7) -> str:
    """The classic: each level an anchored flow list of nine aliases to the one before."""
    parts = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        parts.append(f"&{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return TARGET + "collector:\n  concurrency: [" + ", ".join(parts) + "]\n"


def test_the_bomb_is_small_and_expands_past_the_budget() -> None:
    text = alias_bomb()
    assert len(text) < 400
    assert 100 * ALIAS_BUDGET < 9**7


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config.file", str(path)],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip


def test_check_config_refuses_an_alias_bomb_with_a_short_error(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    result = check_config(path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr) < 400, result.stderr[:400]
    assert result.stderr.startswith(f"error: {path}: line 3, column ")
    assert "aliases expand to more than" in result.stderr
    assert "Traceback" not in result.stderr


def test_aliases_within_the_budget_still_work() -> None:
    text = """
common: &common {team: fleet, env: prod}
targets:
  - {name: a, region: us-east-1, labels: *common, jobs: {ids: [x]}}
  - {name: b, region: us-east-1, labels: {<<: *common, env: test}, jobs: {ids: [x]}}
"""
    # `common` is not a key of ours: use the anchors where they are valid instead.
    text = text.replace("common: &common {team: fleet, env: prod}\n", "")
    text = text.replace("labels: *common", "labels: &common {team: fleet, env: prod}", 1)
    config = parse_config(text, "anchors.yaml")
    assert config.targets[0].labels == (("env", "prod"), ("team", "fleet"))
    assert config.targets[1].labels == (("env", "test"), ("team", "fleet"))


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"line 1, column \d+: alias \*l refers to a node"):
        parse_config("targets: &l [*l]\n", "self.yaml")


LONG = "x" * 5000


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (TARGET + f"collector: {{interval: '{LONG}'}}\n", "collector.interval"),
        (TARGET + f"collector: {{concurrency: 1{'0' * 3000}}}\n", "collector.concurrency"),
        (TARGET + f"collector: {{max_attempts: [{', '.join(['1'] * 2000)}]}}\n", None),
        (TARGET + f"otel: {{protocol: '{LONG}'}}\n", "otel.protocol"),
        (TARGET + f"otel: {{enabled: '{LONG}'}}\n", "otel.enabled"),
        (f"targets: [{{name: t, region: '{LONG}', jobs: {{ids: [x]}}}}]\n", "targets[0].region"),
        (f"targets: [{{name: '{LONG}', region: us-east-1, jobs: {{ids: [x]}}}}]\n", None),
        (f"targets: [{{name: t, region: us-east-1, {LONG}: 1, jobs: {{ids: [x]}}}}]\n", None),
        (
            "targets: [{name: t, region: us-east-1, labels: {"
            + LONG
            + ": v}, jobs: {ids: [x]}}]\n",
            None,
        ),
        (
            "targets: [{name: t, region: us-east-1, jobs: {discover: {include: ['("
            + LONG
            + "']}}}]\n",
            "targets[0].jobs.discover.include[0]",
        ),
    ],
    ids=[
        "duration",
        "huge integer",
        "long list",
        "choice",
        "boolean",
        "region",
        "name",
        "unknown key",
        "label name",
        "regex",
    ],
)
def test_values_quoted_in_config_errors_are_cut(text: str, path: str | None) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "long.yaml")
    message = str(exc.value)
    assert len(message) < 600, message[:600]
    assert "x" * (SHOWN_MAX + 1) not in message and "0" * (SHOWN_MAX + 1) not in message
    if path is not None:
        assert exc.value.path == path


@pytest.mark.parametrize(
    "text",
    [
        f"http_server_config:\n  headers:\n    X-Frame-Options: '{LONG}'\n",
        f"tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: ['{LONG}']\n",
        f"tls_server_config:\n  min_version: '{LONG}'\n  cert_file: a\n  key_file: b\n",
        f"basic_auth_users:\n  '{LONG}:x': y\n",
        f"basic_auth_users:\n  '{LONG}': y\n",
        f"{LONG}: 1\n",
    ],
    ids=["header", "cipher", "version", "user with colon", "long user", "unknown key"],
)
def test_values_quoted_in_web_config_errors_are_cut(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_web_config(text, "web.yml", tmp_path)
    message = str(exc.value)
    # The list of supported cipher suites is most of the longest of these.
    assert len(message) < 900, message[:900]
    assert "x" * (SHOWN_MAX + 1) not in message


def test_a_web_config_bomb_is_refused(tmp_path: Path) -> None:
    text = alias_bomb().replace(TARGET, "").replace("collector:\n  concurrency:", "rate_limit:")
    with pytest.raises(ConfigError, match="aliases expand to more than") as exc:
        parse_web_config(text, "web.yml", tmp_path)
    assert len(str(exc.value)) < 300


def test_bcrypt_cost_above_the_cap_is_refused_naming_the_field(tmp_path: Path) -> None:
    body = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
    ok = f"$2b${BCRYPT_MAX_COST:02d}${body}"
    parse_web_config(f"basic_auth_users:\n  alice: '{ok}'\n", "web.yml", tmp_path)
    costly = f"$2b${BCRYPT_MAX_COST + 3:02d}${body}"
    with pytest.raises(ConfigError) as exc:
        parse_web_config(f"basic_auth_users:\n  alice: '{costly}'\n", "web.yml", tmp_path)
    assert exc.value.file == "web.yml"
    assert exc.value.path == "basic_auth_users.alice"
    assert f"cost {BCRYPT_MAX_COST + 3}, above the {BCRYPT_MAX_COST} accepted" in str(exc.value)
    assert costly not in str(exc.value)


# --- duplicate detection scales linearly ---------------------------------------------------


@pytest.mark.timeout(60)
def test_duplicate_ids_are_found_among_200000_without_quadratic_work() -> None:
    # Checked by behaviour: with a list, 200,000 ids are 2e10 comparisons, hours of work;
    # with a set, a fraction of a second. The timeout above is the assertion.
    ids = [f"job-{i}" for i in range(200_000)]
    jobs = _read_jobs(Reader("many.yaml", ConfigError), {"ids": ids}, "targets[0].jobs")
    assert len(jobs.ids) == 200_000
    with pytest.raises(ConfigError) as exc:
        _read_jobs(Reader("many.yaml", ConfigError), {"ids": [*ids, "job-7"]}, "targets[0].jobs")
    assert exc.value.path == "targets[0].jobs.ids[200000]"
    assert "'job-7' is listed twice" in exc.value.message


def test_60000_ids_pass_check_config(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    ids = ", ".join(f"job-{i}" for i in range(60_000))
    path.write_text(f"targets: [{{name: t, region: us-east-1, jobs: {{ids: [{ids}]}}}}]\n")
    result = check_config(path)
    assert result.returncode == 0, result.stderr[:500]
    assert "60000 explicit job id(s)" in result.stdout


# --- a running process: reloads that fail, SIGTERM in the middle of one ----------------------


@pytest.fixture
def exporter_process(moto_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The exporter with lifecycle on, its stderr in a file the test can read as it goes."""
    config = tmp_path / "config.yaml"
    config.write_text(good_config(moto_url))
    port = free_port()
    with (
        (tmp_path / "stderr.log").open("w") as log,
        started(
            [sys.executable, "-m", "exporter", "--config.file", str(config),
             "--web.listen-address", f"127.0.0.1:{port}", "--web.enable-lifecycle"],
            stdout=subprocess.DEVNULL, stderr=log, text=True,
        ) as process,
    ):  # fmt: skip
        http_get(f"http://127.0.0.1:{port}/healthz")
        yield process, f"http://127.0.0.1:{port}"


def good_config(moto_url: str) -> str:
    return (
        "collector: {interval: 1s}\n"
        f"targets:\n  - {{name: m, region: us-east-1, endpoint_url: '{moto_url}', "
        "jobs: {ids: [absent-job]}}\n"
    )


def gauge(base: str) -> str:
    body = http_get(f"{base}/metrics").decode()
    return next(line for line in body.splitlines() if line.startswith(f"{GAUGE} "))


def test_alias_bomb_reloads_fail_cleanly_by_sighup_and_http(
    exporter_process: tuple[subprocess.Popen[str], str], moto_url: str, tmp_path: Path
) -> None:
    process, base = exporter_process
    config = tmp_path / "config.yaml"
    assert gauge(base) == f"{GAUGE} 1.0"

    config.write_text(alias_bomb())
    process.send_signal(signal.SIGHUP)
    wait(lambda: gauge(base) == f"{GAUGE} 0.0", what="the failed reload")

    request = urllib.request.Request(f"{base}/-/reload", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    assert info.value.code == 500
    body = info.value.read().decode()
    assert len(body) < 400
    assert body.startswith(f"reload failed: {config}: line 3, column ")
    assert gauge(base) == f"{GAUGE} 0.0"

    # Fixed: the same endpoint brings the gauge back; the process still serves.
    config.write_text(good_config(moto_url))
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    assert gauge(base) == f"{GAUGE} 1.0"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    err = (tmp_path / "stderr.log").read_text()
    assert err.count("reload failed, keeping the running config") == 2
    assert "Traceback" not in err and "never retrieved" not in err
    assert len(err) < 20_000
    assert '"lol"' not in err and "'lol'" not in err


def test_sigterm_during_the_reload_of_60000_ids_exits_cleanly(
    exporter_process: tuple[subprocess.Popen[str], str], moto_url: str, tmp_path: Path
) -> None:
    process, _ = exporter_process
    config = tmp_path / "config.yaml"
    ids = "".join(f"        - big-job-{i:05d}\n" for i in range(60_000))
    config.write_text(
        f"targets:\n  - name: m\n    region: us-east-1\n    endpoint_url: '{moto_url}'\n"
        f"    jobs:\n      ids:\n{ids}"
    )
    assert config.stat().st_size > 1_000_000
    log = tmp_path / "stderr.log"
    process.send_signal(signal.SIGHUP)
    wait(lambda: "reloading configuration" in log.read_text(), within=10, what="the reload")
    process.send_signal(signal.SIGTERM)
    # The reload would take seconds more; the process does not wait for it.
    assert process.wait(timeout=15) == 0
    err = log.read_text()
    assert "configuration reloaded" not in err  # it really was cut short
    assert "shutting down" in err
    assert "Traceback" not in err


# --- any failure of a reload, of any type ------------------------------------------------------


@pytest.mark.parametrize("failure", [MemoryError(), RecursionError("deep"), KeyError("bug")])
async def test_any_reload_failure_sets_the_gauge_and_answers_briefly(
    failure: Exception, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(TARGET)
    config = parse_config(TARGET, str(path))
    telemetry, store = SelfMetrics(), MetricsStore()
    collector = Supervisor(config, store, telemetry)

    def breaks(new: Config) -> Config:
        # The reloader's own hook for adjusting a parsed config (the demo rewrites the
        # endpoints with it): here it fails the way an exhausted process would.
        raise failure

    reloader = Reloader(str(path), collector, store, telemetry, breaks)
    reloader.loaded()
    app = build_app(store, telemetry, lambda: True, reload=reloader.reload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    caplog.set_level(logging.INFO)
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/-/reload") as r:
                assert r.status == 500
                body = await r.text()
            async with http.get(f"{url}/metrics") as r:
                metrics = await r.text()
    finally:
        await runner.cleanup()
    assert body == f"reload failed: {path}: unexpected {type(failure).__name__}\n"
    assert f"{GAUGE} 0.0" in metrics
    assert "Traceback" not in caplog.text


def test_work_in_a_detached_thread_never_holds_the_exit() -> None:
    # The mechanism behind both bcrypt checks and reload parsing, in a process of its own:
    # a 60 s job in flight when the loop ends. asyncio.to_thread would hold the exit until
    # it finished; the wait below is far shorter than that.
    program = (
        "import asyncio, time\n"
        "from exporter.detached import run_detached\n"
        "async def main():\n"
        "    task = asyncio.create_task(run_detached(time.sleep, 60))\n"
        "    await asyncio.sleep(0.2)\n"
        "    task.cancel()\n"
        "asyncio.run(main())\n"
        "print('exited')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "exited\n"
    assert result.stderr == ""
