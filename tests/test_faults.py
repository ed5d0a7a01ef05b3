"""Issue [3] faults: crashes reach the algorithm, the run goes on or waits, the table shows it."""
import numpy as np
import pandas as pd
import pytest

from harness.config import ConfigError
from harness.experiment import simulate
import tests.test_ops  # noqa: F401  registers _test_leader_pull (plain AllReduce, no retrying)
from tests.helpers import small

CONST = {"model": "constant", "mean_s": 1.0, "straggler_fraction": 0.0}


def test_local_sgd_continues_without_a_crashed_worker():
    cfg = small("local_sgd", n_workers=4, steps=24, compute=CONST,
                faults={"crashes": [{"worker": 2, "at_s": 5.5}], "policy": "continue"})
    df, x = simulate(cfg)
    assert x.shape[0] == 3  # the survivors' final models
    assert (x - x[0]).abs().max() < 1e-12  # they ended right after averaging among themselves
    failed = df[df.event == "failed"]
    assert failed.worker.tolist() == [2] and failed.time_s.item() == pytest.approx(5.5)
    w2 = df[(df.worker == 2) & (df.event == "step")]
    assert w2.step.max() == 5  # crashed during its 6th step
    ev = df[df.worker == -1]
    assert ev.step.tolist() == [0, 8, 16, 24]  # consensus rows continue with the survivors
    assert df[(df.worker == 0)].step.max() == 24


def test_unhandled_crash_fails_with_a_clear_message():
    cfg = small("sync_sgd", algorithm={"name": "_test_leader_pull"}, n_workers=4, steps=10, compute=CONST,
                faults={"crashes": [{"worker": 1, "at_s": 2.5}], "policy": "continue"})
    with pytest.raises(Exception, match="worker 1 crashed at t=2.500"):
        simulate(cfg)


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_wait_policy_pauses_the_worker_and_everyone_waits(backend):
    base = dict(n_workers=4, steps=8, compute=CONST, backend=backend, network={"latency_s": 0.0, "bandwidth_Bps": 1e30})
    df0, x0 = simulate(small("local_sgd", **base))
    df, x = simulate(small("local_sgd", **base, faults={"crashes": [{"worker": 1, "at_s": 2.5}], "recover_after_s": 3.0}))
    assert (x - x0).abs().max() < 1e-12  # a paused worker keeps its state: same maths
    end = lambda d: d[(d.worker >= 0) & (d.step == 8)].time_s  # noqa: E731
    assert np.allclose(end(df), end(df0) + 3.0)  # the all-reduce waited for the worker's recovery
    ev = df[df.event.isin(["failed", "recovered"])].sort_values("time_s")
    assert ev.event.tolist() == ["failed", "recovered"] and ev.time_s.tolist() == [2.5, 5.5]
    assert (ev.worker == 1).all()


def test_wait_policy_same_on_both_backends_with_random_crashes():
    faults = {"crash_rate_per_s": 1.0, "recover_after_s": 0.2}  # runs last ~1 s
    out = {b: simulate(small("dpsgd", backend=b, n_workers=6, steps=20, faults=faults)) for b in ("simpy", "stacked")}
    (da, xa), (db, xb) = out["simpy"], out["stacked"]
    assert (xa - xb).abs().max() < 1e-10
    cols = ["worker", "event", "step", "time_s", "compute_s", "idle_s"]
    a = da[da.worker >= 0][cols].sort_values(["worker", "time_s", "event"]).reset_index(drop=True)
    b = db[db.worker >= 0][cols].sort_values(["worker", "time_s", "event"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert (a.event == "failed").sum() >= 1


def test_fault_config_errors():
    with pytest.raises(ConfigError, match="faults.recover_after_s"):
        small("local_sgd", faults={"crashes": [{"worker": 0, "at_s": 1.0}]})
    with pytest.raises(ConfigError, match="faults.crashes"):
        small("local_sgd", faults={"crashes": [{"worker": 9, "at_s": 1.0}], "policy": "continue"})
    with pytest.raises(ConfigError, match="faults.policy"):
        small("local_sgd", backend="stacked", faults={"crashes": [{"worker": 0, "at_s": 1.0}], "policy": "continue"})
