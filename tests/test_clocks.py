"""Tiny stories with exact virtual times (SimPy style): the time model is the formula."""
import numpy as np
import pytest

from harness.experiment import simulate
from tests.helpers import small

ALPHA, BETA = 0.001, 1e7


def _run(alg, backend, n=4, steps=3):
    cfg = small(alg, backend=backend, n_workers=n, steps=steps,
                compute={"model": "constant", "mean_s": 1.0, "sigma": 0.0, "straggler_fraction": 0.25, "straggler_factor": 3},
                task={"dtype": "float32"})
    df, x = simulate(cfg)
    return df[df.worker >= 0], x.shape[1], cfg


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_sync_sgd_step_is_slowest_plus_ring(backend):
    w, d, cfg = _run("sync_sgd", backend)
    n, b = 4, 4 * d
    ring = 2 * (n - 1) * ALPHA + 2 * (n - 1) / n * b / BETA
    for step in (1, 2, 3):
        t = w[w.step == step].time_s
        assert np.allclose(t, step * (3.0 + ring), rtol=0, atol=1e-12)
    # fast workers wait 2 s per step for the straggler; the straggler never waits
    last = w[w.step == 3].sort_values("worker")
    assert sorted(np.round(last.idle_s, 9)) == [0.0, 6.0, 6.0, 6.0]


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_gossip_waits_only_for_neighbours(backend):
    w, d, _ = _run("dpsgd", backend, n=6, steps=1)
    link = ALPHA + 4 * d / BETA
    first = w[w.step == 1].set_index("worker")
    slow = set(first.index[first.compute_s == 3.0])
    assert len(slow) == 2  # round(0.25 * 6) persistent stragglers
    for i in range(6):
        # T_i = max(own compute, max over ring neighbours of their compute + one link)
        nbr = max(first.compute_s[(i - 1) % 6], first.compute_s[(i + 1) % 6])
        expected = max(first.compute_s[i], nbr + link)
        assert first.time_s[i] == pytest.approx(expected, abs=1e-12), i
