"""What the docs say is what runs (issue 19, "Docs that match").

Each test reads a claim out of a document and checks it against the code or a running
simulator: the keys of config/example.yaml and of the scenario format, check-config's
flags, the simulator's faults, endpoints, queue and demo fleet, the credentials advice,
the dashboards' tables, and the compose demo's events.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from exporter.aws import JobSource
from exporter.cli import main
from exporter.cli.run import build_parser
from exporter.config import CollectorSettings, Events, load_config
from exporter.events import QueueError, parse_event
from exporter.reader import Reader
from exporter.selfmetrics import SelfMetrics
from exporter.table import FAMILIES
from simulator import Simulator, SimulatorThread, load_scenario, start_simulator
from simulator.reader import Reader as ScenarioReader
from simulator.scenario import Faults, parse_scenario
from simulator.sqs import EventFaults
from tests.e2e.test_rules import RULES
from tests.support import ROOT, free_port

README = ROOT / "README.md"
EXAMPLE = ROOT / "config" / "example.yaml"
CONFIGURATION = ROOT / "docs" / "configuration.md"
SIMULATOR = ROOT / "docs" / "simulator.md"
DASHBOARDS = ROOT / "docs" / "dashboards.md"
COMPOSE = ROOT / "docker-compose.yml"


# --- helpers -----------------------------------------------------------------------------


def accepted_keys(
    parse: Callable[[], object],
    monkeypatch: pytest.MonkeyPatch,
    reader: type[Reader] | type[ScenarioReader] = Reader,
) -> dict[str, set[str]]:
    """The keys the reader accepts at each mapping it visits while `parse` runs, by path
    with list indices folded (`targets[].jobs`): the reader's own word, not a copy of it.
    `reader` is the exporter's, or the simulator's own for scenarios."""
    seen: dict[str, set[str]] = {}
    original = reader.mapping

    def recording(self: Any, value: Any, path: str, allowed: tuple[str, ...]) -> Any:
        seen.setdefault(re.sub(r"\[\d+\]", "[]", path), set()).update(allowed)
        return original(self, value, path, allowed)

    with monkeypatch.context() as patch:
        patch.setattr(reader, "mapping", recording)
        parse()
    return seen


def uncommented(text: str) -> Any:
    """YAML with its commented-out keys (`# key: value`) put back, so that a key shown but
    not set still counts as documented where it stands."""
    lines = [
        re.sub(r"^(\s*)# ((?:- )?[a-z_]+:(?: .*)?)$", r"\1\2", line) for line in text.splitlines()
    ]
    return yaml.safe_load("\n".join(lines))


def nodes_at(data: Any, path: str) -> Iterator[dict[str, Any]]:
    """The mappings at a folded path (`jobs[].rollout`) of plain YAML data."""
    tokens = [t for t in re.split(r"\.|(\[\])", path) if t]
    found = [data]
    for token in tokens:
        step: list[Any] = []
        for node in found:
            if token == "[]" and isinstance(node, list):
                step.extend(node)
            elif isinstance(node, dict) and token in node:
                step.append(node[token])
        found = step
    return (node for node in found if isinstance(node, dict))


def key_problems(accepted: dict[str, set[str]], documented: Any) -> list[str]:
    """Keys the reader accepts that the document does not show at their place, and keys
    the document shows (set or commented out) that the reader does not accept there."""
    problems = []
    for path, allowed in sorted(accepted.items()):
        shown = set().union(*(set(node) for node in nodes_at(documented, path)))
        for key in sorted(allowed - shown):
            problems.append(f"{path or '(top)'}.{key}: accepted, not documented")
        for key in sorted(shown - allowed):
            problems.append(f"{path or '(top)'}.{key}: documented, not accepted")
    return problems


def section(text: str, heading: str) -> str:
    """A Markdown section: from its heading to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.MULTILINE)
    assert match, f"no section {heading!r}"
    level = len(match.group(1))
    end = re.search(rf"^#{{1,{level}}} ", text[match.end() :], re.MULTILINE)
    return text[match.end() : match.end() + end.start() if end else len(text)]


def first_cells(markdown: str) -> list[str]:
    """The first cell of every table row (header and separator rows left out)."""
    cells = []
    for line in markdown.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells.append(line.split("|")[1].strip())
    return cells[1:] if cells else []


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --- config/example.yaml -----------------------------------------------------------------


def test_example_config_shows_every_key_the_reader_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    accepted = accepted_keys(lambda: load_config(EXAMPLE), monkeypatch)
    # Every section is visited, so that its keys are checked: an `events:` shown only as a
    # comment would hide its keys from the check below.
    assert {
        "",
        "collector",
        "metrics",
        "otel",
        "targets[]",
        "targets[].jobs",
        "targets[].jobs.discover",
        "targets[].events",
    } <= set(accepted)
    assert key_problems(accepted, uncommented(EXAMPLE.read_text())) == []


def test_example_config_values_are_the_defaults() -> None:
    # "every key, with its default": the values set are the defaults, apart from the
    # ones that have none (the queue) or illustrate a choice (the reason key).
    config = load_config(EXAMPLE)
    assert config.collector == CollectorSettings()
    events = config.targets[0].events
    assert events is not None
    assert events == Events(sqs_queue_url=events.sqs_queue_url, reason_key=events.reason_key)
    assert main(["check-config", "--config.file", str(EXAMPLE)]) == 0


# --- check-config and the --metrics.* flags ------------------------------------------------


def metrics_flags() -> list[str]:
    """The run command's --metrics.* flags, from its parser."""
    return sorted(
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--metrics.")
    )


def test_check_config_takes_the_metrics_flags_the_docs_say_it_checks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = CONFIGURATION.read_text()
    flags = section(text, "Flags")
    assert "check-config" in flags
    assert metrics_flags() == ["--metrics.allow", "--metrics.deny"]
    total = len(FAMILIES)
    for flag, kept in (("--metrics.allow", 1), ("--metrics.deny", total - 1)):
        code = main(
            ["check-config", "--config.file", str(EXAMPLE), flag, "aws_iot_job_target_info"]
        )
        out = capsys.readouterr()
        assert code == 0, out.err
        assert f"{kept} of {total} job metric families" in out.out
    # The doc's own example, as written.
    example = re.search(r"`(--metrics\.deny [a-z_,]+)`", flags)
    assert example, "configuration.md: no --metrics.deny example"
    code = main(["check-config", "--config.file", str(EXAMPLE), *example.group(1).split()])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    # "checked like the file (exit 2 with the flag's name in the error)"
    code = main(
        [
            "check-config",
            "--config.file",
            str(EXAMPLE),
            "--metrics.deny",
            "aws_iot_job_target_infos",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(
        "error: --metrics.deny: 'aws_iot_job_target_infos' is not a job metric family"
    )
    assert "Traceback" not in err
    code = main(
        [
            "check-config",
            "--config.file",
            str(EXAMPLE),
            "--metrics.allow",
            "aws_iot_job_info",
            "--metrics.deny",
            "aws_iot_job_status",
        ]
    )
    assert code == 2
    assert "set one or the other, not both" in capsys.readouterr().err


# --- docs/simulator.md: the scenario format, faults, endpoints ----------------------------


def scenario_block() -> str:
    """The scenario format's YAML block: the one that starts with `seed:`."""
    match = re.search(
        r"```yaml\n(seed: .*?)```", section(SIMULATOR.read_text(), "Scenario format"), re.S
    )
    assert match, "simulator.md: no scenario format block"
    return match.group(1)


def test_scenario_format_block_loads_and_shows_every_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    block = scenario_block()
    accepted = accepted_keys(
        lambda: parse_scenario(yaml.safe_load(block), "simulator.md"), monkeypatch, ScenarioReader
    )
    assert "devices" in accepted and "failure_reasons" in accepted["devices"]
    # A job's devices are the scenario's format, merged over them: shown once, at the top.
    assert accepted.pop("jobs[].devices") == accepted["devices"]
    # The keys under `faults:` are the fault table's, checked below.
    accepted = {path: keys for path, keys in accepted.items() if not path.startswith("faults")}
    assert key_problems(accepted, uncommented(block)) == []
    # The block is a whole scenario: it loads from a file, as --scenario reads it.
    file = tmp_path / "format.yaml"
    file.write_text(block)
    scenario = load_scenario(file)
    assert dict(scenario.devices.failure_reasons) == {"checksum_mismatch": 5, "low_battery": 1}


def test_every_fault_is_in_the_fault_table_and_every_row_is_a_fault() -> None:
    rows = {
        (backticked(cell) or [cell])[0].split(":")[0]
        for cell in first_cells(section(SIMULATOR.read_text(), "Faults"))
    }
    names = {f.name for f in dataclasses.fields(Faults)}
    # unavailable_status belongs to the unavailable row; quotas are a scenario section.
    assert rows == names - {"unavailable_status"} | {"quotas"}
    assert "`unavailable_status" in section(SIMULATOR.read_text(), "Faults")


def test_every_event_fault_is_in_its_table_and_every_row_is_one() -> None:
    text = section(SIMULATOR.read_text(), "Event faults")
    rows = {backticked(cell)[0] for cell in first_cells(text)}
    assert rows == set(EventFaults().to_json())


def documented_endpoints() -> set[tuple[str, str]]:
    text = SIMULATOR.read_text()
    return {
        (method, path.split("?")[0])
        for method, path in re.findall(r"`(GET|POST|DELETE|PUT|PATCH) (/[^`\s]*)", text)
    }


def test_every_endpoint_is_documented_and_every_documented_one_exists(sim: Simulator) -> None:
    routes = {
        (route.method, route.resource.canonical)
        for route in sim._app().router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert routes - documented_endpoints() == set(), "served, not in docs/simulator.md"
    assert documented_endpoints() - routes == set(), "in docs/simulator.md, not served"


def curl_examples() -> list[tuple[str, str, str | None]]:
    """(method, path, body) of every `curl ... $SIM/...` line, comments left out."""
    out = []
    for line in SIMULATOR.read_text().splitlines():
        command = re.split(r"\s#\s", line)[0]
        if not command.startswith("curl ") or "$SIM/" not in command:
            continue
        method = re.search(r"-X ?([A-Z]+)", command)
        body = re.search(r"-d '([^']*)'", command)
        path = re.search(r"\$SIM(/[^\s\"']*)", command)
        assert path, line
        out.append(
            (method.group(1) if method else "GET", path.group(1), body.group(1) if body else None)
        )
    return out


async def test_every_admin_example_works_against_the_simulator(sim: Simulator) -> None:
    examples = curl_examples()
    assert len(examples) > 20
    assert {path.split("?")[0] for _, path, _ in examples} >= {
        "/_sim/stats",
        "/_sim/faults",
        "/_sim/clock",
        "/_sim/events",
    }
    async with aiohttp.ClientSession() as session:
        for method, path, body in examples:
            async with session.request(method, sim.url + path, data=body) as response:
                text = await response.text()
                assert response.status in (200, 201), (
                    f"{method} {path} {body}: {response.status} {text}"
                )
                json.loads(text)


async def test_the_events_answer_is_the_one_documented(sim: Simulator) -> None:
    text = section(SIMULATOR.read_text(), "Job events and the SQS queue")
    match = re.search(r"```json\n(\{\n  \"queue_path\".*?)```", text, re.S)
    assert match, "simulator.md: no /_sim/events example"
    documented = json.loads(match.group(1))
    async with aiohttp.ClientSession() as session, session.get(sim.url + "/_sim/events") as r:
        served = await r.json()
    assert set(served) == set(documented)
    assert set(served["faults"]) == set(documented["faults"])
    assert (
        served["queue_path"]
        == documented["queue_path"]
        == urllib.parse.urlsplit(sim.queue_url).path
    )
    # Every key of the answer is explained in the prose after it.
    prose = text[match.end() :]
    for key in served:
        assert f"`{key}`" in prose, key


async def event_faults(sim: Simulator, **faults: object) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.url + "/_sim/events", json=faults) as r,
    ):
        assert r.status == 200, await r.text()
        answer: dict[str, Any] = await r.json()
        return answer


async def test_silent_and_stopped_differ_as_documented(sim: Simulator) -> None:
    """silent: nothing arrives and nothing fails; stopped: every call fails, events wait."""
    text = section(SIMULATOR.read_text(), "Event faults")
    assert "`silent` is a broken or disabled IoT rule (nothing arrives, nothing fails)" in " ".join(
        text.split()
    )
    config = load_config(ROOT / "exporter" / "demo.yaml")
    target = config.targets[0]
    assert target.events is not None
    local = dataclasses.replace(
        target,
        endpoint_url=sim.url,
        events=dataclasses.replace(target.events, sqs_queue_url=sim.queue_url, endpoint_url=None),
    )
    settings = dataclasses.replace(config.collector, max_attempts=1)
    async with JobSource(local, settings, SelfMetrics()) as source:
        queue = await source.event_queue()
        assert queue is not None
        before = await event_faults(sim, silent=True)
        sim.clock.advance(120)
        assert await queue.receive(wait=False) == []
        silent = await event_faults(sim)
        assert silent["published"] > before["published"]
        assert silent["dropped"] - before["dropped"] == silent["published"] - before["published"]
        assert silent["waiting"] == 0

        await event_faults(sim, silent=False, stopped=True)
        sim.clock.advance(120)
        with pytest.raises(QueueError):
            await queue.receive(wait=False)
        stopped = await event_faults(sim)
        assert stopped["waiting"] > 0, "events published while stopped are kept"

        await event_faults(sim, stopped=False)
        assert await queue.receive(wait=False), "delivered once the queue is back"


# --- docs/simulator.md: the demo fleet, as it runs -----------------------------------------


def demo_claims() -> re.Match[str]:
    row = next(line for line in SIMULATOR.read_text().splitlines() if line.startswith("| `demo` "))
    match = re.search(
        r"From the start: jobs in status (?P<statuses>[^;]+?), and executions in every state "
        r"but `(?P<absent>\w+)`; `(?P<late>\w+)` from minute (?P<late_minute>\d+), when "
        r"`(?P<late_job>[\w-]+)` is deleted .*?, and `(?P=absent)` from minute "
        r"(?P<absent_minute>\d+)",
        row,
    )
    assert match, "simulator.md: the demo row's claims about its start changed shape"
    return match


async def test_demo_statuses_and_states_as_documented(sim: Simulator) -> None:
    claims = demo_claims()
    start_statuses = set(backticked(claims["statuses"]))
    late, late_minute = claims["late"], int(claims["late_minute"])
    absent, absent_minute = claims["absent"], int(claims["absent_minute"])
    config = load_config(ROOT / "exporter" / "demo.yaml")
    target = dataclasses.replace(config.targets[0], endpoint_url=sim.url, events=None)
    minute = 0.0

    async def at(when: float) -> tuple[dict[str, str | None], dict[str, int]]:
        nonlocal minute
        sim.clock.advance((when - minute) * 60)
        minute = when
        async with JobSource(target, config.collector, SelfMetrics()) as source:
            statuses = {s.job_id: s.status for s in await source.list_jobs({})}
        async with aiohttp.ClientSession() as session, session.get(sim.url + "/_sim/stats") as r:
            truth = (await r.json())["jobs"]
        states: dict[str, int] = {}
        for job in truth.values():
            for state, count in job["executions"].items():
                states[state] = states.get(state, 0) + count
        return statuses, states

    statuses, states = await at(0)
    assert set(statuses.values()) == start_statuses
    assert {state for state, count in states.items() if count == 0} == {absent}
    statuses, _ = await at(late_minute - 0.25)
    assert late not in statuses.values()
    statuses, _ = await at(late_minute)
    assert [job for job, status in statuses.items() if status == late] == [claims["late_job"]]
    _, states = await at(absent_minute - 0.25)
    assert states[absent] == 0
    _, states = await at(absent_minute)
    assert states[absent] > 0


# --- credentials: any dummy key pair works ------------------------------------------------


def dummy_pairs() -> list[tuple[str, str]]:
    pattern = r"export AWS_ACCESS_KEY_ID=(\S+) AWS_SECRET_ACCESS_KEY=(\S+)"
    pairs = []
    for doc in (README, SIMULATOR):
        found = re.findall(pattern, doc.read_text())
        assert found, f"{doc.name}: no dummy key pair to export"
        pairs.extend(found)
    return pairs


def test_probe_against_the_simulator_needs_some_key_pair_and_any_will_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    credentials = section(SIMULATOR.read_text(), "Credentials")
    without = re.search(r"`check-config --probe` prints `([^`]+)`", credentials)
    with_pair = re.search(r"the probe reports\s+`([^`]+)` and still says `OK`", credentials)
    assert without and with_pair
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with SimulatorThread("demo", speed=0, no_quotas=True) as sim:
        config = tmp_path / "config.yaml"
        # A port nothing listens on stands for AWS's STS on a machine without internet
        # access: the suite never calls AWS.
        config.write_text(
            "targets:\n  - name: local\n    region: us-east-1\n"
            f"    endpoint_url: {sim.url}\n"
            f"    sts_endpoint_url: http://127.0.0.1:{free_port()}\n"
            "    jobs: {discover: {}}\n"
        )
        assert main(["check-config", "--probe", "--config.file", str(config)]) == 1
        out = capsys.readouterr().out
        assert without.group(1) in out
        for key_id, secret in dummy_pairs():
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
            code = main(["check-config", "--probe", "--config.file", str(config)])
            out = capsys.readouterr().out
            assert code == 0, out
            assert "OK (ListJobs 1 job, DescribeJob " in out
            assert with_pair.group(1) in out


# --- docker compose: the demo there is event-driven ----------------------------------------


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file a service sees at container_path, through its bind mounts."""
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (ROOT / source / container_path[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"nothing is mounted at {container_path}")


async def test_compose_exporter_reads_job_events_from_the_compose_simulator() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    exporter, simulator = services["exporter"], services["simulator"]
    config = load_config(host_path(exporter, flag(exporter["command"], "--config.file")))
    [target] = config.targets
    assert target.events is not None, "the compose demo polls: its target has no events:"
    port = flag(simulator["command"], "--listen").rsplit(":", 1)[1]
    queue_url = urllib.parse.urlsplit(target.events.sqs_queue_url)
    # The exporter reaches the simulator's queue by its service name and port.
    assert queue_url.netloc == f"simulator:{port}"
    assert target.events.sqs_endpoint == f"http://simulator:{port}"
    scenario = host_path(simulator, flag(simulator["command"], "--scenario"))
    sim = await start_simulator(scenario, port=0, speed=0, no_quotas=True)
    try:
        assert queue_url.path == urllib.parse.urlsplit(sim.queue_url).path
        local = dataclasses.replace(
            target,
            endpoint_url=sim.url,
            events=dataclasses.replace(target.events, sqs_queue_url=sim.url + queue_url.path),
        )
        reasons = set()
        async with JobSource(local, config.collector, SelfMetrics()) as source:
            queue = await source.event_queue()
            assert queue is not None
            sim.clock.advance(300)
            for _ in range(50):
                messages = await queue.receive(wait=False)
                assert messages, "the queue ran dry before a failure event with a reason"
                events = [parse_event(m.body, target.events.reason_key) for m in messages]
                reasons |= {e.reason for e in events if e.is_failure and e.reason}
                if reasons:
                    break
        assert reasons <= set(dict(sim.scenario.devices.failure_reasons))
        assert reasons
    finally:
        await sim.close()


# --- docs/dashboards.md: every alert and every panel has its row ---------------------------


def alert_names() -> set[str]:
    names = set()
    for file in RULES:
        for group in yaml.safe_load(file.read_text())["groups"]:
            names |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
    return names


def test_every_alert_has_a_row_in_the_alert_table() -> None:
    rows = {backticked(cell)[0] for cell in first_cells(section(DASHBOARDS.read_text(), "Alerts"))}
    assert len(alert_names()) >= 13
    assert alert_names() - rows == set(), "alerts without a row in docs/dashboards.md"
    assert rows - alert_names() == set(), "rows in docs/dashboards.md for alerts that do not exist"


def dashboards() -> dict[str, dict[str, Any]]:
    boards = {}
    for file in sorted((ROOT / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(file.read_text())
        boards[board["uid"]] = board
    return boards


def every_panel(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_section(uid: str) -> str:
    text = DASHBOARDS.read_text()
    heading = re.search(rf"^### (.+\(`uid: {re.escape(uid)}`\))$", text, re.MULTILINE)
    assert heading, f"docs/dashboards.md: no section for the dashboard {uid}"
    return section(text, heading.group(1))


@pytest.mark.parametrize("uid", sorted(dashboards()))
def test_every_panel_has_a_row_in_its_dashboard_table(uid: str) -> None:
    titles = {p["title"] for p in every_panel(dashboards()[uid]) if p["type"] != "row"}
    rows = set(first_cells(dashboard_section(uid)))
    assert titles - rows == set(), f"{uid}: panels without a row in docs/dashboards.md"
    assert rows - titles == set(), f"{uid}: rows in docs/dashboards.md for no panel"


def preview_height(uid: str) -> tuple[int, int]:
    """(height of the committed picture, height render_previews.py draws for the layout)."""
    # Its layout constants, read rather than imported: the script needs matplotlib.
    source = (ROOT / "grafana" / "render_previews.py").read_text()
    header_px, row_px = (
        int(match.group(1))
        for name in ("HEADER_PX", "ROW_PX")
        if (match := re.search(rf"^{name} = (\d+)$", source, re.MULTILINE))
    )
    image = re.search(r"!\[[^\]]*\]\((images/[\w.-]+\.png)\)", dashboard_section(uid))
    assert image, f"docs/dashboards.md: no picture for {uid}"
    assert image.group(1) == f"images/{uid}.png"
    header = (ROOT / "docs" / image.group(1)).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    _, height = struct.unpack(">II", header[16:24])
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in every_panel(dashboards()[uid]))
    return height, header_px + rows * row_px


@pytest.mark.parametrize("uid", sorted(dashboards()))
def test_every_dashboard_picture_is_drawn_from_its_current_layout(uid: str) -> None:
    drawn, layout = preview_height(uid)
    assert drawn == layout, f"{uid}: the picture is {drawn} px high, the layout {layout} px"


def png_text(path: Path) -> dict[str, str]:
    """The text chunks of a PNG (tEXt, zTXt, iTXt): what render_previews.py records there."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    found: dict[str, str] = {}
    at = 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            found[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, value = body.partition(b"\0")
            found[key.decode("latin-1")] = zlib.decompress(value[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")  # language
            _, _, value = rest.partition(b"\0")  # translated keyword
            found[key.decode("latin-1")] = (
                zlib.decompress(value) if compressed else value
            ).decode()
    return found


def picture_text(uid: str) -> dict[str, str]:
    text = png_text(ROOT / "docs" / "images" / f"{uid}.png")
    assert text.get("Software") == "grafana/render_previews.py", (
        f"docs/images/{uid}.png was not drawn by grafana/render_previews.py"
    )
    return text


@pytest.mark.parametrize("uid", sorted(dashboards()))
def test_every_panel_is_drawn_in_its_picture(uid: str) -> None:
    """The panels the picture records drawing are the dashboard's, at their places: a
    panel added, moved or retitled since fails until the picture is drawn again."""
    text = picture_text(uid)
    assert text["Dashboard"] == uid
    drawn = [(p["title"], p["type"], p["gridPos"]) for p in json.loads(text["Panels"])]
    layout = [(p["title"], p["type"], p["gridPos"]) for p in every_panel(dashboards()[uid])]
    missing = [title for title, _, _ in layout if title not in {t for t, _, _ in drawn}]
    assert missing == [], f"{uid}: panels without a preview in docs/images/{uid}.png"
    assert drawn == layout, f"{uid}: the picture shows an older layout of the dashboard"


@pytest.mark.parametrize("uid", sorted(dashboards()))
def test_every_graph_in_the_pictures_shows_data(uid: str) -> None:
    """Graphs and timelines of the demo all have data (job events included); only stats and
    tables of settings the pictured job does not use may say "No data"."""
    panels = json.loads(picture_text(uid)["Panels"])
    empty = [
        p["title"] for p in panels if p["type"] in ("timeseries", "state-timeline") if not p["data"]
    ]
    assert empty == [], f"{uid}: graphs drawn without data"


def test_the_doc_says_how_the_pictures_were_drawn() -> None:
    """The picture notes name the command, the data and the window the pictures record."""
    texts = [picture_text(uid) for uid in sorted(dashboards())]
    commands = {text["Command"] for text in texts}
    assert len(commands) == 1, f"pictures drawn by different commands: {commands}"
    descriptions = {re.sub(r"; window .*", "", text["Description"]) for text in texts}
    assert len(descriptions) == 1, f"pictures drawn from different data: {descriptions}"
    description = descriptions.pop()
    match = re.search(
        r"`(python -m exporter demo[^`]*)` \(the demo scenario with job events, at "
        r"(?P<speed>real time|[\d.]+x real time)\), (?P<minutes>[\d.]+) simulated minutes",
        description,
    )
    assert match, f"the pictures are not drawn from the demo: {description}"
    # Long enough for the README's story, to the stalled rollout at about minute 35.5.
    assert float(match["minutes"]) >= 36
    notes = " ".join(section(DASHBOARDS.read_text(), "Dashboards").split("### ")[0].split())
    assert f"`{commands.pop()}`" in notes, "docs/dashboards.md: not the command of the pictures"
    assert f"{match['minutes']} simulated minutes" in notes
    assert f"at {match['speed']}" in notes
