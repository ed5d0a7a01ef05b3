"""Random perturbations of a base graph, each a pure function of ``(seed, step)``.

- matcha: budgeted matchings. The base graph's edges are split into matchings (greedy proper
  edge colouring, at most 2*max_degree - 1 of them); each step every matching is switched on
  independently with probability ``budget`` and nodes mix over the union of the active ones.
  This is MATCHA (Wang et al., arXiv 1905.09435) with equal activation probabilities; the paper
  also optimises per-matching probabilities and a mixing weight, which are left out here: the
  step's matrix comes from the ``weights`` scheme (default Metropolis). Expected traffic per
  step is ``budget`` times that of the base graph.
- edge_failures: each edge of the base graph (of that step, if the base is dynamic) is down
  independently with probability ``p`` at every step.
- churn: node i is absent for whole windows of ``duration`` steps. Windows are staggered per
  node by a seeded offset; in each window the node is absent with probability ``p``. An absent
  node sends and receives nothing: its row and column of W are those of the identity (it keeps
  its own model), and the others mix over the base graph without it.

The weights default to those the base spec asked for (``auto``: Metropolis on undirected
graphs, so a step stays doubly stochastic however irregular it gets).
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from topologies.base import Topology, check_int, check_prob, fail, step_rng
from topologies.catalog import sub_build
from topologies.dynamic import dynamic, inherit

_SALT_MATCHA, _SALT_FAIL, _SALT_CHURN = 0x6D74, 0x6661, 0x6368


def matching_decomposition(g: nx.Graph) -> list[list[tuple[int, int]]]:
    """Split an undirected graph's edges into matchings (greedy edge colouring, sorted order)."""
    colours: list[list[tuple[int, int]]] = []
    used: dict[int, set[int]] = {v: set() for v in g.nodes}
    for u, v in sorted(tuple(sorted(e)) for e in g.edges if e[0] != e[1]):
        c = next(c for c in range(len(colours) + 1) if c not in used[u] and c not in used[v])
        if c == len(colours):
            colours.append([])
        colours[c].append((u, v))
        used[u].add(c)
        used[v].add(c)
    return colours


def _empty_like(g: nx.Graph) -> nx.Graph:
    h = g.__class__()
    h.add_nodes_from(g.nodes)
    return h


def matcha(n: int, seed: int = 0, weights: str = "auto", base="ring", budget: float = 0.5) -> Topology:
    budget = check_prob("budget", budget)
    base_t = sub_build(base, n, seed, "base")
    g0 = base_t.graph(0)
    if not base_t.static or g0.is_directed():
        raise fail("base", f"matcha needs a static undirected base graph; got {base_t.name!r}",
                   "use e.g. 'ring', 'torus', 'erdos_renyi' or 'complete'")
    matchings = matching_decomposition(g0)

    def graph_at(step: int) -> nx.Graph:
        on = step_rng(_SALT_MATCHA, seed, step).random(len(matchings)) < budget
        g = _empty_like(g0)
        for k in np.flatnonzero(on):
            g.add_edges_from(matchings[k])
        return g

    topo = dynamic("matcha", n, graph_at, inherit(weights, base_t), None)
    topo.base, topo.matchings = base_t, matchings
    return topo


def edge_failures(n: int, seed: int = 0, weights: str = "auto", base="ring", p: float = 0.1) -> Topology:
    p = check_prob("p", p)
    base_t = sub_build(base, n, seed, "base")

    def graph_at(step: int) -> nx.Graph:
        g = base_t.graph(step)
        edges = sorted(e for e in g.edges if e[0] != e[1])
        up = step_rng(_SALT_FAIL, seed, step).random(len(edges)) >= p
        h = _empty_like(g)
        h.add_edges_from(e for e, ok in zip(edges, up) if ok)
        return h

    topo = dynamic("edge_failures", n, graph_at, inherit(weights, base_t), None)
    topo.base = base_t
    return topo


def absent_nodes(n: int, seed: int, step: int, p: float, duration: int) -> np.ndarray:
    """Boolean [n]: which nodes are absent at ``step`` (staggered windows of ``duration``)."""
    offset = step_rng(_SALT_CHURN, seed, -1).integers(0, duration, size=n)
    window = (step + offset) // duration  # each node's window index: one of two values
    lo = int(window.min())
    draws = {w: step_rng(_SALT_CHURN, seed, w).random(n) for w in (lo, lo + 1)}
    return np.array([draws[int(w)][i] < p for i, w in enumerate(window)], dtype=bool)


def churn(n: int, seed: int = 0, weights: str = "auto", base="ring", p: float = 0.1,
          duration: int = 10) -> Topology:
    p = check_prob("p", p)
    duration = check_int("duration", duration, 1)
    base_t = sub_build(base, n, seed, "base")

    def graph_at(step: int) -> nx.Graph:
        g = base_t.graph(step)
        gone = set(np.flatnonzero(absent_nodes(n, seed, step, p, duration)).tolist())
        h = _empty_like(g)
        h.add_edges_from(e for e in g.edges if e[0] not in gone and e[1] not in gone and e[0] != e[1])
        return h

    topo = dynamic("churn", n, graph_at, inherit(weights, base_t), None)
    topo.base = base_t
    return topo


BUILDERS = {"matcha": matcha, "edge_failures": edge_failures, "churn": churn}
