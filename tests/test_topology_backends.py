"""Issue [2] on the backends: D-PSGD runs on every graph, static and dynamic, with the same
results on SimPy and stacked, and bytes per step that follow the degree at that step."""
import numpy as np
import pytest

import topologies
from harness.experiment import simulate
from tests.helpers import small

N, STEPS = 8, 6
SPECS = {name: {"name": name} for name in topologies.NAMES}
SPECS["churn"] = {"name": "churn", "p": 0.3, "duration": 2}
SPECS["edge_failures"] = {"name": "edge_failures", "p": 0.3}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_dpsgd_on_every_graph(name):
    spec = SPECS[name]
    N = 9 if name == "torus" else globals()["N"]
    out = {b: simulate(small("dpsgd", backend=b, n_workers=N, steps=STEPS, topology=spec, task={"dtype": "float32"}))
           for b in ("simpy", "stacked")}
    (da, xa), (db, xb) = out["simpy"], out["stacked"]
    assert (xa - xb).abs().max().item() < 1e-5  # float32
    cols = ["worker", "step", "time_s", "bytes_sent", "bytes_recv", "messages"]
    key = ["worker", "step"]
    a = da[da.worker >= 0][cols].sort_values(key).reset_index(drop=True)
    b = db[db.worker >= 0][cols].sort_values(key).reset_index(drop=True)
    assert a.equals(b)
    topo = topologies.build(spec, N, seed=3)  # tests.helpers.small uses seed 3
    payload = 4 * xa.shape[1]
    sent = a.pivot(index="step", columns="worker", values="bytes_sent").diff().iloc[1:]
    recv = a.pivot(index="step", columns="worker", values="bytes_recv").diff().iloc[1:]
    for step in range(1, STEPS + 1):  # the row for step s holds the gossip of W(s - 1)
        W = topo.W(step - 1)
        edges = (W > 0) & ~np.eye(N, dtype=bool)
        assert np.array_equal(sent.loc[step].to_numpy(), edges.sum(0) * payload), step
        assert np.array_equal(recv.loc[step].to_numpy(), edges.sum(1) * payload), step
