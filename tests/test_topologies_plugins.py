"""User topologies: ``topologies.register`` from a config's ``imports:`` file, used in a run; and
one-line errors for builders that do not follow the two builder shapes."""
import numpy as np
import pytest

import topologies
from harness.config import ConfigError, load
from harness.experiment import simulate
from topologies import catalog

PLUGIN = '''
import networkx as nx
import topologies


@topologies.register("chords")
def chords(n, seed=0, k: int = 1):
    """Node i talks to i + k and i - k (k = n/2: a perfect matching)."""
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from((i, (i + k) % n) for i in range(n))
    return g


@topologies.register("blink")
def blink(n, seed=0, weights="auto", k: int = 1):
    """chords(k) on even steps, nobody talks on odd steps."""
    on, off = chords(n, seed, k), nx.empty_graph(n)
    return topologies.Topology("blink", n, lambda step: topologies.mixing(off if step % 2 else on, weights),
                               static=False, period=2, weights=weights)
'''
N, STEPS = 6, 6


@pytest.fixture
def clean_catalog():
    """Registrations here must not leak into other tests' view of ``topologies.NAMES``."""
    saved = dict(catalog.STATIC), dict(catalog.DYNAMIC), list(catalog.NAMES)
    yield
    for table, old in zip((catalog.STATIC, catalog.DYNAMIC), saved):
        table.clear()
        table.update(old)
    catalog.NAMES[:] = saved[2]


def _config(tmp_path, topology: str) -> object:
    (tmp_path / "my_topologies.py").write_text(PLUGIN)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"imports: [my_topologies.py]\nn_workers: {N}\nsteps: {STEPS}\neval_every: {STEPS}\n"
                   "backend: stacked\nalgorithm: {name: dpsgd, lr: 0.1}\n"
                   f"topology: {topology}\ntask: {{name: digits, hidden: [8], batch_size: 8}}\n")
    (run,) = load(cfg)
    return run


def _sent_per_step(df, x) -> np.ndarray:
    """[steps, workers] bytes each worker sent in steps 1..STEPS (rows from step 0 on), in models."""
    w = df[df.worker >= 0].pivot(index="step", columns="worker", values="bytes_sent").sort_index()
    return np.diff(w.to_numpy(), axis=0) / (x.element_size() * x.shape[1])


@pytest.mark.usefixtures("clean_catalog")
def test_static_topology_from_imports_runs(tmp_path):
    run = _config(tmp_path, "{name: chords, k: 3}")
    assert "chords" in topologies.NAMES and topologies.parameters("chords") == {"k": 1, "weights": "auto"}
    df, x = simulate(run)
    assert (df.topology == "chords").all()
    # k = 3 on 6 nodes is a perfect matching: one neighbour each (the default k = 1 would be 2)
    assert np.array_equal(_sent_per_step(df, x), np.ones((STEPS, N)))


@pytest.mark.usefixtures("clean_catalog")
def test_dynamic_topology_from_imports_runs(tmp_path):
    run = _config(tmp_path, "{name: blink, k: 1, weights: metropolis}")
    assert "blink" in topologies.catalog.DYNAMIC
    df, x = simulate(run)
    assert (df.topology == "blink").all()
    # the row of step s holds the gossip of W(s - 1): ring (2 neighbours) on even steps, nothing on odd
    expect = np.array([[2.0 if (s - 1) % 2 == 0 else 0.0] * N for s in range(1, STEPS + 1)])
    assert np.array_equal(_sent_per_step(df, x), expect)


@pytest.mark.usefixtures("clean_catalog")
def test_unknown_parameter_of_a_plugin_topology_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, "{name: chords, d: 3}")
    assert str(e.value).startswith("topology.d: unknown parameter for 'chords'") and "\n" not in str(e.value)


def _no_seed(n, k=1): ...
def _no_default(n, seed, k): ...
def _any_key(n, seed=0, **kw): ...


@pytest.mark.parametrize("fn, words", [
    (_no_seed, "make n and seed its first two parameters"),
    (_no_default, "parameter 'k' has no default"),
    (_any_key, "list each parameter by name"),
])
@pytest.mark.usefixtures("clean_catalog")
def test_bad_builder_shapes_are_refused_in_one_line(fn, words):
    with pytest.raises(topologies.TopologyError) as e:
        topologies.register("bad")(fn)
    msg = str(e.value)
    assert msg.startswith("topologies.register('bad'): ") and words in msg and "\n" not in msg
    assert "bad" not in topologies.NAMES


@pytest.mark.parametrize("returned, words", [
    ("nx.path_graph(n + 1)", "returned a graph on nodes"),
    ("None", "returned NoneType"),
])
@pytest.mark.usefixtures("clean_catalog")
def test_builder_returning_the_wrong_thing_is_one_line(returned, words):
    import networkx as nx

    topologies.register("wrong")(eval(f"lambda n, seed=0: {returned}", {"nx": nx}))
    with pytest.raises(topologies.TopologyError) as e:
        topologies.build("wrong", 4)
    assert str(e.value).startswith("topology.name: builder of 'wrong' ") and words in str(e.value)


@pytest.mark.usefixtures("clean_catalog")
def test_reregistering_moves_a_name_between_static_and_dynamic():
    topologies.register("twice")(lambda n, seed=0: topologies.build("ring", n).graph(0))
    assert "twice" in catalog.STATIC
    topologies.register("twice")(lambda n, seed=0, weights="auto": topologies.build("star", n))
    assert "twice" in catalog.DYNAMIC and "twice" not in catalog.STATIC
    assert topologies.NAMES.count("twice") == 1 and topologies.build("twice", 4).W(0)[1, 2] == 0
