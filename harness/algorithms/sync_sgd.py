"""Synchronous SGD (data-parallel, as DDP): average gradients every step.

    g_i = grad f_i(x; batch_i);   g = (1/n) sum_i g_i   (all-reduce)
    x <- x + opt(g)                                       (identical on every worker)

Cost: one gradient-sized ring all-reduce per step, 2(n-1)/n model-sized vectors per worker.

``backup=b`` (Chen et al., arXiv 1604.00981): average only the first ``n - b`` gradients to
arrive; the step time becomes the (n-b)-th order statistic of the compute times.
"""
from harness.algorithms import register
from harness.ops import AllReduce, Grad, Record, retrying
from harness.transforms import sgd


@register("sync_sgd")
def sync_sgd(ctx, x, *, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
             backup: int = 0):
    if not 0 <= backup < ctx.n_workers:
        raise ValueError(f"algorithm.backup: must be in 0..n_workers-1 = {ctx.n_workers - 1}, got {backup}")
    opt = sgd(lr, momentum, nesterov, weight_decay)
    state = opt.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        g = yield from retrying(AllReduce(g, op="mean", quorum=ctx.n_workers - backup if backup else None))
        u, state = opt.update(g, state, x)
        x = x + u
        yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
    return x
