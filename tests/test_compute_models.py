"""Compute-time models: each has the mean and shape it claims, seeded per worker."""
import numpy as np
import pytest

from harness.config import ConfigError
from harness.experiment import simulate
from harness.models.compute import ComputeError, ComputeSpec, ComputeTimes
from tests.helpers import small


def draws(spec, n=1, k=20000, worker=0):
    ct = ComputeTimes(ComputeSpec(**spec), n, seed=0)
    return np.array([ct.sample(worker) for _ in range(k)])


@pytest.mark.parametrize("spec", [
    {"model": "constant", "mean_s": 0.5},
    {"model": "lognormal", "mean_s": 0.5, "sigma": 0.8},
    {"model": "exponential", "mean_s": 0.5},
    {"model": "shifted_exp", "mean_s": 0.5, "shift_s": 0.3},
    {"model": "pareto", "mean_s": 0.5, "alpha": 3.5},
])
def test_means(spec):
    x = draws(spec)
    assert x.mean() == pytest.approx(0.5, rel=0.03)
    if spec["model"] == "shifted_exp":
        assert x.min() >= 0.3
    if spec["model"] == "exponential":
        assert x.std() == pytest.approx(0.5, rel=0.05)


def test_pareto_has_a_heavier_tail_than_lognormal():
    p = draws({"model": "pareto", "mean_s": 1.0, "alpha": 2.2})
    ln = draws({"model": "lognormal", "mean_s": 1.0, "sigma": 0.5})
    assert np.quantile(p, 0.9999) > 2 * np.quantile(ln, 0.9999)


def test_persistent_stragglers_and_markov_slowdowns():
    ct = ComputeTimes(ComputeSpec(model="constant", mean_s=1.0, straggler_fraction=0.25, straggler_factor=3), 8, seed=1)
    t = np.array([ct.sample(i) for i in range(8)])
    assert sorted(t) == [1.0] * 6 + [3.0] * 2 and list(np.flatnonzero(t == 3.0)) == list(ct.slow)
    x = draws({"model": "constant", "mean_s": 1.0, "markov": {"p_slow": 0.1, "p_recover": 0.4, "factor": 5}})
    assert set(np.unique(x)) == {1.0, 5.0}
    assert (x == 5.0).mean() == pytest.approx(0.1 / (0.1 + 0.4), abs=0.02)  # stationary share of slow draws


def test_workers_draw_from_their_own_streams():
    a = ComputeTimes(ComputeSpec(model="lognormal"), 3, seed=5)
    b = ComputeTimes(ComputeSpec(model="lognormal"), 3, seed=5)
    first = [a.sample(0), a.sample(0), a.sample(2)]
    assert [b.sample(2), b.sample(0), b.sample(0)] == [first[2], first[0], first[1]]


def test_trace_replays_and_cycles(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("worker,step,seconds\n0,0,0.1\n0,1,0.2\n1,0,0.7\n")
    ct = ComputeTimes(ComputeSpec(model="trace", trace=str(f)), 2, seed=0)
    assert [ct.sample(0) for _ in range(3)] == [0.1, 0.2, 0.1] and ct.sample(1) == 0.7
    with pytest.raises(ComputeError, match="worker 2"):
        ComputeTimes(ComputeSpec(model="trace", trace=str(f)), 3, seed=0)
    with pytest.raises(ComputeError, match="no such file"):
        ComputeTimes(ComputeSpec(model="trace", trace=str(tmp_path / "nope.csv")), 2, seed=0)


def test_calibrated_measures_this_machine():
    cfg = small("sync_sgd", steps=3, compute={"model": "calibrated", "sigma": 0.0, "straggler_fraction": 0.0})
    df, _ = simulate(cfg)
    per_step = df[(df.worker == 0) & (df.step == 1)].compute_s.item()
    assert 1e-6 < per_step < 0.5  # a real gradient of a tiny MLP: microseconds to milliseconds


def test_compute_config_errors():
    with pytest.raises(ConfigError, match="compute"):
        small("sync_sgd", compute={"model": "shifted_exp", "mean_s": 1.0, "shift_s": 2.0})
    with pytest.raises(ConfigError, match="compute.trace"):
        small("sync_sgd", compute={"model": "trace"})
    with pytest.raises(ConfigError, match="compute.alpha"):
        small("sync_sgd", compute={"model": "pareto", "alpha": 1.0})
