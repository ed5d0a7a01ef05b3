"""Local SGD (Stich, arXiv 1805.09767): ``period`` local steps, then average the models.

    x_i <- x_i + opt_i(grad f_i(x_i))          every step (momentum buffers stay local)
    x_i <- (1/n) sum_j x_j                     every ``period`` steps (all-reduce)

Cost: one model-sized ring all-reduce per ``period`` steps (~2/period vectors per step).
A worker that crashes for good drops out: the others average among themselves.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Period, every, mean_average
from harness.ops import Grad, Record


@register("local_sgd")
def local_sgd(ctx, x, *, period: Period = 8, inner: Optimizer = Optimizer(lr=0.1)):
    opt, lr_at = inner.build(ctx.steps)
    sync, state = every(period), opt.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if sync(t):
            x = yield from mean_average(x)  # after a crash: among the survivors
        yield Record(step=t + 1, round=sync.round(t), x=x, loss=loss)
    return x
