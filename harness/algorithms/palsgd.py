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
follows the paper's Algorithm 1 as summarised by its authors (constants: H=32, p=0.2, eta=1,
outer Nesterov lr 0.1 for GPT-Neo); here ``eta / p`` is the pull fraction, so it must be <= 1 and
eta defaults to 0.1 (pull 0.5). Outer lr 0.7 momentum 0.9 and inner SGD lr 0.1 with
momentum 0.9 suit the digits task; ``inner: adamw`` uses AdamW (per-worker step counts).
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
import torch

from harness import parts
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Period, Positive, Prob, Steps, after, every
from harness.ops import Rand
from harness.parts import average, chain, grad, opt_update, part, select, tensorize, when


def _check(p, n_workers):
    if p["eta"] > p["p"]:
        raise ValueError(f"algorithm.eta: must be <= p (the pull eta/p must be <= 1), got eta={p['eta']}, p={p['p']}")


@register("palsgd", check=_check)
def palsgd(*, period: Period = 32, p: Prob = 0.2, eta: Positive = 0.1, sync_warmup: Steps = 0,
           inner: Optimizer = Optimizer(lr=0.1, momentum=0.9, beta2=0.95),
           outer: Optimizer = Optimizer(lr=0.7, momentum=0.9, nesterov=True)):
    sync, upd, out = after(sync_warmup).then(every(period)), opt_update(inner), parts.outer(outer)

    def init(ctx, x):  # the inner optimizer's state (counts as tensors: masked per worker), theta and its optimizer
        return tensorize(upd.init(ctx, x), x), out.init(ctx, x)

    def step(ctx, s, state):
        inner_state, outer_state = state
        s, new = yield from upd.step(ctx, s, inner_state)
        if s.t < sync_warmup:  # synchronous SGD (the gradients were averaged); theta follows x
            x = s.x + s.lr * s.update
            return s._replace(x=x), (new, (x, outer_state[1]))
        theta = outer_state[0]
        pseudo = (yield Rand()) < p
        x = torch.where(pseudo.unsqueeze(-1), s.x - (eta / p) * (s.x - theta), s.x + s.lr / (1 - p) * s.update)
        s, inner_state = s._replace(x=x), select(pseudo, inner_state, new)  # a pseudo-sync keeps its state
        if sync(s.t):
            s, outer_state = yield from out.step(ctx, s, outer_state)
            s = s._replace(round=s.round + 1)
        return s, (inner_state, outer_state)

    return chain(grad(), when(lambda t: t < sync_warmup, average("grad")), part(step, init=init))
