"""A local AWS IoT Jobs control-plane endpoint over a simulated fleet, with fault injection."""

from simulator.command import main
from simulator.scenario import Scenario, ScenarioError, load_scenario
from simulator.server import Simulator, start_simulator
from simulator.thread import SimulatorThread

__all__ = [
    "Scenario",
    "ScenarioError",
    "Simulator",
    "SimulatorThread",
    "load_scenario",
    "main",
    "start_simulator",
]
