"""MGRAWA and LGRAWA, gradient-based weighted averaging (Dimlioglu & Choromanska,
arXiv 2403.04206).

Local optimizer steps; every ``tau`` steps each worker measures its gradient norm on one
extra minibatch, smooths it, and the workers pull towards a centre weighted by inverse
gradient norms (flat regions weigh more):

    nu_i = sum_l ||g_i,l||  (MGRAWA, one per model)   or   nu_i,l = ||g_i,l|| (LGRAWA, per layer)
    m_i <- s m_i + (1 - s) nu_i;   mhat_i = m_i / (1 - s^k)    (k-th measurement; the bias
                                                                correction cancels in w_i)
    w_i = (1 / mhat_i) / sum_j (1 / mhat_j)                     (all-reduce of the scalars)
    x_c = sum_j w_j x_j                                          (all-reduce of the models)
    x_i <- (1 - alpha) x_i + alpha x_c
    x_i <- x_i - (p2 / tau)(x_i - x_c)    after every local step (x_c: the last centre,
                                          initially the starting model; p2 = 0 disables it)

Layers are the task's parameter tensors (``ctx.segments``). Lock-step form: the
authors' code triggers a round after ``n * tau`` local steps counted over all workers, so
fast workers take more local steps; that needs a counter shared across workers, which
the lock-step op language cannot express, so here every worker communicates every
``tau`` of its own steps. Defaults: alpha=0.5, p2=0.01, smoothing 0.43 (the paper's
LGRAWA); tau=8 instead of 32 for the short digits runs; SGD lr 0.1, momentum 0.9.
Two dependent all-reduces per round, so a permanent crash (fault policy ``continue``)
stops the run with a clear message rather than re-weighting among the survivors.
"""
import torch

from harness.algorithms import register
from harness.algorithms.blocks import Fraction, NonNegative, Optimizer, Period, Smoothing, every, weighted_average
from harness.ops import Grad
from harness.parts import chain, grad, local_step, part

SGD = Optimizer(lr=0.1, momentum=0.9)


def _grawa(layerwise, tau, alpha, p2, smoothing, inner):
    sync = every(tau)

    def pull(ctx, s, state):  # state: the last centre x_c (initially the start model), the smoothed norms m
        center, m = state
        x = s.x
        if p2:
            x = x - (p2 / tau) * (x - center)
        if sync(s.t):
            segs = ctx.segments or ((0, x.shape[-1]),)
            _, gc = yield Grad(x)                                            # one extra minibatch
            nu = torch.stack([torch.linalg.vector_norm(gc[..., a:b], dim=-1) for a, b in segs], -1)
            if not layerwise:
                nu = nu.sum(-1, keepdim=True)
            m = smoothing * m + (1 - smoothing) * nu
            inv = 1 / (m / (1 - smoothing**sync.round(s.t))).clamp_min(1e-12)  # [L] or [n, L]
            sizes = torch.tensor([b - a for a, b in segs]) if layerwise else None
            center = yield from weighted_average(x, inv, sizes)
            x = (1 - alpha) * x + alpha * center
            s = s._replace(round=s.round + 1)
        return s._replace(x=x), (center, m)

    return chain(grad(), local_step(inner), part(pull, init=lambda ctx, x: (x, 0.0)))


@register("mgrawa")
def mgrawa(*, tau: Period = 8, alpha: Fraction = 0.5, p2: NonNegative = 0.01, smoothing: Smoothing = 0.43,
           inner: Optimizer = SGD):
    return _grawa(False, tau, alpha, p2, smoothing, inner)


@register("lgrawa")
def lgrawa(*, tau: Period = 8, alpha: Fraction = 0.5, p2: NonNegative = 0.01, smoothing: Smoothing = 0.43,
           inner: Optimizer = SGD):
    return _grawa(True, tau, alpha, p2, smoothing, inner)
