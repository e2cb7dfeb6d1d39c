"""A local AWS IoT Jobs control-plane endpoint over a simulated fleet, with fault injection."""

from exporter.simulator.command import main
from exporter.simulator.scenario import Scenario, ScenarioError, load_scenario
from exporter.simulator.server import Simulator, start_simulator
from exporter.simulator.thread import SimulatorThread

__all__ = [
    "Scenario",
    "ScenarioError",
    "Simulator",
    "SimulatorThread",
    "load_scenario",
    "main",
    "start_simulator",
]
