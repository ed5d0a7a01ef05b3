"""Dynamic graphs that are a pure function of ``(seed, step)``.

- one_peer_exponential: at step t node i sends only to ``i + 2^(t mod tau) mod n``,
  ``tau = ceil(log2 n)``, weight 1/2 each (Ying et al., arXiv 2110.13363). When n is a power
  of two, the product of one full cycle of tau matrices is exactly ``J = 11^T / n``.
- random_matching: each step a random matching (pairwise two-way exchange) drawn from the
  seed and the step: a uniform random pairing of all nodes on the complete graph (one node
  sits out when n is odd), or a random maximal matching of a ``base`` graph's edges.
- alternating: cycle through several base graphs, ``every`` steps each (AL-DSGD, He, Wang &
  Choromanska, arXiv 2405.11389). Each base graph keeps its own clock: a dynamic base sees
  the steps 0, 1, 2, ... of its own turns, so e.g. a one-peer cycle is never skipped.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from topologies.base import Topology, check_int, fail, step_rng
from topologies.catalog import sub_build
from topologies.weights import check_scheme, mixing

_SALT_MATCH = 0x6D61


def dynamic(name: str, n: int, graph_at, weights: str, period: int | None) -> Topology:
    """A dynamic Topology whose step-t matrix is ``mixing(graph_at(t), weights)``."""
    return Topology(name, n, lambda step: mixing(graph_at(step), weights),
                    static=False, period=period, weights=weights)


def inherit(weights: str, base: Topology) -> str:
    """A wrapper's weights: its own if given, else what its base graph asked for."""
    return base.weights if weights == "auto" else weights


def one_peer_exponential(n: int, seed: int = 0, weights: str = "auto") -> Topology:
    if n < 2:
        raise fail("n", f"one_peer_exponential needs n >= 2; got n={n}", "use at least 2 workers")
    tau = math.ceil(math.log2(n))

    def graph_at(step: int) -> nx.DiGraph:
        hop = 1 << (step % tau)
        g = nx.DiGraph()
        g.add_nodes_from(range(n))
        g.add_edges_from((i, (i + hop) % n) for i in range(n))
        return g

    return dynamic("one_peer_exponential", n, graph_at, weights, tau)


def maximal_matching(edges: list, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Greedy maximal matching over the edges taken in a random order."""
    used = np.zeros(n, dtype=bool)
    out = []
    for k in rng.permutation(len(edges)):
        u, v = edges[k]
        if u != v and not used[u] and not used[v]:
            used[u] = used[v] = True
            out.append((u, v))
    return out


def random_matching(n: int, seed: int = 0, weights: str = "auto", base="complete") -> Topology:
    if n < 2:
        raise fail("n", f"random_matching needs n >= 2; got n={n}", "use at least 2 workers")
    base_topo = None if base == "complete" else sub_build(base, n, seed, "base")
    scheme = weights if base_topo is None else inherit(weights, base_topo)

    def graph_at(step: int) -> nx.Graph:
        rng = step_rng(_SALT_MATCH, seed, step)
        g = nx.Graph()
        g.add_nodes_from(range(n))
        if base_topo is None:
            perm = rng.permutation(n)
            g.add_edges_from(zip(perm[0:n - 1:2].tolist(), perm[1::2].tolist()))
        else:
            edges = sorted({tuple(sorted(e)) for e in base_topo.graph(step).edges})
            g.add_edges_from(maximal_matching(edges, n, rng))
        return g

    topo = dynamic("random_matching", n, graph_at, scheme, None)
    topo.base = base_topo
    return topo


def _cycle(p: int | None, every: int) -> int | None:
    return None if p is None else p // math.gcd(p, every)


def alternating(n: int, seed: int = 0, weights: str = "auto", graphs=("ring", "exponential"),
                every: int = 1) -> Topology:
    every = check_int("every", every, 1)
    if isinstance(graphs, (str, dict)) or not graphs:
        raise fail("graphs", f"needs a non-empty list of topologies; got {graphs!r}",
                   "set graphs to e.g. ['ring', 'exponential']")
    kids = [sub_build(s, n, seed, f"graphs[{k}]") for k, s in enumerate(graphs)]
    if weights != "auto":
        for kid in kids:
            check_scheme(weights, kid.directed)
    m = len(kids)
    cycles = [_cycle(k.period, every) for k in kids]
    period = None if None in cycles else m * every * math.lcm(*cycles)

    def frame_at(step: int):
        kid = kids[(step // every) % m]
        local = (step // (every * m)) * every + step % every
        if weights == "auto":
            return kid.frame(local)
        return mixing(kid.graph(local), weights)

    return Topology("alternating", n, frame_at, static=False, period=period, weights=weights)


BUILDERS = {
    "one_peer_exponential": one_peer_exponential,
    "random_matching": random_matching,
    "alternating": alternating,
}
