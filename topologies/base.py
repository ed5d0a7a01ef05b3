"""What every backend needs from a communication graph.

A topology over ``n`` nodes is a mixing matrix per step, ``W(step)``: row ``i`` holds the
weights node ``i`` gives to the models it averages (``x_i <- sum_j W[i, j] x_j``).
``W[i, j] > 0`` for ``j != i`` means a message from ``j`` to ``i`` at that step.
Static graphs return the same matrix for every step; dynamic graphs change with the step.

Each step is a :class:`Frame`: the communication graph of that step (a networkx ``Graph``
when links are two-way, a ``DiGraph`` with edges ``sender -> receiver`` otherwise), its mixing
matrix, and the properties the weight scheme *claims* for it (``row_stochastic``,
``column_stochastic``, ``symmetric``, ``nonnegative``), derived from the graph's degrees, not
measured on the matrix, so tests can hold the matrix to them.

This module also holds the small field checks every builder uses, so that every bad input
raises :class:`TopologyError` with one line ``topology.FIELD: what is wrong; how to fix it``.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import networkx as nx
import numpy as np
import torch

CLAIMS = ("row_stochastic", "column_stochastic", "symmetric", "nonnegative")


class TopologyError(ValueError):
    """A bad topology name or parameter; the message is one line naming the field."""


@dataclass(frozen=True)
class Frame:
    """One step of a topology: graph, mixing matrix, claimed properties, scheme used."""

    graph: nx.Graph
    W: np.ndarray
    claims: frozenset
    scheme: str = "given"


def frame_from_matrix(w: np.ndarray, tol: float = 1e-12) -> Frame:
    """A Frame for a hand-made matrix: graph = its support, claims = what it satisfies."""
    w = np.asarray(w, dtype=np.float64)
    n = w.shape[0]
    sym = bool(np.allclose(w, w.T, atol=tol, rtol=0))
    g = nx.Graph() if sym else nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from((int(j), int(i)) for i, j in zip(*np.nonzero(w)) if i != j)
    claims = {
        "row_stochastic": np.allclose(w.sum(1), 1, atol=tol, rtol=0),
        "column_stochastic": np.allclose(w.sum(0), 1, atol=tol, rtol=0),
        "symmetric": sym,
        "nonnegative": bool((w >= 0).all()),
    }
    return Frame(g, w, frozenset(k for k, v in claims.items() if v))


@dataclass
class Topology:
    """A (possibly dynamic) communication graph over ``n`` nodes.

    ``_w(step)`` returns a :class:`Frame` (or, for hand-made topologies, a bare [n, n]
    matrix). ``period`` is the length of the cycle of a periodic dynamic graph (1 if static,
    None if aperiodic). ``weights`` is the weight scheme asked for (``"auto"`` = default).
    ``base`` is the topology a perturbation wraps (None for plain graphs).
    """

    name: str
    n: int
    _w: Callable[[int], Frame | np.ndarray]
    static: bool = True
    params: dict = field(default_factory=dict)
    period: int | None = 1
    weights: str = "auto"
    base: "Topology | None" = None  # the graph a perturbation (failures, churn, ...) acts on

    def __post_init__(self):
        # Cache per step: backends ask for the same step's matrix once per worker.
        self._cached = lru_cache(maxsize=64)(self._frame)

    def _frame(self, step: int) -> Frame:
        f = self._w(step)
        return f if isinstance(f, Frame) else frame_from_matrix(f)

    def frame(self, step: int = 0) -> Frame:
        """Graph, matrix and claimed properties at ``step``."""
        return self._cached(0 if self.static else int(step))

    def W(self, step: int = 0) -> np.ndarray:
        """The [n, n] mixing matrix used at ``step`` (float64; do not modify)."""
        return self.frame(step).W

    def W_torch(self, step: int, dtype=torch.float64) -> torch.Tensor:
        return torch.as_tensor(self.W(step), dtype=dtype)

    def graph(self, step: int = 0) -> nx.Graph:
        """Communication graph at ``step`` (``DiGraph`` edges run sender -> receiver)."""
        return self.frame(step).graph

    def claims(self, step: int = 0) -> frozenset:
        """Properties of ``W(step)`` promised by its weight scheme (see ``CLAIMS``)."""
        return self.frame(step).claims

    @property
    def directed(self) -> bool:
        return self.graph(0).is_directed()

    def in_neighbors(self, i: int, step: int = 0) -> list[int]:
        """Nodes whose model node ``i`` receives at ``step`` (excludes ``i``)."""
        row = self.W(step)[i]
        return [int(j) for j in np.flatnonzero(row) if j != i]

    def out_neighbors(self, i: int, step: int = 0) -> list[int]:
        """Nodes that receive node ``i``'s model at ``step`` (excludes ``i``)."""
        col = self.W(step)[:, i]
        return [int(j) for j in np.flatnonzero(col) if j != i]


# ---- field checks: one-line errors "topology.FIELD: problem; fix" ---------------------------

def fail(fld: str, problem: str, fix: str) -> TopologyError:
    """Build the one-line error for ``topology.<fld>``."""
    return TopologyError(f"topology.{fld}: {problem}; {fix}".replace("\n", " "))


def check_int(fld: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi]; bools and non-integral numbers are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail(fld, f"must be an integer; got {value!r}", f"set {fld} to a whole number")
    value = int(value)
    if lo is not None and value < lo:
        raise fail(fld, f"must be >= {lo}; got {value}", f"set {fld} to at least {lo}")
    if hi is not None and value > hi:
        raise fail(fld, f"must be <= {hi}; got {value}", f"set {fld} to at most {hi}")
    return value


def check_prob(fld: str, value) -> float:
    """``value`` as a float in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise fail(fld, f"must be a probability; got {value!r}", f"set {fld} to a number in [0, 1]")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise fail(fld, f"must lie in [0, 1]; got {value}", f"set {fld} to a number in [0, 1]")
    return value


def step_rng(salt: int, seed: int, *key: int) -> np.random.Generator:
    """A generator that depends only on (salt, seed, key): dynamic graphs stay reproducible."""
    return np.random.default_rng([salt, int(seed) % 2**63, *(int(k) % 2**63 for k in key)])
