"""Communication graphs: static and dynamic, with their mixing matrices and spectral quantities.

``build(spec, n, seed)`` is the entry point (spec: a name or ``{"name": ..., **params}``);
``NAMES`` lists the topologies, ``parameters(name)`` their keys and defaults. Modules:
base (Topology, Frame, errors), weights (mixing schemes), catalog (the name table, ``build``),
static / dynamic / perturb (graphs), registry (registers those), spectral (SLEM, gap,
consensus rate), cli (``harness topology ...``).

New topologies are registered like algorithms, e.g. from a config's ``imports: [mine.py]``::

    import networkx as nx
    import topologies

    @topologies.register("circulant")          # static: fn(n, seed, **params) -> networkx graph
    def circulant(n, seed=0, k: int = 2):        # on nodes 0..n-1; build applies `weights`
        return nx.circulant_graph(n, range(1, k + 1))

    @topologies.register("ring_star")          # dynamic: taking `weights` makes it one
    def ring_star(n, seed=0, weights="auto"):    # fn(n, seed, weights, **params) -> Topology
        graphs = [nx.cycle_graph(n), nx.star_graph(n - 1)]
        return topologies.Topology("ring_star", n, lambda step: topologies.mixing(graphs[step % 2], weights),
                                   static=False, period=2, weights=weights)

Then ``topology: {name: circulant, k: 3}``. Every parameter besides ``n``, ``seed`` and
``weights`` is a spec key and needs a default; specs are checked against them
(``topology.FIELD: ...`` errors). See :mod:`topologies.catalog`.
"""
from topologies.base import CLAIMS, Frame, Topology, TopologyError
from topologies.catalog import register
from topologies.registry import NAMES, build, parameters, ring
from topologies.spectral import consensus_rate, slem, spectral_gap, summary
from topologies.weights import SCHEMES, mixing

__all__ = [
    "CLAIMS", "Frame", "NAMES", "SCHEMES", "Topology", "TopologyError", "build",
    "consensus_rate", "mixing", "parameters", "register", "ring", "slem", "spectral_gap", "summary",
]
