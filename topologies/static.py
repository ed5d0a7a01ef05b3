"""Static communication graphs on nodes ``0..n-1`` (networkx graphs; weights come later).

Every function here is ``f(n, seed, **params) -> networkx graph`` and refuses impossible
parameters with a one-line :class:`TopologyError`. Undirected graphs are ``nx.Graph``; the
exponential graph is a ``nx.DiGraph`` with edges ``sender -> receiver``.

- ring, complete, star, hypercube: the textbook graphs.
- torus / grid: 2-D ``rows x cols`` lattice with / without wrap-around (``rows`` optional;
  default: the most square factorisation of ``n``).
- exponential: node i sends to ``i + 2^k mod n`` for ``k = 0..ceil(log2 n)-1`` (static
  exponential graph, Ying et al., "Exponential Graph is Provably Efficient for Decentralized
  Deep Training", arXiv 2110.13363). In- and out-degree are both ``ceil(log2 n)``.
- regular: uniformly random connected ``d``-regular graph (resampled until connected).
- erdos_renyi: G(n, p) resampled from the seed until connected (Erdos & Renyi 1959).
- small_world: connected Watts-Strogatz graph (ring lattice of ``k`` neighbours, each edge
  rewired with probability ``p``; Watts & Strogatz, Nature 1998).
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from topologies.base import check_int, check_prob, fail

_DRAWS = 100  # how many seeded draws a random graph gets to come out connected


def _need_n(name: str, n: int, lo: int, fix: str) -> None:
    if n < lo:
        raise fail("n", f"{name} needs n >= {lo}; got n={n}", fix)


def _nodes(n: int) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    return g


def ring(n: int, seed: int = 0) -> nx.Graph:
    _need_n("ring", n, 3, "use 'complete' for 2 workers")
    return nx.cycle_graph(n)


def complete(n: int, seed: int = 0) -> nx.Graph:
    return nx.complete_graph(n)


def star(n: int, seed: int = 0, center: int = 0) -> nx.Graph:
    _need_n("star", n, 2, "use at least 2 workers")
    center = check_int("center", center, 0, n - 1)
    g = _nodes(n)
    g.add_edges_from((center, j) for j in range(n) if j != center)
    return g


def hypercube(n: int, seed: int = 0) -> nx.Graph:
    if n < 2 or n & (n - 1):
        lo = 1 << max(1, n.bit_length() - 1)
        raise fail("n", f"a hypercube needs n a power of two; got n={n}",
                   f"use n={lo} or n={2 * lo}, or 'exponential' for any n")
    g = _nodes(n)
    g.add_edges_from((i, i ^ (1 << k)) for i in range(n) for k in range(n.bit_length() - 1))
    return g


def lattice_shape(name: str, n: int, rows, min_side: int) -> tuple[int, int]:
    if rows is None:
        for r in range(math.isqrt(n), min_side - 1, -1):
            if n % r == 0 and n // r >= min_side:
                return r, n // r
        raise fail("n", f"a 2-D {name} needs n = rows*cols with rows, cols >= {min_side}; got n={n}",
                   f"use 'ring', or an n such as {min_side * min_side} or {min_side * (min_side + 1)}")
    rows = check_int("rows", rows, min_side, n)
    if n % rows or n // rows < min_side:
        raise fail("rows", f"a {name} with {rows} rows needs n divisible by {rows} with "
                   f">= {min_side} columns; got n={n}", "choose rows dividing n, or leave rows unset")
    return rows, n // rows


def _lattice(name: str, n: int, rows, periodic: bool, min_side: int) -> nx.Graph:
    r, c = lattice_shape(name, n, rows, min_side)
    g = nx.grid_2d_graph(r, c, periodic=periodic)
    return nx.relabel_nodes(g, {(i, j): i * c + j for i, j in g.nodes})


def torus(n: int, seed: int = 0, rows=None) -> nx.Graph:
    return _lattice("torus", n, rows, periodic=True, min_side=3)


def grid(n: int, seed: int = 0, rows=None) -> nx.Graph:
    return _lattice("grid", n, rows, periodic=False, min_side=2)


def exponential(n: int, seed: int = 0) -> nx.DiGraph:
    _need_n("exponential", n, 2, "use at least 2 workers")
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    hops = [1 << k for k in range(math.ceil(math.log2(n)))]
    g.add_edges_from((i, (i + h) % n) for i in range(n) for h in hops)
    return g


def _connected_draws(seed: int, draw, fld: str, problem: str, fix: str) -> nx.Graph:
    rng = np.random.default_rng(seed % 2**63)
    for _ in range(_DRAWS):
        g = draw(int(rng.integers(2**31)))
        if nx.is_connected(g):
            return g
    raise fail(fld, problem, fix)


def regular(n: int, seed: int = 0, d: int = 3) -> nx.Graph:
    d = check_int("d", d, 1)
    if n * d % 2:
        raise fail("d", f"a {d}-regular graph needs n*d even; got n={n}", "use an even n or an even d")
    if d >= n:
        raise fail("d", f"a {d}-regular graph needs d < n; got n={n}", f"use d <= {n - 1} ('complete' is d = n-1)")
    if d < 2 and n > 2:
        raise fail("d", f"a {d}-regular graph on n={n} nodes is never connected", "use d >= 2")
    return _connected_draws(seed, lambda s: nx.random_regular_graph(d, n, seed=s), "d",
                            f"no connected {d}-regular graph on n={n} in {_DRAWS} draws", "raise d")


def erdos_renyi(n: int, seed: int = 0, p: float = 0.5) -> nx.Graph:
    p = check_prob("p", p)
    hint = math.log(n) / n if n > 1 else 0.0
    return _connected_draws(seed, lambda s: nx.gnp_random_graph(n, p, seed=s), "p",
                            f"G(n={n}, p={p}) was disconnected in all {_DRAWS} draws",
                            f"raise p well above ln(n)/n = {hint:.3f}")


def small_world(n: int, seed: int = 0, k: int = 4, p: float = 0.1) -> nx.Graph:
    p = check_prob("p", p)
    k = check_int("k", k, 2)
    if k % 2 or k >= n:
        raise fail("k", f"a Watts-Strogatz graph needs an even k < n; got k={k}, n={n}",
                   f"use an even k between 2 and {n - 1}")
    rng = np.random.default_rng(seed % 2**63)
    try:
        return nx.connected_watts_strogatz_graph(n, k, p, tries=_DRAWS, seed=int(rng.integers(2**31)))
    except nx.NetworkXException:
        raise fail("p", f"no connected Watts-Strogatz graph (n={n}, k={k}, p={p}) in {_DRAWS} draws",
                   "lower p or raise k") from None


GRAPHS = {
    "ring": ring, "torus": torus, "grid": grid, "star": star, "complete": complete,
    "hypercube": hypercube, "exponential": exponential, "regular": regular,
    "erdos_renyi": erdos_renyi, "small_world": small_world,
}
