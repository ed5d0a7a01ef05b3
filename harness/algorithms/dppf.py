"""DPPF, distributed pull-push force (Dimlioglu & Choromanska, arXiv 2507.20424) --
a RECONSTRUCTION from the paper's abstract; the paper's Algorithm 1 could not be read.

The abstract describes local gradient steps with a consensus *pull* towards the worker
average and a *push* (from a relaxed "Inverse Mean Valley" sharpness regulariser) that
keeps workers apart, the final valley width being set by the two strengths. Implemented
form (reconstructed):

    x_i <- x_i + opt_i(grad f_i(x_i))                              every step
    xbar = (1/n) sum_j x_j                                         (all-reduce, every tau steps)
    d_i = x_i - xbar
    x_i <- x_i - alpha d_i + lam d_i / ||d_i||                     (no push where d_i = 0)

Without gradients the distance ``||x_i - xbar||`` has the fixed point ``lam / alpha``
(r <- (1 - alpha) r + lam); the results table reports it as ``valley_width``
(``mean_i ||x_i - xbar||``, consensus rows). Each worker's own distance before the pull
is the ``dist`` metric. Cost: one model all-reduce per round.

Defaults (not from the paper): tau=4, alpha=0.5, lam=0.05, SGD lr 0.1, momentum 0.9.
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
import torch

from harness.algorithms import register
from harness.algorithms.blocks import Fraction, NonNegative, Optimizer, Period, every, mean_average
from harness.parts import chain, grad, local_step, part, when


@register("dppf")
def dppf(*, tau: Period = 4, alpha: Fraction = 0.5, lam: NonNegative = 0.05,
         inner: Optimizer = Optimizer(lr=0.1, momentum=0.9)):
    def pull_push(ctx, s, state):
        x = s.x
        d = x - (yield from mean_average(x))
        r = torch.linalg.vector_norm(d, dim=-1, keepdim=True)
        push = torch.where(r > 0, d / r.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(d))
        return s._replace(x=x - alpha * d + lam * push, metrics={"dist": r.squeeze(-1)}), state

    return chain(grad(), local_step(inner), when(every(tau), part(pull_push)))
