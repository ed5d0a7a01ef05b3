"""Simulated backends: event-driven on SimPy, and stacked (all workers in one tensor)."""
from simulators.simpy_backend import SimPyBackend
from simulators.stacked import StackedBackend

BACKENDS = {"simpy": SimPyBackend, "stacked": StackedBackend}

__all__ = ["BACKENDS", "SimPyBackend", "StackedBackend"]
