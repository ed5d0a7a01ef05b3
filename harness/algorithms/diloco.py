"""DiLoCo, distributed low-communication training (Douillard et al., arXiv 2311.08105).

Every round, from the shared global model ``theta``, each worker takes ``period`` (H)
inner optimizer steps (its inner state stays local and persists across rounds), then

    Delta = (1/n) sum_i (theta - x_i)             pseudo-gradient (all-reduce)
    theta <- theta + outer(Delta)                 outer SGD, Nesterov momentum by default
    x_i <- theta

``theta`` is kept identically on every worker (so is the outer momentum). With
``outer_lr = 1, outer_momentum = 0`` the round is plain model averaging: DiLoCo becomes
Local SGD with the inner optimizer. Cost: one model all-reduce per H steps.

Paper defaults: inner AdamW lr 4e-4, weight decay 0.1, betas (0.9, 0.95); outer lr 0.7,
momentum 0.9 Nesterov; H = 500. Here H defaults to 20 and the inner lr to 3e-3 so that a
few-hundred-step digits run has rounds to average and trains. ``inner: sgd`` swaps the
inner optimizer for SGD (``momentum``, ``nesterov``).
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
from typing import Literal

from harness import schedules
from harness.algorithms import register
from harness.algorithms.common import outer_step
from harness.ops import Grad, Record
from harness.schedules import LR
from harness.transforms import adamw, sgd


@register("diloco")
def diloco(ctx, x, *, period: int = 20, inner: Literal["adamw", "sgd"] = "adamw", lr: LR = 3e-3,
           weight_decay: float = 0.1, beta1: float = 0.9, beta2: float = 0.95, momentum: float = 0.0,
           nesterov: bool = False, outer_lr: float = 0.7, outer_momentum: float = 0.9, outer_nesterov: bool = True):
    if period < 1:
        raise ValueError(f"algorithm.period: must be >= 1, got {period}")
    lr_at = schedules.make(lr, ctx.steps)
    opt = (adamw(1.0, (beta1, beta2), weight_decay=weight_decay) if inner == "adamw"
           else sgd(1.0, momentum, nesterov, weight_decay))
    outer = sgd(outer_lr, outer_momentum, outer_nesterov)
    state, theta = opt.init(x), x
    outer_state, rounds = outer.init(theta), 0
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if (t + 1) % period == 0:
            theta, outer_state = yield from outer_step(theta, x, outer, outer_state)
            x = theta
            rounds += 1
        yield Record(step=t + 1, round=rounds, x=x, loss=loss)
    return x
