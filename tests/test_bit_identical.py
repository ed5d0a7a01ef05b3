"""SimPy and stacked give identical tables and parameters in float32 (not merely close),
for every lock-step algorithm and for gossip on every topology: both reduce and mix in one
canonical order (worker index ascending) through the op's own ``combine``/``mix``."""
import pandas as pd
import pytest
import torch

import topologies
from harness import algorithms
from harness.experiment import simulate
from tests.helpers import small



def _lockstep():
    algorithms.get("sync_sgd")  # loads the built-in algorithms
    return sorted(n for n, fn in algorithms.ALGORITHMS.items() if not n.startswith("_") and not fn.has_server)


def _f32(alg, **over):
    algo = {"name": alg, **({"period": 4} if alg in ("diloco", "palsgd") else {})}
    if alg == "post_local_sgd":
        algo["switch"] = 4
    topo = over.pop("topology", {"name": "ring"} if "gossip" in algorithms.requirements(alg, algo) else None)
    out = {}
    for b in ("simpy", "stacked"):
        cfg = small("sync_sgd", backend=b, steps=12, algorithm=algo, topology=topo,
                    task={"name": "digits", "dtype": "float32", "hidden": [16], "batch_size": 16}, **over)
        out[b] = simulate(cfg)
    return out


def _identical(out):
    (da, xa), (db, xb) = out["simpy"], out["stacked"]
    assert xa.dtype == torch.float32 and torch.equal(xa, xb)
    key = ["worker", "step", "event"]
    a = da.sort_values(key).reset_index(drop=True).drop(columns=["backend", "run_id"])
    b = db.sort_values(key).reset_index(drop=True).drop(columns=["backend", "run_id"])
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize("alg", _lockstep())
def test_every_lockstep_algorithm_bit_identical(alg):
    _identical(_f32(alg))


@pytest.mark.parametrize("topo", topologies.NAMES)
def test_gossip_on_every_topology_bit_identical(topo):
    n = 9 if topo in ("torus", "grid", "lattice") else 8
    _identical(_f32("dpsgd", topology={"name": topo}, n_workers=n))
