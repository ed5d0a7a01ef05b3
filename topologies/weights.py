"""Mixing weights: turn a communication graph into a matrix ``W`` (row i = what node i averages).

Let ``A[i, j] = 1`` when node ``i`` receives from ``j`` (``j -> i``), ``d_i`` its in-degree and,
for directed graphs, ``o_j`` the out-degree of ``j``. Schemes (the ``weights`` spec key):

- ``uniform`` (alias ``row_stochastic``): ``W[i, j] = 1 / (d_i + 1)`` over the closed
  in-neighbourhood. Always row-stochastic; doubly stochastic when every in- and out-degree is
  the same (regular graphs, circulants such as the exponential graph); symmetric when also
  undirected. On directed graphs this is the "pull" average.
- ``column_stochastic``: ``W[i, j] = 1 / (o_j + 1)``: each sender splits its mass evenly over
  itself and its out-neighbours (the push-sum / subgradient-push weights, Nedic & Olshevsky,
  arXiv 1303.2289). Always column-stochastic.
- ``metropolis``: Metropolis-Hastings, ``W[i, j] = 1 / (1 + max(d_i, d_j))`` on edges, the rest
  on the diagonal (Xiao, Boyd & Lall 2005). Symmetric and doubly stochastic on any undirected
  graph. Undirected graphs only.
- ``best_constant``: ``W = I - alpha L`` with the graph Laplacian ``L`` and
  ``alpha = 2 / (lambda_2 + lambda_max)``, the best constant edge weight (Xiao & Boyd,
  "Fast linear iterations for distributed averaging", 2004); ``lambda_2`` is the smallest
  non-zero Laplacian eigenvalue (so a disconnected step still gets a sensible alpha).
  Symmetric and doubly stochastic; self weights ``1 - alpha d_i`` can be NEGATIVE on irregular
  graphs (e.g. the hub of a star), and then ``nonnegative`` is not claimed. Undirected only.
- ``auto`` (default): ``metropolis`` on undirected graphs, ``uniform`` on directed ones. On a
  regular undirected graph metropolis and uniform give the same matrix, so this is "uniform
  where regular, Metropolis where irregular", and it stays doubly stochastic when a dynamic
  graph (failures, churn, matchings) makes a step irregular.
"""
from __future__ import annotations

import networkx as nx
import numpy as np

from topologies.base import Frame, fail

SCHEMES = ("auto", "uniform", "row_stochastic", "column_stochastic", "metropolis", "best_constant")
_UNDIRECTED_ONLY = ("metropolis", "best_constant")


def check_scheme(scheme, directed: bool | None = None) -> str:
    """Validate a ``weights`` value (and, if known, that it suits the graph's direction)."""
    if scheme not in SCHEMES:
        raise fail("weights", f"unknown weight scheme {scheme!r}", f"choose one of {list(SCHEMES)}")
    if directed and scheme in _UNDIRECTED_ONLY:
        raise fail("weights", f"{scheme!r} needs an undirected graph and this one is directed",
                   "use 'uniform' (row-stochastic) or 'column_stochastic'")
    return scheme


def in_adjacency(g: nx.Graph, n: int) -> np.ndarray:
    """``A[i, j] = 1`` iff ``j -> i`` is an edge (self loops dropped)."""
    a = nx.to_numpy_array(g, nodelist=range(n), weight=None, dtype=np.float64)
    if g.is_directed():
        a = a.T  # networkx rows are senders; ours are receivers
    np.fill_diagonal(a, 0.0)
    return (a != 0).astype(np.float64)


def _uniform(a: np.ndarray, col: bool) -> np.ndarray:
    eye = np.eye(len(a))
    if col:
        return (a + eye) / (a.sum(0) + 1.0)[None, :]
    return (a + eye) / (a.sum(1) + 1.0)[:, None]


def _metropolis(a: np.ndarray) -> np.ndarray:
    d = a.sum(1)
    w = a / (1.0 + np.maximum(d[:, None], d[None, :]))
    np.fill_diagonal(w, 1.0 - w.sum(1))
    return w


def best_constant_alpha(a: np.ndarray) -> float:
    """``2 / (lambda_2 + lambda_max)`` of the Laplacian of symmetric adjacency ``a`` (0 if no edges)."""
    lap = np.diag(a.sum(1)) - a
    ev = np.linalg.eigvalsh(lap)
    lmax = ev[-1]
    nonzero = ev[ev > 1e-9 * max(1.0, lmax)]
    return 0.0 if len(nonzero) == 0 else 2.0 / (nonzero[0] + lmax)


def mixing(g: nx.Graph, scheme: str = "auto") -> Frame:
    """The Frame (graph, W, claims) of graph ``g`` (nodes 0..n-1) under weight ``scheme``."""
    n = g.number_of_nodes()
    directed = g.is_directed()
    check_scheme(scheme, directed)
    if scheme == "auto":
        scheme = "uniform" if directed else "metropolis"
    if scheme == "row_stochastic":
        scheme = "uniform"
    a = in_adjacency(g, n)
    d_in, d_out = a.sum(1), a.sum(0)
    balanced_regular = bool(n == 0 or (np.all(d_in == d_in[0]) and np.all(d_out == d_in[0])))
    undirected_regular = (not directed) and balanced_regular
    claims = {"nonnegative"}
    if scheme in ("uniform", "column_stochastic"):
        w = _uniform(a, col=scheme == "column_stochastic")
        claims |= {"row_stochastic", "column_stochastic"} if balanced_regular else (
            {"column_stochastic"} if scheme == "column_stochastic" else {"row_stochastic"})
        if undirected_regular:
            claims.add("symmetric")
    elif scheme == "metropolis":
        w = _metropolis(a)
        claims |= {"row_stochastic", "column_stochastic", "symmetric"}
    else:  # best_constant
        alpha = best_constant_alpha(a)
        w = np.eye(n) - alpha * (np.diag(d_in) - a)
        claims = {"row_stochastic", "column_stochastic", "symmetric"}
        if n == 0 or alpha * d_in.max() <= 1.0 + 1e-12:
            claims.add("nonnegative")
    return Frame(g, w, frozenset(claims), scheme)
