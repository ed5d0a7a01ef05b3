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
Consensus rows evaluate the last elected leader (``Record(eval_x=...)``), the model LSGD
ships; the workers' average, which the pull never targets, is not evaluated.

Defaults (not the paper's; set for the digits task): tau=4, pull=0.1, SGD lr 0.1
with momentum 0.9.
"""
import torch

from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Period, Unit, every
from harness.ops import AllGather, AllReduce
from harness.parts import chain, grad, opt_update, part


@register("lsgd")
def lsgd(*, tau: Period = 4, pull: Unit = 0.1, inner: Optimizer = Optimizer(lr=0.1, momentum=0.9)):
    sync = every(tau)

    def follow(ctx, s, leader):  # state: the last elected leader (the start model before the first)
        x, step, metrics = s.x, s.lr * s.update, {}
        if sync(s.t):
            losses = yield AllGather(s.loss)                                 # [n] or [n, n]
            onehot = torch.nn.functional.one_hot(losses.argmin(-1), ctx.n_workers).to(x.dtype)
            mine = ctx.mine(onehot)
            leader = yield AllReduce(mine.unsqueeze(-1) * x, op="sum")
            step = step - pull * (x - leader)
            metrics = {"is_leader": mine}
            s = s._replace(round=s.round + 1)
        # what LSGD ships is the leader
        return s._replace(x=x + step, metrics=metrics, eval_x=leader), leader

    return chain(grad(), opt_update(inner), part(follow, init=lambda ctx, x: x))
