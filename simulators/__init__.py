"""Simulated backends: event-driven on SimPy, and stacked (all workers in one tensor).

``BACKENDS`` maps a simulated backend's name to its class, imported on first use (the rows
of :data:`harness.capabilities.BACKENDS` of kind ``simulated``), so that reading a config
(compute, network and fault specs live here too) never imports SimPy.
"""
from __future__ import annotations

from collections.abc import Mapping


def _rows():
    from harness.capabilities import BACKENDS as ALL

    return {n: b for n, b in ALL.items() if b.kind == "simulated"}


class _Lazy(Mapping):
    def __getitem__(self, name):
        return _rows()[name].load()

    def __iter__(self):
        return iter(_rows())

    def __len__(self):
        return len(_rows())


BACKENDS = _Lazy()


def __getattr__(name):  # simulators.SimPyBackend / StackedBackend, imported when asked for
    for b in _rows().values():
        if b.impl.endswith(":" + name):
            return b.load()
    raise AttributeError(f"module 'simulators' has no attribute {name!r}")


__all__ = ["BACKENDS", "SimPyBackend", "StackedBackend"]
