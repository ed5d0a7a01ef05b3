"""One or two rounds of every new algorithm, checked against its update rule written out
by hand (per worker, in plain loops) on a 3-worker quadratic f_i = 1/2 sum a_i (x - c_i)^2.

The algorithms run through the real per-rank interpreter (``harness.backends.rank.RankDriver``)
over the in-process loopback transport, 3 ranks, so these rules are checked on the code that
real runs use; ops come from the driver's trace, ``Rand`` draws from the real per-worker
streams. The SimPy/stacked agreement is the business of test_alg_backends.py.
"""
import math

import numpy as np
import pytest
import torch

from harness.backends import loopback
from harness.config import expand
from harness.tasks import build_task

N, D = 3, 4
SEED = 13  # its Rand streams make PALSGD's worker 0 pseudo-sync at step 1 and worker 1 at step 2 (asserted there)
TASK = {"name": "quadratic", "dim": D, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}


@pytest.fixture(scope="module")
def quad():
    task = build_task(TASK, N, seed=SEED)
    return task.a, task.c, task.init_params(SEED)


def grad(a, c, x):
    return a * (x - c)


def f(a, c, x):
    return 0.5 * float((a * (x - c) ** 2).sum())


class Ran:
    """A loopback run: ``X`` the workers' finals ``[n, d]``, ``ops`` the op trace (the same on
    every rank: lock-step), ``rows`` the worker rows of the real table."""

    def __init__(self, res, steps):
        assert all(o == res.ops[0] for o in res.ops), res.ops
        # the method's own ops: the loop's Checkpoint after every step (harness.parts.run) is no rule of it
        self.X, self.ops, self.steps = res.workers, [o for o in res.ops[0] if o != "Checkpoint"], steps
        self.rows = res.rows[res.rows.worker >= 0].sort_values(["worker", "step"])

    def rounds(self) -> list[int]:
        """Each step's round (steps 1..), checked to be the same on every worker."""
        per = [list(w[w.step > 0]["round"]) for _, w in self.rows.groupby("worker")]
        assert all(r == per[0] for r in per), per
        return per[0]

    def last(self, col: str) -> torch.Tensor:
        """Column ``col`` of the workers' last rows, ``[n]``."""
        return torch.tensor(self.rows[self.rows.step == self.steps][col].to_numpy(float), dtype=torch.float64)


def drive(name, steps, task=TASK, **params) -> Ran:
    """Run algorithm ``name`` on 3 ranks through the real RankDriver over loopback."""
    cfg = expand({"n_workers": N, "steps": steps, "seed": SEED, "task": task, "algorithm": {"name": name, **params}})[0]
    return Ran(loopback.run(cfg, trace=True, timeout_s=30), steps)


def close(X, rows):
    return torch.allclose(X, torch.stack(rows), rtol=0, atol=1e-12)


def sgd_steps(a, c, x, lr, k):
    for _ in range(k):
        x = x - lr * grad(a, c, x)
    return x


def test_easgd_two_rounds(quad):
    a, c, x0 = quad
    lr, beta = 0.1, 0.6
    run = drive("easgd", 4, tau=2, beta=beta, lr=lr, momentum=0.0)
    xs, center = [x0.clone() for _ in range(N)], x0.clone()
    for _ in range(2):
        xs = [sgd_steps(a[i], c[i], xs[i], lr, 2) for i in range(N)]
        xbar = sum(xs) / N
        xs = [x - beta / N * (x - center) for x in xs]
        center = (1 - beta) * center + beta * xbar
    assert close(run.X, xs)
    assert run.ops.count("AllReduce") == 2 and run.rounds() == [0, 1, 1, 2]
    assert torch.allclose(run.last("center_dist"), torch.stack([(x - center).norm() for x in xs]))


def test_lsgd_pulls_towards_lowest_loss(quad):
    a, c, x0 = quad
    lr, pull = 0.1, 0.3
    run = drive("lsgd", 2, tau=2, pull=pull, lr=lr, momentum=0.0)
    x1 = [sgd_steps(a[i], c[i], x0, lr, 1) for i in range(N)]
    losses = [f(a[i], c[i], x1[i]) for i in range(N)]
    lead = x1[losses.index(min(losses))]
    expect = [x1[i] - lr * grad(a[i], c[i], x1[i]) - pull * (x1[i] - lead) for i in range(N)]
    assert close(run.X, expect)
    assert run.ops == ["Grad", "Record", "Grad", "AllGather", "AllReduce", "Record"]


@pytest.mark.parametrize("name", ["mgrawa", "lgrawa"])
def test_grawa_two_rounds(quad, name):
    a, c, x0 = quad
    lr, alpha, p2, s, tau = 0.1, 0.5, 0.2, 0.43, 2
    run = drive(name, 4, tau=tau, alpha=alpha, p2=p2, smoothing=s, lr=lr, momentum=0.0)
    segs = [(0, 2), (2, 4)]
    xs, center, m = [x0.clone() for _ in range(N)], x0.clone(), [0.0] * N
    for k in (1, 2):
        for _ in range(tau):
            xs = [x - lr * grad(a[i], c[i], x) for i, x in enumerate(xs)]
            xs = [x - p2 / tau * (x - center) for x in xs]
        inv = []
        for i in range(N):
            gi = grad(a[i], c[i], xs[i])
            nu = torch.stack([gi[s0:e0].norm() for s0, e0 in segs])
            nu = nu if name == "lgrawa" else nu.sum().expand(2)
            m[i] = s * m[i] + (1 - s) * nu
            inv.append(1 / (m[i] / (1 - s**k)))
        w = [v / sum(inv) for v in inv]  # per worker, per segment
        center = sum(torch.cat([w[i][0].expand(2), w[i][1].expand(2)]) * xs[i] for i in range(N))
        xs = [(1 - alpha) * x + alpha * center for x in xs]
    assert close(run.X, xs)
    assert run.ops.count("Grad") == 4 + 2 and run.ops.count("AllReduce") == 4


def test_grawa_layer_weights_differ_from_model_weights():
    xm = drive("mgrawa", 2, tau=2, lr=0.1, momentum=0.0).X
    xl = drive("lgrawa", 2, tau=2, lr=0.1, momentum=0.0).X
    assert (xm - xl).abs().max() > 1e-6


def test_dppf_pull_and_push(quad):
    a, c, x0 = quad
    lr, alpha, lam = 0.1, 0.4, 0.05
    run = drive("dppf", 2, tau=2, alpha=alpha, lam=lam, lr=lr, momentum=0.0)
    xs = [sgd_steps(a[i], c[i], x0, lr, 2) for i in range(N)]
    xbar = sum(xs) / N
    expect = [x - alpha * (x - xbar) + lam * (x - xbar) / (x - xbar).norm() for x in xs]
    assert close(run.X, expect)
    assert torch.allclose(run.last("dist"), torch.stack([(x - xbar).norm() for x in xs]))


def test_dppf_no_push_at_consensus(quad):
    same = {**TASK, "a_min": 1.0, "a_max": 1.0, "spread": 0.0}  # identical workers: d_i = 0 exactly
    X = drive("dppf", 2, task=same, tau=2, lr=0.1, momentum=0.0).X
    assert torch.isfinite(X).all() and (X - X[0]).abs().max() == 0
    assert (X - quad[2]).abs().max() > 1e-3  # it did move


def adamw_steps(a, c, x, st, lr, k, b1=0.9, b2=0.95, wd=0.1, eps=1e-8):
    m, v, t = st
    for _ in range(k):
        g = grad(a, c, x)
        t += 1
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        x = x - lr * ((m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * x)
    return x, (m, v, t)


def test_diloco_two_rounds_adamw_nesterov(quad):
    a, c, x0 = quad
    lr, olr, mu = 0.05, 0.7, 0.9
    run = drive("diloco", 4, period=2, lr=lr, outer_lr=olr, outer_momentum=mu)
    theta, mom = x0.clone(), torch.zeros(D, dtype=x0.dtype)
    sts = [(torch.zeros(D, dtype=x0.dtype), torch.zeros(D, dtype=x0.dtype), 0) for _ in range(N)]
    for _ in range(2):
        out = [adamw_steps(a[i], c[i], theta, sts[i], lr, 2) for i in range(N)]
        sts = [o[1] for o in out]
        delta = sum(theta - o[0] for o in out) / N
        mom = mu * mom + delta
        theta = theta - olr * (delta + mu * mom)
    assert close(run.X, [theta] * N)
    assert run.ops.count("AllReduce") == 2


def test_palsgd_coins_pseudo_sync_and_outer_step(quad):
    a, c, x0 = quad
    lr, p, eta, olr, mu = 0.1, 0.25, 0.2, 0.5, 0.9
    streams = [np.random.default_rng([SEED, i, 17]) for i in range(N)]  # == simulators.base.Simulator.draw
    coins = [[float(s.random()) for s in streams] for _ in range(2)]  # [step][worker]
    pseudo = [[u < p for u in step] for step in coins]
    assert pseudo == [[True, False, False], [False, True, False]], coins  # the case SEED was chosen for
    run = drive("palsgd", 2, period=2, p=p, eta=eta, lr=lr, momentum=mu, outer_lr=olr, outer_momentum=0.0)
    xs, bufs = [x0.clone() for _ in range(N)], [torch.zeros(D, dtype=x0.dtype) for _ in range(N)]
    for draw in coins:
        for i in range(N):
            if draw[i] < p:
                xs[i] = xs[i] - eta / p * (xs[i] - x0)  # pull towards the (stale) outer model
            else:
                bufs[i] = mu * bufs[i] + grad(a[i], c[i], xs[i])
                xs[i] = xs[i] - lr / (1 - p) * bufs[i]
    theta = x0 - olr * sum(x0 - x for x in xs) / N
    assert close(run.X, [theta] * N)
    assert run.ops == ["Grad", "Rand", "Record", "Grad", "Rand", "AllReduce", "Record"]


def test_palsgd_sync_warmup_is_sync_sgd(quad):
    a, c, x0 = quad
    run = drive("palsgd", 2, sync_warmup=2, lr=0.1, momentum=0.0)
    x = x0
    for _ in range(2):
        x = x - 0.1 * sum(grad(a[i], c[i], x) for i in range(N)) / N
    assert close(run.X, [x] * N) and "Rand" not in run.ops


def test_post_local_sgd_switches(quad):
    a, c, x0 = quad
    lr, mu, wd = 0.1, 0.9, 1e-4
    run = drive("post_local_sgd", 5, switch=2, period=2, lr=lr, momentum=mu, weight_decay=wd)

    def nesterov(g, b, x):
        g = g + wd * x
        b = mu * b + g
        return x - lr * (g + mu * b), b

    x, b = x0.clone(), torch.zeros(D, dtype=x0.dtype)
    for _ in range(2):  # synchronous phase: averaged gradients, shared buffer
        x, b = nesterov(sum(grad(a[i], c[i], x) for i in range(N)) / N, b, x)
    xs, bs = [x] * N, [b] * N
    for _ in range(2):  # local phase
        out = [nesterov(grad(a[i], c[i], xs[i]), bs[i], xs[i]) for i in range(N)]
        xs, bs = [o[0] for o in out], [o[1] for o in out]
    xs = [sum(xs) / N] * N
    out = [nesterov(grad(a[i], c[i], xs[i]), bs[i], xs[i]) for i in range(N)]  # step 5: local, no sync
    assert close(run.X, [o[0] for o in out])
    assert run.ops.count("AllReduce") == 3 and run.rounds() == [1, 2, 2, 3, 3]


def test_qsr_round_lengths_follow_the_rule():
    steps, h_base, alpha = 20, 2, 0.1
    run = drive("qsr", steps, h_base=h_base, alpha=alpha, lr={"name": "cosine", "lr": 0.1}, momentum=0.0)
    syncs, t = [], 0
    while t < steps:
        eta = 0.05 * (1 + math.cos(math.pi * t / steps))
        t = min(t + max(h_base, math.floor((alpha / eta) ** 2)), steps)
        syncs.append(t)
    assert syncs == [2, 4, 6, 8, 10, 14, 20]
    rounds = run.rounds()
    assert [s + 1 for s in range(steps) if rounds[s] > (rounds[s - 1] if s else 0)] == syncs
    h = run.rows[(run.rows.worker == 0) & (run.rows.step > 0)]["H"]
    assert [int(v) for v in h][10:15] == [4] * 4 + [23]
    assert (run.X - run.X.mean(0)).abs().max() < 1e-12  # the cut last round is still averaged
