"""Local SGD (Stich, arXiv 1805.09767): ``period`` local steps, then average the models.

    x_i <- x_i + opt_i(grad f_i(x_i))          every step (momentum buffers stay local)
    x_i <- (1/n) sum_j x_j                     every ``period`` steps (all-reduce)

Cost: one model-sized ring all-reduce per ``period`` steps (~2/period vectors per step).
A worker that crashes for good drops out: the others average among themselves.
"""
from harness.algorithms import register
from harness.ops import AllReduce, Grad, Record, retrying
from harness.transforms import sgd


@register("local_sgd")
def local_sgd(ctx, x, *, period: int = 8, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    if period < 1:
        raise ValueError(f"algorithm.period: must be >= 1, got {period}")
    opt = sgd(lr, momentum, nesterov, weight_decay)
    state = opt.init(x)
    rounds = 0
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = x + u
        if (t + 1) % period == 0:
            x = yield from retrying(AllReduce(x, op="mean"))  # after a crash: among the survivors
            rounds += 1
        yield Record(step=t + 1, round=rounds, x=x, loss=loss)
    return x
