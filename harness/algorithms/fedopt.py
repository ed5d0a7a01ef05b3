"""FedAdam, FedYogi and FedAdagrad: adaptive server optimizers over FedAvg's local training
(Reddi et al., "Adaptive Federated Optimization", arXiv 2003.00295, Algorithm 2).

Each round ``t`` the ``m`` slots play ``m`` sampled clients (as :mod:`~harness.algorithms.fedavg`);
client ``i`` starts from the global ``x_t``, runs its local SGD (``local_epochs`` passes over its
shard or ``local_steps`` minibatches, ``inner`` optimizer) to ``x_i`` and uploads ``x_i - x_t``.
The server forms the pseudo-gradient and takes one adaptive step (``*`` and ``/`` per coordinate):

    Delta_t = (1/m) sum_{i in S_t} (x_i - x_t)        (``weighted``: sum_i n_i/(sum_j n_j) (x_i - x_t))
    m_t     = b1 m_{t-1} + (1 - b1) Delta_t
    v_t     = v_{t-1} + Delta_t^2                                      FedAdagrad
    v_t     = b2 v_{t-1} + (1 - b2) Delta_t^2                          FedAdam
    v_t     = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)    FedYogi
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

with ``m_{-1} = 0`` and ``v_{-1} = tau^2`` (Algorithm 2 asks ``v_{-1} >= tau^2``) and no bias
correction (none in Algorithm 2). The server's state (``x_t``, ``m``, ``v``) is the state of the
part :class:`server_opt`, identical on every slot; clients keep no state. Defaults: ``b1 = 0.9``,
``b2 = 0.99`` (the paper's experiments, Section 5); ``tau = 1e-3`` and ``eta = 0.01`` are ours
(the paper tunes both per task on a grid; on presets/fedavg-digits.yaml, seed 0, eta in
0.01..0.1 ends at 0.92-0.98 test accuracy for all three, FedAdagrad the lowest at 0.01); the
client side is FedAvg's on digits (SGD, lr 0.05, E = 2). The plain mean is Algorithm 2's;
``weighted: true`` gives the sample-weighted mean.

Cost per round: one ``AllReduce(via="server")`` of the ``d``-entry update: each sampled client
uploads ``x_i - x_t`` and downloads the new model, ``2 m`` model transfers, as FedAvg.
"""

from typing import Literal

import torch

from harness import ops
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Positive, Smoothing, Steps
from harness.algorithms.fedavg import _check
from harness.parts import Part, chain, local_train, play

Sampling = Literal["uniform", "size"]


def cohort_mean(ctx, s, v, weighted: bool):
    """The server's mean of the slots' ``v`` over the round's cohort, priced as uploads to and a
    download from the server: sample-weighted (``n_c / sum_{cohort} n_c``) or plain."""
    if weighted:
        total = float(sum(ctx.part_sizes[c] for c in s.cohort))
        w = torch.tensor([ctx.part_sizes[c] / total for c in s.cohort], dtype=v.dtype)[ctx.index]
        return (yield ops.AllReduce(w.unsqueeze(-1) * v, op="sum", via="server"))
    return (yield ops.AllReduce(v, op="mean", via="server"))


class server_opt(Part):  # noqa: N801
    """The adaptive server step of Reddi et al. (arXiv 2003.00295, Algorithm 2) on the pseudo-gradient
    ``Delta = mean(x_i - x_t)``; ``kind`` is ``adam``, ``yogi`` or ``adagrad`` (``b2`` unused).
    State: ``(x_t, m, v)``, the server's, the same on every slot."""

    def __init__(self, kind: str, lr: float, b1: float, b2: float, tau: float, weighted: bool):
        if kind not in ("adam", "yogi", "adagrad"):
            raise ValueError(f"server_opt: kind must be adam, yogi or adagrad, got {kind!r}")
        self.kind, self.lr, self.b1, self.b2, self.tau, self.weighted = kind, lr, b1, b2, tau, weighted

    def init(self, ctx, x):
        return x, torch.zeros_like(x), torch.full_like(x, self.tau * self.tau)

    def step(self, ctx, s, state):
        xt, m, v = state
        delta = yield from cohort_mean(ctx, s, s.x - xt, self.weighted)
        m = self.b1 * m + (1 - self.b1) * delta
        d2 = delta * delta
        if self.kind == "adam":
            v = self.b2 * v + (1 - self.b2) * d2
        elif self.kind == "yogi":
            v = v - (1 - self.b2) * d2 * torch.sign(v - d2)
        else:
            v = v + d2
        x = xt + self.lr * m / (v.sqrt() + self.tau)
        return s._replace(x=x), (x, m, v)


def _fedopt(kind, server_lr, b1, b2, tau, local_epochs, local_steps, inner, sampling, weighted):
    return chain(play(weighted=sampling == "size"), local_train(inner, local_epochs, local_steps),
                 server_opt(kind, server_lr, b1, b2, tau, weighted))


@register("fedadam", check=_check)
def fedadam(*, server_lr: Positive = 0.01, server_beta1: Smoothing = 0.9, server_beta2: Smoothing = 0.99,
            tau: Positive = 1e-3, local_epochs: Steps = 2, local_steps: Steps = 0,
            inner: Optimizer = Optimizer(lr=0.05), sampling: Sampling = "uniform", weighted: bool = False):
    return _fedopt("adam", server_lr, server_beta1, server_beta2, tau, local_epochs, local_steps, inner,
                   sampling, weighted)


@register("fedyogi", check=_check)
def fedyogi(*, server_lr: Positive = 0.01, server_beta1: Smoothing = 0.9, server_beta2: Smoothing = 0.99,
            tau: Positive = 1e-3, local_epochs: Steps = 2, local_steps: Steps = 0,
            inner: Optimizer = Optimizer(lr=0.05), sampling: Sampling = "uniform", weighted: bool = False):
    return _fedopt("yogi", server_lr, server_beta1, server_beta2, tau, local_epochs, local_steps, inner,
                   sampling, weighted)


@register("fedadagrad", check=_check)
def fedadagrad(*, server_lr: Positive = 0.01, server_beta1: Smoothing = 0.9, tau: Positive = 1e-3,
               local_epochs: Steps = 2, local_steps: Steps = 0, inner: Optimizer = Optimizer(lr=0.05),
               sampling: Sampling = "uniform", weighted: bool = False):
    return _fedopt("adagrad", server_lr, server_beta1, 0.0, tau, local_epochs, local_steps, inner,
                   sampling, weighted)
