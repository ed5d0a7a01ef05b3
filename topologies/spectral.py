"""Spectral and graph quantities that say how fast gossip mixes.

- ``slem(W)``: second largest eigenvalue modulus, the second entry of ``|eig(W)|`` sorted in
  decreasing order (for a symmetric doubly stochastic W this equals ``||W - J||_2``, the
  per-step contraction of the disagreement; Boyd et al., "Randomized gossip algorithms", 2006).
- ``spectral_gap(W) = 1 - slem(W)``.
- ``consensus_rate(topo, window, start)``: the empirical per-step contraction of a dynamic
  sequence, ``||(I - J) W(start+window-1) ... W(start)||_2 ** (1 / window)`` with
  ``J = 11^T / n``. For doubly stochastic steps ``(I - J) P = P - J``, so this is the
  ``||prod W(t) - J||_2^(1/window)`` of the literature; for row-stochastic steps it measures
  how far the product is from giving every node the same combination of models.
- ``degree_stats``, ``diameter``: in-degree min/mean/max and the diameter (``inf`` when the
  step's graph is not (strongly) connected).
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from topologies.base import Topology


def eigenvalues(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of W (real and ascending when W is symmetric)."""
    w = np.asarray(w, dtype=np.float64)
    if np.allclose(w, w.T, atol=1e-13, rtol=0):
        return np.linalg.eigvalsh((w + w.T) / 2)
    return np.linalg.eigvals(w)


def slem(w: np.ndarray) -> float:
    """Second largest eigenvalue modulus of W (0 for a single node)."""
    mods = np.sort(np.abs(eigenvalues(w)))[::-1]
    mods[(mods > 1.0) & (mods < 1.0 + 1e-10)] = 1.0  # rounding above the stochastic bound
    return float(mods[1]) if len(mods) > 1 else 0.0


def spectral_gap(w: np.ndarray) -> float:
    """``1 - slem(W)``: 1 means exact averaging in one step, 0 means no mixing."""
    return 1.0 - slem(w)


def product(topo: Topology, window: int, start: int = 0) -> np.ndarray:
    """``W(start+window-1) @ ... @ W(start)``: what ``window`` gossip steps do to the models."""
    p = np.eye(topo.n)
    for t in range(start, start + window):
        p = topo.W(t) @ p
    return p


def consensus_rate(topo: Topology, window: int | None = None, start: int = 0) -> float:
    """Empirical per-step contraction over ``window`` steps (default: one period, or 16)."""
    if window is None:
        window = topo.period if topo.period and topo.period > 1 else 16
    if window < 1:
        raise ValueError(f"consensus_rate: window must be >= 1; got {window}")
    n = topo.n
    dev = np.linalg.norm((np.eye(n) - np.full((n, n), 1.0 / n)) @ product(topo, window, start), 2)
    return float(dev) ** (1.0 / window)


def degree_stats(g: nx.Graph) -> tuple[int, float, int]:
    """(min, mean, max) number of models a node receives (in-degree; degree if undirected)."""
    deg = [d for _, d in (g.in_degree() if g.is_directed() else g.degree())]
    return (min(deg), sum(deg) / len(deg), max(deg)) if deg else (0, 0.0, 0)


def diameter(g: nx.Graph) -> float:
    """Longest shortest path (directed paths for a DiGraph); ``inf`` if not connected."""
    if g.number_of_nodes() <= 1:
        return 0
    connected = nx.is_strongly_connected(g) if g.is_directed() else nx.is_connected(g)
    return nx.diameter(g) if connected else math.inf


def summary(topo: Topology, step: int = 0) -> dict:
    """Degree, diameter, SLEM and gap of ``W(step)``: one row for a report or the CLI."""
    g, w = topo.graph(step), topo.W(step)
    lo, mean, hi = degree_stats(g)
    s = slem(w)
    return {"step": step, "edges": g.number_of_edges(), "deg_min": lo, "deg_mean": mean,
            "deg_max": hi, "diameter": diameter(g), "slem": s, "gap": 1.0 - s}
