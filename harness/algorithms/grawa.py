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
from harness.ops import Grad, Record

SGD = Optimizer(lr=0.1, momentum=0.9)


def _grawa(ctx, x, layerwise, tau, alpha, p2, smoothing, inner):
    segs = ctx.segments or ((0, x.shape[-1]),)
    sizes = torch.tensor([e - s for s, e in segs])
    opt, lr_at = inner.build(ctx.steps)
    sync, state, center, m = every(tau), opt.init(x), x, 0.0
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if p2:
            x = x - (p2 / tau) * (x - center)
        if sync(t):
            _, gc = yield Grad(x)                                            # one extra minibatch
            nu = torch.stack([torch.linalg.vector_norm(gc[..., s:e], dim=-1) for s, e in segs], -1)
            if not layerwise:
                nu = nu.sum(-1, keepdim=True)
            m = smoothing * m + (1 - smoothing) * nu
            inv = 1 / (m / (1 - smoothing**sync.round(t))).clamp_min(1e-12)  # [L] or [n, L]
            center = yield from weighted_average(x, inv, sizes if layerwise else None)
            x = (1 - alpha) * x + alpha * center
        yield Record(step=t + 1, round=sync.round(t), x=x, loss=loss)
    return x


@register("mgrawa")
def mgrawa(ctx, x, *, tau: Period = 8, alpha: Fraction = 0.5, p2: NonNegative = 0.01, smoothing: Smoothing = 0.43,
           inner: Optimizer = SGD):
    return (yield from _grawa(ctx, x, False, tau, alpha, p2, smoothing, inner))


@register("lgrawa")
def lgrawa(ctx, x, *, tau: Period = 8, alpha: Fraction = 0.5, p2: NonNegative = 0.01, smoothing: Smoothing = 0.43,
           inner: Optimizer = SGD):
    return (yield from _grawa(ctx, x, True, tau, alpha, p2, smoothing, inner))
