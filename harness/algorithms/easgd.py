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
distance ``||x_i - x_c||`` is the ``center_dist`` metric; consensus rows evaluate the
centre ``x_c`` (``Record(eval_x=...)``), the model EASGD ships. The asynchronous variant needs
server/worker roles and is not here.

Defaults: tau=4, beta=0.1 and SGD lr 0.1 with momentum 0.9, as the authors' lab used
EASGD as a baseline (the EASGD paper itself mostly uses beta=0.9).
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
import torch

from harness.algorithms import register
from harness.algorithms.blocks import Fraction, Optimizer, Period, elastic_pull, every
from harness.parts import chain, grad, local_step, part


@register("easgd")
def easgd(*, tau: Period = 4, beta: Fraction = 0.1, inner: Optimizer = Optimizer(lr=0.1, momentum=0.9)):
    sync = every(tau)

    def elastic(ctx, s, center):  # state: the centre x_c, starting at the initial model
        if sync(s.t):
            x, center = yield from elastic_pull(s.x, center, beta / ctx.n_workers, beta)
            s = s._replace(x=x, round=s.round + 1)
        dist = torch.linalg.vector_norm(s.x - center, dim=-1)
        return s._replace(metrics={"center_dist": dist}, eval_x=center), center

    return chain(grad(), local_step(inner), part(elastic, init=lambda ctx, x: x))
