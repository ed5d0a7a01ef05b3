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
import functools

import torch

from harness import schedules
from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Period, mean_average, qsr_rule
from harness.parts import chain, grad, local_step, part


@functools.lru_cache(maxsize=16)
def _rule(h_base, alpha, inner, steps):
    return qsr_rule(h_base, alpha, inner.build(steps).lr, steps)


@register("qsr")
def qsr(*, h_base: Period = 4, alpha: NonNegative = 0.1,
        inner: Optimizer = Optimizer(lr=schedules.spec("cosine", lr=0.1), momentum=0.9)):
    def sync(ctx, s, state):
        rule = _rule(h_base, alpha, inner, ctx.steps)
        if rule(s.t):
            s = s._replace(x=(yield from mean_average(s.x)), round=s.round + 1)
        return s._replace(metrics={"H": torch.full_like(s.loss, rule.period(s.t))}), state

    return chain(grad(), local_step(inner), part(sync))
