"""The new algorithms on the real simulators: SimPy and stacked agree on parameters and
counters (float64 digits with stragglers), DPPF's valley width settles at lam/alpha on
the quadratic, and DiLoCo with a trivial outer step is Local SGD."""
import pandas as pd
import pytest

from harness.config import expand
from harness.experiment import simulate
from tests.helpers import small

COUNTERS = ["time_s", "compute_s", "comm_s", "idle_s", "bytes_sent", "bytes_recv", "messages", "worker", "step", "round"]
SGD = {"lr": 0.1, "momentum": 0.9}
CASES = {
    "easgd": {"tau": 4, "beta": 0.5, **SGD},
    "lsgd": {"tau": 4, "pull": 0.3, **SGD},
    "mgrawa": {"tau": 4, "p2": 0.1, **SGD},
    "lgrawa": {"tau": 4, "p2": 0.1, **SGD},
    "dppf": {"tau": 4, "alpha": 0.5, "lam": 0.05, **SGD},
    "diloco": {"period": 4, "lr": {"name": "cosine", "lr": 0.01, "warmup": 4}},
    "palsgd": {"period": 6, "p": 0.3, "eta": 0.15, "sync_warmup": 4, **SGD},
    "post_local_sgd": {"switch": 8, "period": 4, "lr": {"name": "step", "lr": 0.1, "milestones": [12]}},
    "qsr": {"h_base": 2, "alpha": 0.08},
}


@pytest.mark.parametrize("alg", sorted(CASES))
def test_simpy_equals_stacked(alg):
    out = {b: simulate(small("sync_sgd", algorithm={"name": alg, **CASES[alg]}, backend=b)) for b in ("simpy", "stacked")}
    (da, xa), (db, xb) = out["simpy"], out["stacked"]
    assert (xa - xb).abs().max().item() < 1e-10
    a, b = (d.sort_values(["worker", "step"]).reset_index(drop=True) for d in (da, db))
    pd.testing.assert_frame_equal(a[COUNTERS], b[COUNTERS])
    pd.testing.assert_series_equal(a.test_acc, b.test_acc, atol=1e-10, rtol=0)
    assert set(a.columns) == set(b.columns)  # the same metric columns
    assert da[da.worker >= 0]["round"].max() >= 2  # communication really happened


@pytest.mark.parametrize("alpha,lam", [(0.5, 0.1), (0.8, 0.4)])
def test_dppf_valley_width_settles_at_lam_over_alpha(alpha, lam):
    cfg = expand({"n_workers": 4, "steps": 400, "eval_every": 40, "backend": "stacked",
                  "task": {"name": "quadratic", "dim": 10, "spread": 0.05},
                  "algorithm": {"name": "dppf", "tau": 4, "alpha": alpha, "lam": lam, "lr": 0.01, "momentum": 0.0}})[0]
    df, _ = simulate(cfg)
    width = df[df.worker == -1].sort_values("step").valley_width.to_numpy()
    assert width[0] == 0  # every worker starts from the same model: the push opens the valley
    assert abs(width[-3:] / (lam / alpha) - 1).max() < 0.1


def test_diloco_trivial_outer_step_is_local_sgd():
    inner = {"inner": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    dil = small("sync_sgd", backend="stacked", algorithm={"name": "diloco", "period": 1, "outer_lr": 1.0,
                                                          "outer_momentum": 0.0, **inner})
    loc = small("sync_sgd", backend="stacked", algorithm={"name": "local_sgd", "period": 1, "lr": 0.1, "momentum": 0.9})
    (dd, xd), (dl, xl) = simulate(dil), simulate(loc)
    assert (xd - xl).abs().max().item() < 1e-12
    assert (dd.bytes_sent.to_numpy() == dl.bytes_sent.to_numpy()).all()
    moved = simulate(small("sync_sgd", backend="stacked", algorithm={"name": "diloco", "period": 1, **inner}))[1]
    assert (moved - xl).abs().max().item() > 1e-3  # the default outer Nesterov step is not averaging


@pytest.mark.parametrize("alg", ["easgd", "dppf", "diloco", "palsgd", "post_local_sgd", "qsr"])
def test_one_collective_methods_continue_after_a_crash(alg):
    const = {"model": "constant", "mean_s": 1.0, "straggler_fraction": 0.0}
    cfg = small("sync_sgd", algorithm={"name": alg, **CASES[alg]}, compute=const,
                faults={"crashes": [{"worker": 2, "at_s": 5.5}], "policy": "continue"})
    df, x = simulate(cfg)
    assert x.shape[0] == 3 and df[df.event == "failed"].worker.tolist() == [2]
    assert df[df.worker == 0].step.max() == 24 and df[df.worker == 2].step.max() == 5
