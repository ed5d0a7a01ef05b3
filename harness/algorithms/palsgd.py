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
import torch

from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Period, Positive, Prob, Steps, after, every, mean_average, outer_step
from harness.ops import Grad, Rand, Record


def _check(p, n_workers):
    if p["eta"] > p["p"]:
        raise ValueError(f"algorithm.eta: must be <= p (the pull eta/p must be <= 1), got eta={p['eta']}, p={p['p']}")


@register("palsgd", check=_check)
def palsgd(ctx, x, *, period: Period = 32, p: Prob = 0.2, eta: Positive = 0.1, sync_warmup: Steps = 0,
           inner: Optimizer = Optimizer(lr=0.1, momentum=0.9, beta2=0.95),
           outer: Optimizer = Optimizer(lr=0.7, momentum=0.9, nesterov=True)):
    opt, lr_at = inner.build(ctx.steps)
    out, out_lr = outer.build(ctx.steps)
    # integer counters (AdamW's step) become per-worker tensors so that they can be masked
    state = tuple(torch.zeros_like(x[..., :1]) + s if isinstance(s, int) else s for s in opt.init(x))
    sync, theta, outer_state = after(sync_warmup).then(every(period)), x, out.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        if t < sync_warmup:
            g = yield from mean_average(g)
        u, new = opt.update(g, tuple(s.clone() for s in state), x)  # AdamW's t += 1 is in place
        if t < sync_warmup:  # synchronous SGD
            x = x + lr_at(t) * u
            state, theta = new, x
        else:
            pseudo = ((yield Rand()) < p).unsqueeze(-1)
            state = tuple(torch.where(pseudo, s, n) for s, n in zip(state, new))
            x = torch.where(pseudo, x - (eta / p) * (x - theta), x + lr_at(t) / (1 - p) * u)
            if sync(t):
                theta, outer_state = yield from outer_step(theta, x, out, outer_state, out_lr(t))
                x = theta
        yield Record(step=t + 1, round=min(t + 1, sync_warmup) + sync.round(t), x=x, loss=loss)
    return x
