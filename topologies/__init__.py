"""Communication graphs: static and dynamic, with their mixing matrices and spectral quantities.

``build(spec, n, seed)`` is the entry point (spec: a name or ``{"name": ..., **params}``);
``NAMES`` lists the topologies, ``parameters(name)`` their keys and defaults. Modules:
base (Topology, Frame, errors), weights (mixing schemes), static / dynamic / perturb (graphs),
spectral (SLEM, gap, consensus rate), registry (build), cli (``harness topology ...``).
"""
from topologies.base import CLAIMS, Frame, Topology, TopologyError
from topologies.registry import NAMES, build, parameters, ring
from topologies.spectral import consensus_rate, slem, spectral_gap, summary
from topologies.weights import SCHEMES, mixing

__all__ = [
    "CLAIMS", "Frame", "NAMES", "SCHEMES", "Topology", "TopologyError", "build",
    "consensus_rate", "mixing", "parameters", "ring", "slem", "spectral_gap", "summary",
]
