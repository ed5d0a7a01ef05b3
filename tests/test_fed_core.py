"""Issue [22], the core's acceptance criteria on FedAvg (clients are not workers):

(a) the table's bytes per round are 2 x (clients per round) x model size;
(b) every client sampled, equal shards and one local step: FedAvg is synchronous SGD (float64, 1e-12);
(c) stacked = SimPy bit for bit in float32 (digits, 100 clients on 20 slots, ragged last batches),
    and the real driver (loopback) = SimPy in float64 to 1e-10;
(d) a slot playing a slow client takes that client's time, not the slot's;
(e) one round by hand on the quadratic task;
(f) one-line errors for n_clients < n_workers and task.parts != n_clients;
and every preset loads, the FedAvg preset is the peers' workload and reaches their accuracy.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.algorithms.blocks import sample_clients
from harness.config import ConfigError, expand, load
from harness.experiment import build, simulate

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "presets").glob("*.yaml"))


def _quad(n_clients, n_workers, steps, backend="simpy", alg=None, **over):
    raw = {"n_workers": n_workers, "n_clients": n_clients, "steps": steps, "eval_every": steps, "seed": 4,
           "backend": backend, "task": {"name": "quadratic", "dim": 6, "a_min": 0.5, "a_max": 2.0, "layers": 1},
           "algorithm": alg or {"name": "fedavg", "local_epochs": 2, "local_steps": 0, "lr": 0.1}, **over}
    return expand(raw)[0]


def _digits(backend, dtype="float32", steps=3, **over):
    """The preset's workload, a few rounds: 100 clients of 14-15 samples, 20 per round, batch 8."""
    raw = {"n_workers": 20, "n_clients": 100, "steps": steps, "eval_every": steps, "seed": 1, "backend": backend,
           "compute": {"model": "lognormal", "sigma": 0.5}, "network": {"latency_s": 0.001, "bandwidth_Bps": 1e7},
           "task": {"name": "digits", "dtype": dtype, "hidden": [64], "batch_size": 8, "split": "stratified"},
           "algorithm": {"name": "fedavg", "local_epochs": 2, "local_steps": 0, "lr": 0.05}, **over}
    return expand(raw)[0]


def _slots(df):
    """The slots' rows (not the consensus rows), one per slot and step."""
    return df[(df.worker >= 0) & (df.event == "step")].sort_values(["worker", "step"])


# -- (a) traffic ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_fedavg_bytes_per_round_are_two_transfers_per_sampled_client(backend):
    cfg = _digits(backend)
    df, x = simulate(cfg)
    model = x.shape[1] * x.element_size()
    assert x.shape[1] == 4810  # 64-64-10: (64 * 64 + 64) + (64 * 10 + 10)
    per_step = _slots(df).groupby("step")[["bytes_sent", "bytes_recv"]].sum().sum(axis=1)  # cumulative counters
    rounds = per_step.diff().fillna(per_step).loc[1:]
    assert len(rounds) == cfg.steps and (rounds == 2 * cfg.n_workers * model).all(), rounds.tolist()


# -- (b) FedAvg with one local step is synchronous SGD -------------------------------------------
def test_fedavg_full_participation_one_local_step_equals_sync_sgd():
    fed = _quad(5, 5, 6, alg={"name": "fedavg", "local_epochs": 0, "local_steps": 1, "lr": 0.3})
    sync = expand({**fed.model_dump(include={"n_workers", "steps", "eval_every", "seed", "backend"}),
                   "task": {**fed.task, "parts": 5},
                   "algorithm": {"name": "sync_sgd", "lr": 0.3, "momentum": 0.0}})[0]
    (_, xf), (_, xs) = simulate(fed), simulate(sync)
    assert xf.dtype == torch.float64
    assert (xf - xs).abs().max().item() < 1e-12
    x0 = build(fed)[1]
    assert (xf - x0).abs().max().item() > 0.1  # the runs moved


# -- (c) one run, every interpreter ------------------------------------------------------------
def _table(df):
    cols = ["worker", "step", "event", "client", "train_loss", "test_acc", "time_s", "compute_s", "comm_s",
            "bytes_sent", "bytes_recv", "messages"]
    return df[cols].sort_values(["worker", "step", "event"]).reset_index(drop=True)


def test_fedavg_stacked_equals_simpy_bit_for_bit_in_float32():
    (ds, xs), (dk, xk) = simulate(_digits("simpy")), simulate(_digits("stacked"))
    shards = build(_digits("simpy"))[0].run.task.shards
    assert {len(s) % 8 for s in shards} - {0}  # ragged last batches
    assert {len(s) for s in shards} == {14, 15}  # 1,438 training samples on 100 clients
    assert torch.equal(xs, xk)
    pd.testing.assert_frame_equal(_table(ds), _table(dk), check_exact=True)


def test_fedavg_real_driver_equals_simpy_in_float64():
    from harness.backends import loopback_run

    cfg = _digits("simpy", dtype="float64", steps=2)
    got = loopback_run.run(cfg)
    _, sim = simulate(cfg)
    assert (got.workers - sim).abs().max().item() < 1e-10


# -- (d) a slot takes its client's speed ---------------------------------------------------------
@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_a_slot_playing_a_slow_client_takes_the_clients_time(backend):
    n, m, slow, mean = 6, 2, 3, 0.01
    factors = [10.0 if c == slow else 1.0 for c in range(n)]
    cfg = _quad(n, m, 8, backend, compute={"model": "constant", "mean_s": mean, "worker_factors": factors})
    w = _slots(simulate(cfg)[0]).copy()
    w["round_compute"] = w.groupby("worker").compute_s.diff().fillna(w.compute_s)
    w = w[w.step > 0]
    played = w[w.client == slow]
    assert len(played) and set(played.worker) == {0, 1}  # both slots played it at some point
    # 2 local epochs of one minibatch each (the quadratic's shard is one row)
    assert np.allclose(played.round_compute, 2 * 10 * mean, rtol=1e-9)
    assert np.allclose(w[w.client != slow].round_compute, 2 * mean, rtol=1e-9)


# -- (e) one round by hand -----------------------------------------------------------------------
def test_one_fedavg_round_by_hand_on_the_quadratic():
    n, m, lr = 5, 3, 0.1
    cfg = _quad(n, m, 1)
    backend, x0 = build(cfg)
    t = backend.run.task
    a, c, x = t.a.numpy(), t.c.numpy(), x0.numpy()
    cohort = sample_clients(cfg.seed, 0, n, m)
    ys = []
    for k in cohort:
        y = x.copy()
        for _ in range(2):  # 2 local epochs of one minibatch (the client's one row)
            y = y - lr * a[k] * (y - c[k])
        ys.append(y)
    want = np.mean(ys, 0)  # equal shards: the sample-weighted average is the mean
    df, got = simulate(cfg)
    assert np.abs(got.numpy() - want).max() < 1e-12
    assert sorted(_slots(df).query("step == 1").client.astype(int)) == sorted(cohort)


# -- (f) bad inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("over,field", [({"n_clients": 3, "n_workers": 4}, "n_clients"),
                                        ({"n_clients": 10, "n_workers": 4, "parts": 7}, "task.parts")])
def test_client_config_errors_are_one_line(over, field):
    parts = over.pop("parts", None)
    raw = {"algorithm": {"name": "fedavg"}, "task": {"name": "quadratic", **({"parts": parts} if parts else {})},
           **over}
    with pytest.raises(ConfigError) as e:
        expand(raw)
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg.strip(), msg


# -- presets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_loads(path):
    assert load(path)


def _peers(cfgs):
    """The preset's runs of the peers' FedAvg (other cases may follow it)."""
    return [c for c in cfgs if c.algorithm["name"] == "fedavg" and c.algorithm["weighted"]
            and (c.algorithm["local_epochs"], c.algorithm["lr"], c.algorithm["sampling"]) == (2, 0.05, "uniform")]


def test_fedavg_preset_is_the_peers_workload():
    fed = _peers(load(ROOT / "presets" / "fedavg-digits.yaml"))
    assert sorted(c.seed for c in fed) == [0, 1, 2]
    c = fed[0]
    assert (c.n_clients, c.n_workers, c.steps, c.eval_every, c.backend) == (100, 20, 100, 10, "stacked")
    assert c.task["split"] == "stratified" and c.task["hidden"] == [64] and c.task["batch_size"] == 8
    assert c.task.get("partition", "iid") == "iid" and c.task.get("test_fraction", 0.2) == 0.2
    backend, x0 = build(c)
    assert x0.numel() == 4810 and {len(s) for s in backend.run.task.shards} == {14, 15}


def test_fedavg_preset_reaches_the_peers_accuracy_and_run_json_times(tmp_path):
    import json

    from harness.cli import main

    preset, out = ROOT / "presets" / "fedavg-digits.yaml", tmp_path / "runs"
    cfgs = load(preset)
    first = next(i for i, c in enumerate(cfgs, 1) if c in _peers(cfgs) and c.seed == 0)
    assert main(["run", str(preset), "--out", str(out), "--quiet", "--only", str(first)]) == 0
    (run,) = out.glob("*/")
    df = pd.read_parquet(run / "metrics.parquet")
    final = df[df.worker < 0].dropna(subset=["test_acc"]).sort_values("step").test_acc.iloc[-1]
    assert 0.90 <= final <= 0.935, final
    rec = json.loads((run / "run.json").read_text())
    assert rec["setup_s"] > 0 and rec["loop_s"] > 0 and rec["setup_s"] + rec["loop_s"] <= rec["wall_s"]


@pytest.mark.parametrize("batch", [5, 7])
def test_stacked_equals_simpy_for_batch_lengths_that_are_not_multiples_of_8(batch):
    """Full batches of 5 or 7 and ragged last batches of 1-3 samples: a batched matmul reduces in
    another order there, so the stacked backend computes such rows per worker (simulators.stacked)."""
    (_, xs), (_, xk) = (simulate(_digits(b, steps=2, n_clients=20, task={
        "name": "digits", "dtype": "float32", "hidden": [64], "batch_size": batch, "split": "stratified"}))
        for b in ("simpy", "stacked"))
    assert torch.equal(xs, xk)
