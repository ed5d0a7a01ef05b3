"""Op language v2: every new expressiveness on SimPy, stacked (where lock-step) and the
loopback transport (the real rank driver in one process), with hand-computed values.

Test-only algorithms below exercise one feature each; every backend must give the same
parameters (float64, 1e-10; SimPy and stacked: bit-identical tables) and the bytes the
cost model's formula says.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness import ops
from harness.algorithms import register
from harness.algorithms.blocks import sample_members
from harness.backends import loopback
from harness.config import ConfigError, expand
from harness.cost import NetworkSpec
from harness.experiment import simulate
from harness.ops import (SELF, Accumulate, AllGather, AllReduce, Exchange, Get, Gossip, Grad, Neighbors, Put, Record)

N, D = 4, 6
COUNTERS = ["time_s", "compute_s", "comm_s", "idle_s", "bytes_sent", "bytes_recv", "messages"]


def cfg(alg: str, backend: str = "simpy", n: int = N, **over):
    raw = {"algorithm": alg, "n_workers": n, "steps": 6, "eval_every": 3, "seed": 5, "backend": backend,
           "task": {"name": "quadratic", "dim": D, "a_min": 0.5, "a_max": 2.0},
           "compute": {"model": "lognormal", "sigma": 0.5}, "network": {"latency_s": 1e-3, "bandwidth_Bps": 1e6}}
    raw.update(over)
    return expand(raw)[0]


def three(alg, **over):
    """(simpy, stacked, loopback) results as (table, final [n, d])."""
    out = [simulate(cfg(alg, b, **over)) for b in ("simpy", "stacked")]
    lb = loopback.run(cfg(alg, "simpy", **over))
    return out + [(lb.rows, lb.workers)]


def same_tables(a, b):
    key = ["worker", "step", "event"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns=["backend", "run_id"]), b.drop(columns=["backend", "run_id"]))


def same_bytes(a, b):
    cols = ["worker", "step", "bytes_sent", "bytes_recv", "messages"]
    f = lambda d: d[d.event == "step"][cols].sort_values(["worker", "step"]).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(f(a), f(b), check_dtype=False)


# -- participation ------------------------------------------------------------------------
@register("_v2_sampled", requires={"members"})
def sampled(ctx, x, *, m: int = 2, lr: float = 0.1):
    """FedAvg-like: each step, m sampled workers take a step and average among themselves."""
    for t in range(ctx.steps):
        S = sample_members(ctx.seed, t, ctx.n_workers, m)
        loss, g = yield Grad(x, members=S)
        x = yield AllReduce(torch.where(ctx.member(S).unsqueeze(-1), x - lr * g, x), members=S)
        yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
    return x


def test_members_pay_alone_and_backends_agree(monkeypatch):
    from harness.tasks.quadratic import QuadraticTask

    rows = []
    real = QuadraticTask.loss_and_grad
    monkeypatch.setattr(QuadraticTask, "loss_and_grad", lambda self, p, idx, who=None: (rows.append(p.shape), real(self, p, idx, who))[1])
    (ds, xs), (dk, xk), (dl, xl) = three("_v2_sampled")
    assert torch.equal(xs, xk) and (xs - xl).abs().max() < 1e-10
    same_tables(ds, dk)
    same_bytes(ds, dl)
    stacked_rows = [s[0] for s in rows if len(s) == 2 and s[0] != D]
    assert stacked_rows and set(stacked_rows) == {2}  # the stacked backend computed 2 rows, not 4
    w = ds[ds.event == "step"].sort_values(["worker", "step"])
    per = NetworkSpec(latency_s=1e-3, bandwidth_Bps=1e6).allreduce_cost(8 * D, range(2)).traffic[0]
    for t in range(6):
        S = sample_members(5, t, N, 2)
        step = w[w.step == t + 1].set_index("worker")
        prev = w[w.step == t].set_index("worker")
        grew = (step.compute_s - prev.compute_s) > 0
        assert set(np.flatnonzero(grew.to_numpy())) == set(S)  # non-members do not compute ...
        sent = step.bytes_sent - prev.bytes_sent
        assert all(sent[i] == (per.sent if i in S else 0) for i in range(N))  # ... nor pay


# -- data selection and quorum arrivals ------------------------------------------------------
@register("_v2_parts", requires={"part"})
def parts(ctx, x):
    _, g_own = yield Grad(x)
    _, g_next = yield Grad(x, part=(ctx.index + 1) % ctx.n_workers)
    yield Record(step=1, x=x, metrics={"own": g_own.sum(-1), "next": g_next.sum(-1)})
    return torch.stack([g_own, g_next], -2).flatten(-2)


def test_grad_on_a_chosen_part():
    """Quadratic: part j holds worker j's row, so grad = a_j (x - c_j), hand-computed."""
    from harness.tasks import build_task

    task = build_task(cfg("_v2_parts").task, N, 5)
    x0 = task.init_params(5)
    for df, X in three("_v2_parts", steps=1):
        for i in range(N):
            j = (i + 1) % N
            want = torch.cat([task.a[i] * (x0 - task.c[i]), task.a[j] * (x0 - task.c[j])])
            assert torch.allclose(X[i], want, atol=1e-12)


@register("_v2_quorum", requires={"quorum"})
def quorum(ctx, x, *, k: int = 3, lr: float = 0.1):
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        q = yield AllReduce(g, quorum=k)
        x = x - lr * q.value
        yield Record(step=t + 1, x=x, loss=loss, metrics={"arrived": ctx.mine(q.arrived).to(torch.float64)})
    return x


def test_quorum_says_who_arrived():
    (ds, xs), (dk, xk) = [simulate(cfg("_v2_quorum", b)) for b in ("simpy", "stacked")]
    assert torch.equal(xs, xk)
    same_tables(ds, dk)
    w = ds[(ds.event == "step") & (ds.step > 0)]
    assert (w.groupby("step").arrived.sum() == 3).all()  # exactly k arrived each step ...
    assert w.groupby("worker").arrived.mean().min() < 1  # ... and not always the same ones


# -- wire size ------------------------------------------------------------------------------
@register("_v2_codec", requires={"codec"})
def codec_alg(ctx, x, *, codec: str = "sign"):
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        x = x - 0.1 * (yield AllReduce(g, codec=codec))
        yield Record(step=t + 1, x=x, loss=loss)
    return x


@pytest.mark.parametrize("codec,bits", [("bf16", 16 * D), ("sign", D + 32), ("topk:2", 2 * (64 + 32)),
                                        ("bits:100", 100), ("topk:0.5:delta", None)])
def test_codec_bytes_and_values(codec, bits):
    (ds, xs), (dk, xk), (dl, xl) = three("_v2_codec", algorithm={"name": "_v2_codec", "codec": codec})
    assert torch.equal(xs, xk) and (xs - xl).abs().max() < 1e-10
    same_tables(ds, dk)
    same_bytes(ds, dl)
    last = ds[(ds.event == "step") & (ds.step == 6)].sort_values("worker")
    net = NetworkSpec()
    if bits is not None:
        b = math.ceil(bits / 8)
        summable = codec in ("bf16", "bits:100")
        per = (net.allreduce_cost(b, range(N)) if summable else net.allgather_cost([b] * N, range(N))).traffic[0]
        assert (last.bytes_sent == 6 * per.sent).all() and (last.messages == 6 * per.messages).all()
    else:  # delta-coded indices: fewer bits than 32-bit indices, and value-dependent
        assert (last.bytes_recv < 6 * (N - 1) * math.ceil(3 * (64 + 32) / 8)).all()


def test_codec_roundtrips():
    from harness import codecs

    x = torch.tensor([0.5, -2.0, 0.0, 3.0, -0.25])
    assert torch.equal(codecs.parse("sign").roundtrip(x), torch.tensor([1.15, -1.15, 1.15, 1.15, -1.15]))
    assert torch.equal(codecs.parse("topk:2").roundtrip(x), torch.tensor([0.0, -2.0, 0.0, 3.0, 0.0]))
    assert codecs.parse("topk:2:delta").wire_bits(x) == 2 * 32 + 3 + 3  # indices 1, 3: gaps 2, 2; Elias gamma(2) = 3 bits
    with pytest.raises(ValueError, match="codec: unknown or malformed codec 'zip'"):
        codecs.parse("zip")


# -- peers ------------------------------------------------------------------------------------
@register("_v2_two_gossips", requires={"gossip"})
def two_gossips(ctx, x):
    a = yield Gossip(x, step=0)
    b = yield Gossip(2 * x + 1, step=0)  # same step, other payload: must not swap with a
    peers = yield Neighbors(step=0)
    yield Record(step=1, x=a, metrics={"deg": peers.ins.sum(-1).to(torch.float64)})
    return torch.cat([a, b], -1)


def test_two_gossips_at_one_step_do_not_swap():
    import topologies

    topo = topologies.build({"name": "ring"}, N, 5)
    W = torch.as_tensor(topo.W(0))
    from harness.tasks import build_task

    for df, X in three("_v2_two_gossips", steps=1, topology={"name": "ring"}):
        x0 = build_task(cfg("_v2_parts").task, N, 5).init_params(5).expand(N, -1)
        assert torch.allclose(X[:, :D], W @ x0, atol=1e-12) and torch.allclose(X[:, D:], W @ (2 * x0 + 1), atol=1e-12)
        assert (df[(df.event == "step") & (df.step == 1)].deg == 2).all()  # Neighbors: a ring has 2 in-peers


@register("_v2_windows", requires={"onesided"})
def windows(ctx, x):
    """Scripted one-sided ops; barriers (all-reduces) order them across workers."""
    w, n = int(ctx.index), ctx.n_workers
    yield Put(SELF, torch.full_like(x, float(w)))
    yield AllReduce(x)
    yield Accumulate((w + 1) % n, torch.ones_like(x))  # everybody adds 1 into the next window
    yield AllReduce(x)
    mine = yield Get(SELF)                              # w + 1
    yield AllReduce(x)
    if w % 2 == 0:
        mine = yield Exchange(w + 1)                    # pairs (0, 1), (2, 3) average
    yield AllReduce(x)
    after = yield Get(SELF)
    theirs = yield Get((w + 1) % n)
    yield Record(step=1, x=x)
    return torch.stack([mine, after, theirs])[:, 0]


def test_one_sided_windows():
    want = {0: [1.5, 1.5, 1.5], 1: [2.0, 1.5, 3.5], 2: [3.5, 3.5, 3.5], 3: [4.0, 3.5, 1.5]}
    sim = simulate(cfg("_v2_windows", steps=1))
    lb = loopback.run(cfg("_v2_windows", steps=1))
    for X in (sim[1], lb.workers):
        for w, v in want.items():
            assert X[w].tolist() == v
    with pytest.raises(ConfigError, match="needs 'onesided'"):
        cfg("_v2_windows", "torch")


# -- what to evaluate, staleness --------------------------------------------------------------
@register("_v2_eval")
def eval_alg(ctx, x):
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        x = x - 0.1 * g
        yield Record(step=t + 1, x=x, loss=loss, eval_x=torch.zeros_like(x))
    return x


def test_record_names_the_model_to_evaluate():
    from harness.tasks import build_task

    task = build_task(cfg("_v2_eval").task, N, 5)
    zero = task.evaluate(torch.zeros(D, dtype=torch.float64))
    for df, _ in three("_v2_eval"):
        ev = df[df.worker == -1]
        assert np.allclose(ev.test_loss[ev.step > 0], zero["test_loss"])  # the named model is evaluated
        assert (ev.consensus_dist[ev.step > 0] > 0).all()  # the spread is still the workers'


def test_staleness_of_every_update():
    """Async SGD: an update row per applied gradient; with equal speeds every update after
    the first round is n - 1 versions old (the others' updates came in between)."""
    even, _ = simulate(cfg("async_sgd", compute={"model": "constant"}))
    up = even[even.event == "update"].sort_values("time_s", kind="stable")
    assert up.staleness.tolist() == [0, 1, 2, 3] + [N - 1] * (N * 5)
    for df in (simulate(cfg("async_sgd", compute={"model": "lognormal", "sigma": 0.8}))[0],
               loopback.run(cfg("async_sgd")).rows):
        up = df[df.event == "update"]
        assert len(up) == N * 6 and set(up.worker) == set(range(N))
        assert (up.staleness >= 0).all() and (up.staleness == up.staleness.round()).all()


# -- checks before the run --------------------------------------------------------------------
def test_unsupported_combinations_fail_at_config_time():
    with pytest.raises(ConfigError, match="backend: algorithm 'sync_sgd' needs 'quorum'"):
        expand({"algorithm": {"name": "sync_sgd", "backup": 1}, "n_workers": 4, "backend": "mpi"})
    with pytest.raises(ConfigError, match="algorithm.period: Input should be greater than or equal to 1"):
        expand({"algorithm": {"name": "local_sgd", "period": 0}})
    with pytest.raises(ConfigError, match="topology: algorithm 'dpsgd' gossips"):
        expand({"algorithm": "dpsgd"})


def test_cli_list_and_slurm_refuse_before_start(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "c.yaml"
    p.write_text("algorithm: {name: sync_sgd, backup: 1}\nn_workers: 4\n")
    for args in (["run", str(p), "--backend", "mpi", "--list"],
                 ["slurm", "submit", str(p), "--backend", "mpi", "--dry-run", "--out", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs 'quorum'" in lines[0], r.stderr
