"""Synchronous EASGD, elastic averaging SGD (Zhang, Choromanska, LeCun, arXiv 1412.6651).

Every step a local optimizer step; every ``tau`` steps an elastic exchange with the
centre variable ``x_c``, with ``alpha = beta / n`` (the paper's ``beta = n alpha``):

    x_i <- x_i + opt_i(grad f_i(x_i))                       every step
    xbar = (1/n) sum_j x_j                                  (all-reduce, every tau steps)
    x_i <- x_i - alpha (x_i - x_c)
    x_c <- (1 - beta) x_c + beta xbar                       (uses the x_j before their pull)

``x_c`` starts at the initial model and is kept identically on every worker, updated
from the all-reduced mean (one model all-reduce per round instead of the paper's
parameter server; the maths is the same). Recorded rows carry the workers' ``x_i``; the
distance ``||x_i - x_c||`` is the ``center_dist`` metric. The asynchronous variant needs
server/worker roles and is not here.

Defaults: tau=4, beta=0.1 and SGD lr 0.1 with momentum 0.9, as the authors' lab used
EASGD as a baseline (the EASGD paper itself mostly uses beta=0.9).
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
import torch

from harness import schedules
from harness.algorithms import register
from harness.ops import AllReduce, Grad, Record, retrying
from harness.schedules import LR
from harness.transforms import sgd


@register("easgd")
def easgd(ctx, x, *, tau: int = 4, beta: float = 0.1, lr: LR = 0.1, momentum: float = 0.9,
          nesterov: bool = False, weight_decay: float = 0.0):
    if tau < 1:
        raise ValueError(f"algorithm.tau: must be >= 1, got {tau}")
    if not 0 < beta <= 1:
        raise ValueError(f"algorithm.beta: must be in (0, 1], got {beta}")
    alpha = beta / ctx.n_workers
    lr_at = schedules.make(lr, ctx.steps)
    opt = sgd(1.0, momentum, nesterov, weight_decay)
    state, center, rounds = opt.init(x), x, 0
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if (t + 1) % tau == 0:
            xbar = yield from retrying(AllReduce(x, op="mean"))
            x, center = x - alpha * (x - center), (1 - beta) * center + beta * xbar
            rounds += 1
        dist = torch.linalg.vector_norm(x - center, dim=-1)
        yield Record(step=t + 1, round=rounds, x=x, loss=loss, metrics={"center_dist": dist})
    return x
