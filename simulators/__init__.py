"""Simulated backends: event-driven on SimPy, and stacked (all workers in one tensor).

``BACKENDS`` maps a backend name to its class, imported on first use, so that reading a
config (compute, network and fault specs live here too) never imports SimPy.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

_CLASSES = {"simpy": ("simulators.simpy_backend", "SimPyBackend"), "stacked": ("simulators.stacked", "StackedBackend")}


class _Lazy(Mapping):
    def __getitem__(self, name):
        module, cls = _CLASSES[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self):
        return iter(_CLASSES)

    def __len__(self):
        return len(_CLASSES)


BACKENDS = _Lazy()


def __getattr__(name):  # simulators.SimPyBackend / StackedBackend, imported when asked for
    for key, (module, cls) in _CLASSES.items():
        if name == cls:
            return BACKENDS[key]
    raise AttributeError(f"module 'simulators' has no attribute {name!r}")


__all__ = ["BACKENDS", "SimPyBackend", "StackedBackend"]
