"""LSGD, leader stochastic gradient descent (Teng et al., arXiv 1905.10395).

Workers train locally; every ``tau`` steps each one is pulled towards the *leader*, the
worker whose current minibatch loss is lowest (ties: the lowest index):

    x_i <- x_i + opt_i(grad f_i(x_i))                               ordinary steps
    l = argmin_j f_j(x_j; batch_j)                                  (all-gather of losses)
    x_i <- x_i + opt_i(grad f_i(x_i)) - pull (x_i - x_l)            every tau steps

The losses and the gradient are both taken at the pre-step ``x_i``, as in the paper's
update ``x^{t+1} = x^t - eta grad f(x^t) - lambda (x^t - x_l^t)``. This is the paper's
single-leader, synchronous form with the pull applied at communication steps only.
Cost per round: an all-gather of one scalar, then the leader's model reaches everybody
through an all-reduce (sum of ``onehot_i x_i``); the paper broadcasts it (about half the
bytes of a ring all-reduce) -- the op language has no broadcast yet. The leader's index
refers to all workers, so a permanent crash (fault policy ``continue``) stops the run.

Defaults (not in ALGORITHMS.md; set for the digits task): tau=4, pull=0.1, SGD lr 0.1
with momentum 0.9.
"""
import torch

from harness import schedules
from harness.algorithms import register
from harness.ops import AllGather, AllReduce, Grad, Record
from harness.schedules import LR
from harness.transforms import sgd


@register("lsgd")
def lsgd(ctx, x, *, tau: int = 4, pull: float = 0.1, lr: LR = 0.1, momentum: float = 0.9,
         nesterov: bool = False, weight_decay: float = 0.0):
    if tau < 1:
        raise ValueError(f"algorithm.tau: must be >= 1, got {tau}")
    if not 0 <= pull <= 1:
        raise ValueError(f"algorithm.pull: must be in [0, 1], got {pull}")
    lr_at = schedules.make(lr, ctx.steps)
    opt = sgd(1.0, momentum, nesterov, weight_decay)
    state, rounds = opt.init(x), 0
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        step = lr_at(t) * u
        metrics = {}
        if (t + 1) % tau == 0:
            losses = yield AllGather(loss)                                   # [n] or [n, n]
            onehot = torch.nn.functional.one_hot(losses.argmin(-1), ctx.n_workers).to(x.dtype)
            mine = ctx.mine(onehot)
            leader = yield AllReduce(mine.unsqueeze(-1) * x, op="sum")
            step = step - pull * (x - leader)
            rounds += 1
            metrics = {"is_leader": mine}
        x = x + step
        yield Record(step=t + 1, round=rounds, x=x, loss=loss, metrics=metrics)
    return x
