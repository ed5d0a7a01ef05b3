"""QSR, the quadratic synchronization rule for Local SGD (Gu et al., arXiv 2310.14423).

Local SGD whose round length grows as the learning rate decays. At the start of each
round (step t):

    H = max(H_base, floor((alpha / lr_t)^2))                 (capped at the steps left)
    x_i <- x_i + opt_i(grad f_i(x_i))     for H steps;   then x_i <- (1/n) sum_j x_j

so QSR needs a decaying schedule (default: cosine from 0.1 to 0 over the run). The last
round is cut at the end of the run and still averaged. The ``H`` of the current round is
the ``H`` metric. Cost: one model all-reduce per round.

Defaults: H_base=4 and cosine decay as the paper; the paper's alpha=0.0175 is tuned
to AdamW learning rates (~1e-3); with this SGD's lr 0.1 it would lengthen rounds only in
the last ~5% of the run, so alpha defaults to 0.1 (H > 4 once lr < 0.05). Exponent 2.
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
import math

import torch

from harness import schedules
from harness.algorithms import register
from harness.ops import AllReduce, Grad, Record, retrying
from harness.schedules import LR
from harness.transforms import sgd


@register("qsr")
def qsr(ctx, x, *, h_base: int = 4, alpha: float = 0.1, lr: LR = schedules.spec("cosine", lr=0.1),
        momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0):
    if h_base < 1:
        raise ValueError(f"algorithm.h_base: must be >= 1, got {h_base}")
    if alpha < 0:
        raise ValueError(f"algorithm.alpha: must be >= 0, got {alpha}")
    lr_at = schedules.make(lr, ctx.steps)
    opt = sgd(1.0, momentum, nesterov, weight_decay)
    state, rounds, sync_at, h = opt.init(x), 0, 0, h_base
    for t in range(ctx.steps):
        if t == sync_at:  # a round starts: choose its length from the current lr
            eta = lr_at(t)
            h = max(h_base, math.floor((alpha / eta) ** 2)) if eta > 0 else ctx.steps
            sync_at = min(t + h, ctx.steps)
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if t + 1 == sync_at:
            x = yield from retrying(AllReduce(x, op="mean"))
            rounds += 1
        yield Record(step=t + 1, round=rounds, x=x, loss=loss, metrics={"H": torch.full_like(loss, h)})
    return x
