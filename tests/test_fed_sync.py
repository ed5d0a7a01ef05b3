"""Issue [22]: the synchronous federated methods beyond FedAvg/FedProx, on the federated parts.

* SCAFFOLD (options I and II) and FedAdam / FedYogi / FedAdagrad against the papers' equations
  recomputed here in numpy on the deterministic ``quadratic`` task (two rounds, so the control
  variates and the server moments carried from round one are used in round two);
* an unsampled client's ``c_i`` row does not change (SimPy's and stacked's stores);
* SimPy = stacked bit for bit in float32 on digits with n_clients > n_workers (ragged, unequal
  shards: clients take different numbers of local steps); the real driver (loopback) within
  1e-10 of SimPy in float64;
* the table's bytes per round: SCAFFOLD 2 model sizes each way per sampled client, FedOpt 1.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from harness.algorithms.blocks import sample_clients
from harness.config import expand
from harness.experiment import build, simulate

N, M, D, K, LR = 5, 2, 4, 3, 0.1  # clients, slots, dim, local steps, client lr
FEDOPT = ("fedadam", "fedyogi", "fedadagrad")
ALL = (("scaffold", {"option": "II"}), ("scaffold", {"option": "I"}), *((k, {}) for k in FEDOPT))


def _quad(alg, steps=2, backend="simpy", **hp):
    return expand({"n_workers": M, "n_clients": N, "steps": steps, "eval_every": steps, "seed": 6, "backend": backend,
                   "task": {"name": "quadratic", "dim": D, "a_min": 0.5, "a_max": 2.0, "layers": 1},
                   "algorithm": {"name": alg, "local_epochs": 0, "local_steps": K, "lr": LR, **hp}})[0]


def _problem(cfg):
    """The problem's data (curvatures a, centres z per client, x0) and the rounds' cohorts."""
    backend, x0 = build(cfg)
    t = backend.run.task
    cohorts = [sample_clients(cfg.seed, r, N, M) for r in range(cfg.steps)]
    return t.a.numpy(), t.c.numpy(), x0.numpy(), cohorts


def _local(x, a, z, shift):
    """K steps of SGD on 1/2 sum a (y - z)^2 with the gradient shifted by ``shift``."""
    y = x.copy()
    for _ in range(K):
        y = y - LR * (a * (y - z) + shift)
    return y


def _scaffold_numpy(cfg, option, eta_g=1.0):
    a, z, x, cohorts = _problem(cfg)
    c, ci = np.zeros(D), np.zeros((N, D))
    for S in cohorts:
        dy, dc = [], []
        for i in S:
            y = _local(x, a[i], z[i], c - ci[i])
            new = a[i] * (x - z[i]) if option == "I" else ci[i] - c + (x - y) / (K * LR)
            dy.append(y - x), dc.append(new - ci[i])
            ci[i] = new
        x = x + eta_g * np.mean(dy, 0)
        c = c + (M / N) * np.mean(dc, 0)
    return x, ci, cohorts


@pytest.mark.parametrize("option", ["I", "II"])
def test_scaffold_two_rounds_by_hand(option):
    cfg = _quad("scaffold", option=option, server_lr=0.7)
    want, ci, cohorts = _scaffold_numpy(cfg, option, eta_g=0.7)
    assert set(cohorts[0]) != set(cohorts[1]) and set(cohorts[0]) & set(cohorts[1])  # c_i reused and fresh
    backend, x0 = build(cfg)
    got = backend.execute(x0)
    assert np.abs(got.numpy() - want).max() < 1e-12
    seen = set(cohorts[0]) | set(cohorts[1])
    for k in range(N):  # the keyed rows: c_i of every sampled client, none for the others
        row = backend.store.rows.get(("scaffold.c_i", k))
        assert (row is None) == (k not in seen), k
        if row is not None:
            assert np.abs(row.numpy() - ci[k]).max() < 1e-12


def _fedopt_numpy(cfg, kind, eta=0.01, b1=0.9, b2=0.99, tau=1e-3):
    a, z, x, cohorts = _problem(cfg)
    m, v = np.zeros(D), np.full(D, tau * tau)
    for S in cohorts:
        delta = np.mean([_local(x, a[i], z[i], 0.0) - x for i in S], 0)
        m = b1 * m + (1 - b1) * delta
        if kind == "fedadam":
            v = b2 * v + (1 - b2) * delta ** 2
        elif kind == "fedyogi":
            v = v - (1 - b2) * delta ** 2 * np.sign(v - delta ** 2)
        else:
            v = v + delta ** 2
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("kind,weighted", [(k, False) for k in FEDOPT] + [("fedadam", True)])
def test_fedopt_two_rounds_by_hand(kind, weighted):
    # weighted: the quadratic's shards are one row each, so the sample-weighted mean is the mean
    hp = {"server_lr": 0.05, "server_beta1": 0.8, "tau": 0.01, "weighted": weighted}
    if kind != "fedadagrad":
        hp["server_beta2"] = 0.9
    cfg = _quad(kind, **hp)
    want = _fedopt_numpy(cfg, kind, eta=0.05, b1=0.8, b2=hp.get("server_beta2", 0.0), tau=0.01)
    _, got = simulate(cfg)
    assert torch.equal(got[0], got[1])  # every slot holds the server's model
    assert np.abs(got[0].numpy() - want).max() < 1e-12
    if kind == "fedyogi":  # round 2 sees both signs of v - Delta^2 or the test would not tell Yogi from Adam-like
        assert np.abs(want - _fedopt_numpy(cfg, "fedadam", eta=0.05, b1=0.8, b2=0.9, tau=0.01)).max() > 1e-6


def test_an_unsampled_clients_control_variate_does_not_change():
    for b in ("simpy", "stacked"):
        rows = []
        for steps in (2, 3):
            backend, x0 = build(_quad("scaffold", steps=steps, backend=b))
            backend.execute(x0)
            if b == "simpy":
                rows.append({k: backend.store.rows[("scaffold.c_i", k)] for k in range(N)
                             if ("scaffold.c_i", k) in backend.store.rows})
            else:
                leaves, saved = backend.store.tables["scaffold.c_i"]
                rows.append({k: leaves[0][k].clone() for k in range(N) if saved[k]})
        S = set(sample_clients(6, 2, N, M))  # the third round's cohort
        before, after = rows
        kept = [k for k in before if k not in S]
        assert kept and all(torch.equal(before[k], after[k]) for k in kept), b
        assert all(k not in before or not torch.equal(before[k], after[k]) for k in S), b  # the sampled moved
        assert set(after) == set(before) | S, b


def _digits(alg, backend, dtype="float32", n_clients=7, steps=3, **hp):
    return expand({"n_workers": 3, "n_clients": n_clients, "steps": steps, "eval_every": steps, "seed": 2,
                   "backend": backend, "network": {"latency_s": 0.001, "bandwidth_Bps": 1e7},
                   "compute": {"model": "lognormal", "sigma": 0.5},
                   "task": {"name": "digits", "dtype": dtype, "hidden": [8], "batch_size": 16,
                            "partition": "dirichlet", "alpha": 1.0},
                   "algorithm": {"name": alg, "local_epochs": 1, "local_steps": 0, **hp}})[0]


def _rows(df):
    cols = ["worker", "step", "event", "client", "train_loss", "time_s", "bytes_sent", "bytes_recv", "messages",
            "test_acc"]
    return df[[c for c in cols if c in df]].sort_values(["worker", "step", "event"]).reset_index(drop=True)


@pytest.mark.parametrize("alg,hp", ALL, ids=[f"{a}{h.get('option', '')}" for a, h in ALL])
def test_simpy_equals_stacked_bit_for_bit_and_bytes_per_round(alg, hp):
    (ds, xs), (dk, xk) = (simulate(_digits(alg, b, **hp)) for b in ("simpy", "stacked"))
    assert torch.equal(xs, xk)
    pd.testing.assert_frame_equal(_rows(ds), _rows(dk), check_exact=True)
    sizes = [len(s) for s in build(_digits(alg, "simpy"))[0].run.task.shards]
    assert len({-(-n // 16) for n in sizes}) > 1  # clients take different numbers of local steps
    model = xs.shape[1] * 4  # float32 bytes of one model
    per = 2 * model if alg == "scaffold" else model  # SCAFFOLD: (Delta y, Delta c) up, (x, c) down
    w = ds[(ds.worker >= 0) & (ds.event == "step")].sort_values(["worker", "step"])
    for col in ("bytes_sent", "bytes_recv"):
        assert (w[col].to_numpy() == per * w.step.to_numpy()).all(), col
    assert (w.messages.to_numpy() == w.step.to_numpy()).all()


@pytest.mark.parametrize("alg,hp", ALL, ids=[f"{a}{h.get('option', '')}" for a, h in ALL])
def test_real_driver_equals_simpy_in_float64(alg, hp):
    from harness.backends import loopback_run

    # SCAFFOLD's keyed rows stay on the rank hosting the client (key % n_workers), so clients = slots there
    cfg = _digits(alg, "simpy", dtype="float64", n_clients=3 if alg == "scaffold" else 7, steps=2, **hp)
    got = loopback_run.run(cfg)
    _, sim = simulate(cfg)
    assert (got.workers - sim).abs().max().item() < 1e-10


@pytest.mark.parametrize("alg,bad,word", [
    ("scaffold", {"option": "III"}, "algorithm.option"),
    ("fedyogi", {"server_beta2": 1.0}, "algorithm.server_beta2"),
    ("fedadagrad", {"server_beta2": 0.9}, "server_beta2"),
    ("fedadam", {"tau": 0.0}, "algorithm.tau"),
    ("scaffold", {"local_steps": 2}, "algorithm.local_epochs"),
])
def test_bad_hyperparameters_are_one_line(alg, bad, word):
    with pytest.raises(ValueError) as e:
        expand({"n_workers": 2, "n_clients": 4, "task": {"name": "quadratic"}, "algorithm": {"name": alg, **bad}})
    msg = str(e.value)
    assert word in msg and "\n" not in msg.strip(), msg


def test_real_driver_moves_client_rows_between_ranks():
    """More clients than ranks: a client's control variate lives on the rank that saved it last and
    moves to the rank that plays it next (priced as a message); the run equals SimPy's."""
    from harness.backends import loopback_run
    from harness.experiment import simulate

    cfg = _digits("scaffold", "simpy", dtype="float64", n_clients=7, steps=4)
    got = loopback_run.run(cfg)
    _, sim = simulate(cfg)
    assert (got.workers - sim).abs().max().item() < 1e-10
