"""PALSGD, pseudo-asynchronous local SGD (Naganuma et al., arXiv 2504.18454).

A DiLoCo-like outer loop every ``period`` (H) steps; at each local step a worker flips
its own coin (``Rand``) and, with probability ``p``, does a *pseudo-synchronisation*
instead of a gradient step: a pull towards the (stale) outer model, with no message:

    x_i <- x_i - (eta / p)(x_i - theta)                      with probability p
    x_i <- x_i + opt_i(grad f_i(x_i)) / (1 - p)              otherwise (inner state updated)
    Delta = (1/n) sum_i (theta - x_i);  theta <- theta + outer(Delta);  x_i <- theta
                                                             every H steps (all-reduce)

The first ``sync_warmup`` steps are synchronous SGD (gradients all-reduced each step) and
the outer loop starts after them. Deviations: every worker still computes (and is
charged for) a gradient on pseudo-sync steps, because a per-worker choice cannot skip
work on the stacked backend -- simulated time is an upper bound on PALSGD's. The rule
was read from ALGORITHMS.md (the paper's constants: H=32, p=0.2, eta=1, outer Nesterov
lr 0.1 for GPT-Neo); here ``eta / p`` is the pull fraction, so it must be <= 1 and
eta defaults to 0.1 (pull 0.5). Outer lr 0.7 momentum 0.9 and inner SGD lr 0.1 with
momentum 0.9 suit the digits task; ``inner: adamw`` uses AdamW (per-worker step counts).
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
from typing import Literal

import torch

from harness import schedules
from harness.algorithms import register
from harness.algorithms.common import outer_step
from harness.ops import AllReduce, Grad, Rand, Record, retrying
from harness.schedules import LR
from harness.transforms import adamw, sgd


@register("palsgd")
def palsgd(ctx, x, *, period: int = 32, p: float = 0.2, eta: float = 0.1, sync_warmup: int = 0,
           inner: Literal["sgd", "adamw"] = "sgd", lr: LR = 0.1, momentum: float = 0.9, nesterov: bool = False,
           weight_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.95,
           outer_lr: float = 0.7, outer_momentum: float = 0.9, outer_nesterov: bool = True):
    if period < 1 or sync_warmup < 0:
        raise ValueError(f"algorithm.period: need period >= 1 and sync_warmup >= 0, got {period}, {sync_warmup}")
    if not 0 < p < 1 or not 0 < eta <= p:
        raise ValueError(f"algorithm.eta: need 0 < p < 1 and 0 < eta <= p (pull eta/p <= 1), got p={p}, eta={eta}")
    lr_at = schedules.make(lr, ctx.steps)
    opt = (adamw(1.0, (beta1, beta2), weight_decay=weight_decay) if inner == "adamw"
           else sgd(1.0, momentum, nesterov, weight_decay))
    # integer counters (AdamW's step) become per-worker tensors so that they can be masked
    state = tuple(torch.zeros_like(x[..., :1]) + s if isinstance(s, int) else s for s in opt.init(x))
    outer = sgd(outer_lr, outer_momentum, outer_nesterov)
    theta, outer_state, rounds = x, outer.init(x), 0
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        if t < sync_warmup:
            g = yield from retrying(AllReduce(g, op="mean"))
        u, new = opt.update(g, tuple(s.clone() for s in state), x)  # AdamW's t += 1 is in place
        if t < sync_warmup:
            x = x + lr_at(t) * u
            state, theta = new, x
            rounds += 1
        else:
            pseudo = ((yield Rand()) < p).unsqueeze(-1)
            state = tuple(torch.where(pseudo, s, n) for s, n in zip(state, new))
            x = torch.where(pseudo, x - (eta / p) * (x - theta), x + lr_at(t) / (1 - p) * u)
            if (t + 1 - sync_warmup) % period == 0:
                theta, outer_state = yield from outer_step(theta, x, outer, outer_state)
                x = theta
                rounds += 1
        yield Record(step=t + 1, round=rounds, x=x, loss=loss)
    return x
