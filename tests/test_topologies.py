"""Topologies: every W(step) keeps the promises of its weight scheme, closed-form spectra,
exact averaging of the one-peer exponential cycle, determinism, and one-line errors."""
from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

import topologies as T
from topologies.perturb import absent_nodes, matching_decomposition

TOL = 1e-12
SEEDS = (0, 1, 2)
STEPS = range(6)

# (label, spec, node counts to try): every graph family, some wrapped around others.
SPECS = [
    ("ring", "ring", [3, 4, 5, 8, 13]),
    ("torus", "torus", [9, 12, 15, 16, 25]),
    ("grid", "grid", [4, 6, 9, 12, 16]),
    ("star", "star", [2, 3, 7, 16]),
    ("complete", "complete", [1, 2, 5, 16]),
    ("hypercube", "hypercube", [2, 4, 8, 16, 32]),
    ("exponential", "exponential", [2, 3, 5, 8, 12, 16]),
    ("regular3", {"name": "regular", "d": 3}, [4, 6, 10, 16]),
    ("regular4", {"name": "regular", "d": 4}, [5, 7, 12]),
    ("erdos_renyi", {"name": "erdos_renyi", "p": 0.4}, [3, 6, 12, 20]),
    ("small_world", "small_world", [5, 8, 16]),
    ("one_peer", "one_peer_exponential", [2, 3, 6, 8, 16]),
    ("matching", "random_matching", [2, 5, 8, 13]),
    ("matching_torus", {"name": "random_matching", "base": "torus"}, [9, 12]),
    ("alternating", "alternating", [3, 5, 8, 16]),
    ("alternating2", {"name": "alternating", "graphs": ["ring", "torus"], "every": 2}, [9, 12]),
    ("matcha", "matcha", [3, 8, 11]),
    ("matcha_er", {"name": "matcha", "base": {"name": "erdos_renyi", "p": 0.5}, "budget": 0.4}, [6, 10]),
    ("failures", {"name": "edge_failures", "p": 0.3}, [3, 8, 13]),
    ("failures_exp", {"name": "edge_failures", "base": "exponential", "p": 0.3}, [4, 7, 16]),
    ("churn", {"name": "churn", "p": 0.3, "duration": 3}, [3, 8, 13]),
    ("churn_onepeer", {"name": "churn", "base": "one_peer_exponential", "p": 0.3, "duration": 2}, [4, 8, 11]),
]
DIRECTED = {"exponential", "one_peer", "alternating", "failures_exp", "churn_onepeer"}
SCHEMES = ["auto", "uniform", "column_stochastic", "metropolis", "best_constant"]
# what each scheme must claim on every step, whatever the graph
ALWAYS = {
    "uniform": {"row_stochastic", "nonnegative"},
    "column_stochastic": {"column_stochastic", "nonnegative"},
    "metropolis": {"row_stochastic", "column_stochastic", "symmetric", "nonnegative"},
    "best_constant": {"row_stochastic", "column_stochastic", "symmetric"},
}


def with_weights(spec, weights):
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    return {**spec, "weights": weights}


def edge_set(g: nx.Graph) -> set:
    """Directed pairs (sender, receiver); an undirected edge gives both."""
    out = set(g.edges)
    if not g.is_directed():
        out |= {(v, u) for u, v in g.edges}
    return {(u, v) for u, v in out if u != v}


def check_frame(topo: T.Topology, step: int, scheme: str) -> None:
    f = topo.frame(step)
    w, n = f.W, topo.n
    assert w.shape == (n, n) and w.dtype == np.float64 and np.isfinite(w).all()
    assert f.claims <= set(T.CLAIMS)
    assert ALWAYS.get(f.scheme, set()) <= f.claims, (f.scheme, f.claims)
    if "row_stochastic" in f.claims:
        np.testing.assert_allclose(w.sum(1), 1.0, atol=TOL, rtol=0)
    if "column_stochastic" in f.claims:
        np.testing.assert_allclose(w.sum(0), 1.0, atol=TOL, rtol=0)
    if "symmetric" in f.claims:
        np.testing.assert_allclose(w, w.T, atol=TOL, rtol=0)
    if "nonnegative" in f.claims:
        assert w.min() >= -TOL
    # support: W[i, j] != 0 (i != j) exactly on the step's edges j -> i
    edges = edge_set(f.graph)
    support = {(int(j), int(i)) for i, j in zip(*np.nonzero(np.abs(w) > TOL)) if i != j}
    assert support == edges
    # the backend-facing neighbour lists agree with the graph
    for i in range(n):
        assert topo.in_neighbors(i, step) == sorted(j for j, k in edges if k == i)
        assert topo.out_neighbors(i, step) == sorted(k for j, k in edges if j == i)
    if topo.base is not None:  # a perturbation only removes edges of its base graph
        assert edges <= edge_set(topo.base.graph(step))


CASES = [(label, spec, ns, s) for label, spec, ns in SPECS for s in SCHEMES
         if not (label in DIRECTED and s in ("metropolis", "best_constant"))]


@pytest.mark.parametrize("label,spec,ns,scheme", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_every_step_keeps_its_claims(label, spec, ns, scheme):
    for n in ns:
        for seed in SEEDS:
            topo = T.build(with_weights(spec, scheme), n, seed)
            assert topo.n == n and topo.name == (spec if isinstance(spec, str) else spec["name"])
            for step in (STEPS if not topo.static else (0, 7)):
                check_frame(topo, step, scheme)


@pytest.mark.parametrize("label,spec,ns", [s for s in SPECS if s[0] in DIRECTED])
def test_directed_graphs_refuse_symmetric_schemes(label, spec, ns):
    for scheme in ("metropolis", "best_constant"):
        with pytest.raises(T.TopologyError, match=r"^topology\.(\w|\.)*weights: "):
            T.build(with_weights(spec, scheme), ns[-1], 0)


@pytest.mark.parametrize("label,spec,ns", SPECS, ids=[s[0] for s in SPECS])
def test_dynamic_graphs_are_functions_of_seed_and_step(label, spec, ns):
    n = ns[-1]
    a, b = T.build(spec, n, 3), T.build(spec, n, 3)
    steps = list(range(12))
    forward = [a.W(t).copy() for t in steps]
    backward = [b.W(t).copy() for t in reversed(steps)][::-1]  # no hidden state in the order
    for x, y in zip(forward, backward):
        np.testing.assert_array_equal(x, y)
    if a.static:
        assert all(np.array_equal(forward[0], x) for x in forward)
    random = label not in {"ring", "torus", "grid", "star", "complete", "hypercube", "exponential",
                           "one_peer", "alternating", "alternating2"}
    if random:  # another seed gives another sequence
        c = T.build(spec, n, 4)
        assert any(not np.array_equal(c.W(t), x) for t, x in zip(steps, forward))


# ---- structure of each graph, checked against its definition --------------------------------

def test_graph_structures():
    for n in (3, 5, 8, 13):
        assert edge_set(T.build("ring", n).graph()) == {(i, (i + s) % n) for i in range(n) for s in (1, -1)}
    for n in (2, 5, 8, 12, 16):
        hops = {1 << k for k in range(math.ceil(math.log2(n)))}
        assert edge_set(T.build("exponential", n).graph()) == {(i, (i + h) % n) for i in range(n) for h in hops}
    for n in (4, 8, 32):
        expect = {(i, j) for i in range(n) for j in range(n) if bin(i ^ j).count("1") == 1}
        assert edge_set(T.build("hypercube", n).graph()) == expect
    g = T.build("torus", 12).graph()
    assert sorted(d for _, d in g.degree()) == [4] * 12 and g.number_of_edges() == 24
    assert T.build("grid", 12).graph().number_of_edges() == 2 * 12 - 3 - 4
    assert dict(T.build({"name": "star", "center": 2}, 6).graph().degree())[2] == 5
    assert T.build("complete", 7).graph().number_of_edges() == 21
    for seed in SEEDS:
        g = T.build({"name": "regular", "d": 5}, 12, seed).graph()
        assert {d for _, d in g.degree()} == {5} and nx.is_connected(g)
        assert nx.is_connected(T.build({"name": "erdos_renyi", "p": 0.2}, 20, seed).graph())
        g = T.build({"name": "small_world", "k": 4, "p": 0.3}, 16, seed).graph()
        assert nx.is_connected(g) and g.number_of_edges() == 32


def test_one_peer_exponential_neighbours():
    n, tau = 12, 4
    topo = T.build("one_peer_exponential", n)
    for t in range(2 * tau):
        hop = 1 << (t % tau)
        for i in range(n):
            assert topo.in_neighbors(i, t) == [(i - hop) % n]
            assert topo.out_neighbors(i, t) == [(i + hop) % n]
            assert topo.W(t)[i, i] == 0.5 and topo.W(t)[i, (i - hop) % n] == 0.5


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64, 128])
def test_one_peer_cycle_averages_exactly(n):
    topo = T.build("one_peer_exponential", n)
    tau = int(math.log2(n))
    assert topo.period == tau
    for start in (0, 1, 5):  # any tau consecutive steps (the matrices commute)
        assert np.abs(T.spectral.product(topo, tau, start) - 1.0 / n).max() <= 1e-12
    assert T.consensus_rate(topo, tau) < 1e-4


@pytest.mark.parametrize("n", [3, 6, 12])
def test_one_peer_cycle_is_not_exact_off_powers_of_two(n):
    topo = T.build("one_peer_exponential", n)
    assert np.abs(T.spectral.product(topo, topo.period) - 1.0 / n).max() > 1e-3


# ---- closed-form spectra ----------------------------------------------------------------------

@pytest.mark.parametrize("n", range(3, 21))
def test_ring_uniform_spectrum(n):
    for scheme in ("uniform", "auto", "metropolis"):  # all equal 1/3 on a ring
        w = T.build({"name": "ring", "weights": scheme}, n).W()
        expect = np.sort((1 + 2 * np.cos(2 * np.pi * np.arange(n) / n)) / 3)
        np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(w)), expect, atol=1e-12)
        mods = np.sort(np.abs(expect))[::-1]
        assert T.slem(w) == pytest.approx(mods[1], abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_complete_graph_averages_in_one_step(n):
    for scheme in ("uniform", "metropolis", "best_constant", "column_stochastic"):
        w = T.build({"name": "complete", "weights": scheme}, n).W()
        np.testing.assert_allclose(w, np.full((n, n), 1.0 / n), atol=1e-12)
        assert T.spectral_gap(w) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("m", range(1, 7))
def test_hypercube_spectrum(m):
    n = 2**m
    w = T.build("hypercube", n).W()
    expect = np.sort(np.concatenate([[1 - 2 * k / (m + 1)] * math.comb(m, k) for k in range(m + 1)]))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(w)), expect, atol=1e-12)
    assert T.slem(w) == pytest.approx((m - 1) / (m + 1), abs=1e-12)


@pytest.mark.parametrize("rows,cols", [(3, 3), (3, 4), (4, 4), (5, 3)])
def test_torus_spectrum(rows, cols):
    w = T.build({"name": "torus", "rows": rows}, rows * cols).W()
    a, b = np.meshgrid(np.arange(rows), np.arange(cols))
    expect = (1 + 2 * np.cos(2 * np.pi * a / rows) + 2 * np.cos(2 * np.pi * b / cols)) / 5
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(w)), np.sort(expect.ravel()), atol=1e-12)


@pytest.mark.parametrize("m", range(2, 7))
def test_exponential_graph_gap(m):
    """Ying et al. (arXiv 2110.13363): for n = 2^m the gap is 2 / (1 + log2 n)."""
    n = 2**m
    w = T.build("exponential", n).W()
    shifts = sum(np.roll(np.eye(n), 1 << k, axis=0) for k in range(m))
    np.testing.assert_allclose(w, (np.eye(n) + shifts) / (m + 1), atol=1e-15)
    assert T.spectral_gap(w) == pytest.approx(2 / (1 + m), abs=1e-12)


@pytest.mark.parametrize("n", [4, 7, 10, 16])
def test_best_constant_ring(n):
    lam = np.sort(2 - 2 * np.cos(2 * np.pi * np.arange(n) / n))
    l2, lmax = lam[1], lam[-1]
    w = T.build({"name": "ring", "weights": "best_constant"}, n).W()
    np.testing.assert_allclose(w[0, 1], 2 / (l2 + lmax), atol=1e-12)
    assert T.slem(w) == pytest.approx((lmax - l2) / (lmax + l2), abs=1e-12)
    # the best constant beats the 1/3 ring on SLEM
    assert T.slem(w) <= T.slem(T.build("ring", n).W()) + 1e-12


def test_star_weights():
    n = 8
    m = T.build({"name": "star", "weights": "metropolis"}, n).W()
    assert m[0, 1] == pytest.approx(1 / n) and m[1, 1] == pytest.approx(1 - 1 / n) and m[0, 0] == pytest.approx(1 / n)
    bc = T.build({"name": "star", "weights": "best_constant"}, n)
    assert bc.W()[0, 0] < 0 and "nonnegative" not in bc.claims()  # hub self weight 1 - 2(n-1)/(n+1)
    u = T.build({"name": "star", "weights": "uniform"}, n)
    assert "column_stochastic" not in u.claims() and abs(u.W().sum(0) - 1).max() > 0.1
    np.testing.assert_array_equal(T.build({"name": "star", "weights": "row_stochastic"}, n).W(), u.W())


def test_push_sum_weights_on_an_irregular_digraph():
    topo = T.build({"name": "churn", "base": "exponential", "p": 0.5, "weights": "column_stochastic"}, 8, 1)
    w = topo.W(0)
    g = topo.graph(0)
    for j in range(8):
        for i in topo.out_neighbors(j):
            assert w[i, j] == pytest.approx(1 / (g.out_degree(j) + 1))
    assert abs(w.sum(1) - 1).max() > 1e-3  # genuinely not row-stochastic here


def test_static_consensus_rate_is_slem():
    for spec, n in (("ring", 10), ("torus", 16), ("exponential", 8)):
        topo = T.build(spec, n)
        assert T.consensus_rate(topo, 7) == pytest.approx(T.slem(topo.W()), rel=1e-9)


# ---- the perturbations do what they say ---------------------------------------------------------

def test_random_matching_pairs_everyone():
    for n in (4, 7):
        topo = T.build("random_matching", n, 5)
        seen = set()
        for t in range(200):
            g = topo.graph(t)
            assert g.number_of_edges() == n // 2 and max(d for _, d in g.degree()) == 1
            seen |= {tuple(sorted(e)) for e in g.edges}
        assert len(seen) == n * (n - 1) // 2  # every pair gets drawn


def test_matcha():
    g = T.build("torus", 16).graph()
    parts = matching_decomposition(g)
    flat = [e for p in parts for e in p]
    assert len(flat) == len(set(flat)) == g.number_of_edges()
    assert all(len({v for e in p for v in e}) == 2 * len(p) for p in parts)  # each is a matching
    assert len(parts) <= 2 * 4 - 1
    assert T.build({"name": "matcha", "base": "torus", "budget": 0.0}, 16).graph(3).number_of_edges() == 0
    assert edge_set(T.build({"name": "matcha", "base": "torus", "budget": 1.0}, 16).graph(3)) == edge_set(g)
    topo = T.build({"name": "matcha", "base": "torus", "budget": 0.3}, 16, 2)
    share = np.mean([topo.graph(t).number_of_edges() for t in range(400)]) / g.number_of_edges()
    assert abs(share - 0.3) < 0.05


def test_edge_failures():
    ring = edge_set(T.build("ring", 10).graph())
    assert edge_set(T.build({"name": "edge_failures", "p": 0.0}, 10).graph(4)) == ring
    assert T.build({"name": "edge_failures", "p": 1.0}, 10).W(4).tolist() == np.eye(10).tolist()
    topo = T.build({"name": "edge_failures", "p": 0.25}, 20, 1)
    up = np.mean([topo.graph(t).number_of_edges() for t in range(400)]) / 20
    assert abs(up - 0.75) < 0.03


def test_churn_absent_nodes_keep_their_model():
    n, p, dur = 12, 0.3, 5
    topo = T.build({"name": "churn", "p": p, "duration": dur, "base": "torus"}, n, 7)
    gone = np.array([absent_nodes(n, 7, t, p, dur) for t in range(300)])
    assert abs(gone.mean() - p) < 0.06
    # absences come in windows: a node changes state at most once per `dur` steps
    assert (np.abs(np.diff(gone.astype(int), axis=0)).sum(0) <= 300 // dur + 1).all()
    assert gone.any(1).mean() > 0.5 and not gone.all()
    # windows are staggered: node i switches only at steps of one residue mod `dur`, not all alike
    t_change, node = np.nonzero(np.diff(gone.astype(int), axis=0))
    residues = [{int(r) for r in (t_change[node == i] + 1) % dur} for i in range(n)]
    assert all(len(r) <= 1 for r in residues) and len(set().union(*residues)) >= 2
    for t in range(40):
        w = topo.W(t)
        for i in np.flatnonzero(gone[t]):
            np.testing.assert_array_equal(w[i], np.eye(n)[i])
            np.testing.assert_array_equal(w[:, i], np.eye(n)[i])
        for i in np.flatnonzero(~gone[t]):  # the others keep every base link to present nodes
            assert topo.in_neighbors(i, t) == [j for j in topo.base.in_neighbors(i) if not gone[t][j]]
    assert T.build({"name": "churn", "p": 1.0}, 6).W(3).tolist() == np.eye(6).tolist()


def test_alternating_cycles_its_graphs():
    topo = T.build({"name": "alternating", "graphs": ["ring", "one_peer_exponential"], "every": 2}, 8)
    ring, one = T.build("ring", 8), T.build("one_peer_exponential", 8)
    assert topo.period == 2 * 2 * 3
    # steps 0,1 ring; 2,3 one-peer (its steps 0,1); 4,5 ring; 6,7 one-peer (its steps 2,3) ...
    for t, (kid, local) in enumerate([(ring, 0), (ring, 1), (one, 0), (one, 1), (ring, 2), (ring, 3), (one, 2), (one, 3)]):
        np.testing.assert_array_equal(topo.W(t), kid.W(local))


def test_hand_made_matrix_topology_still_works():
    w = np.array([[0.5, 0.5, 0], [0.5, 0.25, 0.25], [0, 0.25, 0.75]])
    topo = T.Topology("custom", 3, lambda step: w)
    assert topo.in_neighbors(1) == [0, 2] and topo.out_neighbors(0) == [1]
    assert topo.claims() == {"row_stochastic", "column_stochastic", "symmetric", "nonnegative"}


# ---- errors: one line, naming the field, with a fix ---------------------------------------------

ERRORS = [
    ({"name": "regular", "d": 3}, 5, "topology.d", "n=5"),
    ({"name": "regular", "d": 8}, 8, "topology.d", "d < n"),
    ({"name": "regular", "d": 2.5}, 8, "topology.d", "integer"),
    ({"name": "regular", "d": 1}, 6, "topology.d", "connected"),
    ("hypercube", 12, "topology.n", "power of two"),
    ("torus", 7, "topology.n", "rows*cols"),
    ("torus", 8, "topology.n", "n=8"),
    ({"name": "torus", "rows": 5}, 12, "topology.rows", "divisible"),
    ({"name": "erdos_renyi", "p": 1.5}, 8, "topology.p", "[0, 1]"),
    ({"name": "erdos_renyi", "p": -0.1}, 8, "topology.p", "[0, 1]"),
    ({"name": "erdos_renyi", "p": 0.0}, 16, "topology.p", "disconnected"),
    ({"name": "small_world", "k": 3}, 10, "topology.k", "even"),
    ({"name": "edge_failures", "p": 2}, 8, "topology.p", "[0, 1]"),
    ({"name": "matcha", "budget": -0.5}, 8, "topology.budget", "[0, 1]"),
    ({"name": "matcha", "base": "exponential"}, 8, "topology.base", "undirected"),
    ({"name": "churn", "duration": 0}, 8, "topology.duration", ">= 1"),
    ({"name": "churn", "base": "hypercube"}, 12, "topology.base.n", "power of two"),
    ("nonexistent", 8, "topology.name", "ring"),
    ({"name": "ring", "foo": 1}, 8, "topology.foo", "allowed"),
    ({"name": "ring", "weights": "bogus"}, 8, "topology.weights", "metropolis"),
    ({"name": "exponential", "weights": "metropolis"}, 8, "topology.weights", "directed"),
    ({"name": "alternating", "graphs": []}, 8, "topology.graphs", "non-empty"),
    ({"name": "alternating", "graphs": ["ring", {"name": "regular", "d": 3}]}, 5, "topology.graphs[1].d", "n=5"),
    ({"name": "star", "center": 9}, 8, "topology.center", "<= 7"),
    ("ring", 2, "topology.n", "complete"),
    ("complete", 0, "topology.n", ">= 1"),
    (42, 8, "topology.name", "dict"),
]


@pytest.mark.parametrize("spec,n,fld,detail", ERRORS, ids=[f"{e[2]}-{i}" for i, e in enumerate(ERRORS)])
def test_impossible_specs_fail_in_one_line(spec, n, fld, detail):
    with pytest.raises(T.TopologyError) as info:
        T.build(spec, n, 0)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in msg
    assert msg.startswith(fld + ": "), msg
    assert detail in msg, msg
    problem, sep, fix = msg.partition("; ")
    assert sep and len(fix) > 5, msg  # a fix follows the problem
