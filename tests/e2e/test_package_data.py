"""The demo's files ship inside the package and are found by name, with no checkout around."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.cli.demo import DEMO_CONFIG
from exporter.config import load_config
from simulator import ScenarioError, load_scenario, start_simulator
from simulator.scenario import bundled_scenario, bundled_scenarios
from tests.simulator_client import iot_client
from tests.support import ROOT, SCENARIOS


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty folder outside the repository, as an installed command would."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo command sets up the root logger; later tests get theirs back."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)


def test_every_scenario_file_is_bundled_by_name() -> None:
    assert bundled_scenarios() == tuple(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
    assert {"demo", "scale", "abort"} <= set(bundled_scenarios())


def test_only_bare_names_are_bundled_names() -> None:
    assert bundled_scenario("demo") is not None
    for other in ("demo.yaml", "scenarios/demo", "./demo", "", "DEMO", "../demo"):
        assert bundled_scenario(other) is None, other


def test_a_bundled_name_loads_the_packaged_file(elsewhere: Path) -> None:
    by_name = load_scenario("abort")
    by_path = load_scenario(SCENARIOS / "abort.yaml")
    assert Path(by_name.file).resolve() == (SCENARIOS / "abort.yaml").resolve()
    assert by_name == by_path


def test_a_file_of_the_same_name_wins(elsewhere: Path) -> None:
    shutil.copy(SCENARIOS / "abort.yaml", elsewhere / "demo")
    scenario = load_scenario("demo")
    assert scenario.file == "demo"
    assert {job.job_id for job in scenario.jobs} == {"canary-aborted", "fleet-healthy"}


@pytest.mark.parametrize("name", ["nope", "demo.yml", "scenarios/demo"])
def test_a_missing_scenario_names_the_bundled_ones(elsewhere: Path, name: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(name)
    assert str(e.value) == (
        f"{name}: cannot read: no such file, nor a bundled scenario (abort, demo, packages, scale)"
    )


def test_the_demo_configuration_is_package_data() -> None:
    path = Path(DEMO_CONFIG).resolve()
    assert path.parent == (ROOT / "exporter").resolve()
    config = load_config(DEMO_CONFIG)
    assert [t.name for t in config.targets] == ["demo"]


@pytest.mark.usefixtures("keep_logging")
def test_demo_with_an_unknown_scenario_fails_cleanly(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--scenario", "nope", "--web.listen-address", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: nope: no such scenario file, nor a bundled scenario\n"


def test_simulator_command_with_an_unknown_scenario_fails_cleanly(
    elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulator", "--listen", "127.0.0.1:0", "--scenario", "nope"]) == 2
    assert capsys.readouterr().err == (
        "error: nope: cannot read: no such file, nor a bundled scenario "
        "(abort, demo, packages, scale)\n"
    )


async def test_a_simulator_started_by_name_serves_its_jobs(elsewhere: Path) -> None:
    sim = await start_simulator("abort", port=0, speed=0, no_quotas=True)
    try:
        async with iot_client(sim.url) as client:
            jobs = {job["jobId"] for job in (await client.list_jobs())["jobs"]}
    finally:
        await sim.close()
    assert jobs == {"canary-aborted", "fleet-healthy"}
