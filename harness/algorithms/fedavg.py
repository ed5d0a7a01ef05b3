"""FedAvg, federated averaging (McMahan et al., arXiv 1602.05629, Algorithm 1), and FedProx
(Li et al., arXiv 1812.06127, Algorithm 2).

Each round ``t`` the server samples ``m`` of the ``N`` clients (``m`` = the run's ``n_workers``
slots, ``N`` = ``n_clients``; uniformly, or by data size with ``sampling: size``); client ``k``
starts from the global model ``x_t`` and runs ``E`` local epochs of minibatch SGD over its shard
(without replacement, last batch ragged), or ``local_steps`` minibatches:

    x_k <- x_k - lr (grad f_k(x_k; batch) + mu (x_k - x_t))         (mu = 0: FedAvg; > 0: FedProx)
    x_{t+1} = sum_{k in S_t} (n_k / sum_{j in S_t} n_j) x_k           (weighted; else the plain mean)

A step of the run is a round. Cost per round: every sampled client downloads and uploads the
model once (``2 m`` model transfers through the server's NIC). Defaults follow the paper's
MNIST setting scaled to digits (lr 0.05, batch from the task, E = 2). With every client sampled,
equal shards and one local step, FedAvg is synchronous SGD (a test).
"""
from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Steps
from harness.parts import chain, local_train, play, server_average

from typing import Literal


def _check(p, n_workers):
    if bool(p["local_epochs"]) == bool(p["local_steps"]):
        raise ValueError("algorithm.local_epochs: give local_epochs or local_steps (set the other to 0)")


def _fed(local_epochs, local_steps, inner, mu, sampling, weighted):
    return chain(play(weighted=sampling == "size"), local_train(inner, local_epochs, local_steps, mu),
                 server_average(weighted))


@register("fedavg", check=_check)
def fedavg(*, local_epochs: Steps = 2, local_steps: Steps = 0, inner: Optimizer = Optimizer(lr=0.05),
           sampling: Literal["uniform", "size"] = "uniform", weighted: bool = True):
    return _fed(local_epochs, local_steps, inner, 0.0, sampling, weighted)


@register("fedprox", check=_check)
def fedprox(*, mu: NonNegative = 0.01, local_epochs: Steps = 2, local_steps: Steps = 0,
            inner: Optimizer = Optimizer(lr=0.05), sampling: Literal["uniform", "size"] = "uniform",
            weighted: bool = True):
    return _fed(local_epochs, local_steps, inner, mu, sampling, weighted)
