"""Synchronous SGD (data-parallel, as DDP): average gradients every step.

    g_i = grad f_i(x; batch_i);   g = (1/n) sum_i g_i   (all-reduce)
    x <- x + opt(g)                                       (identical on every worker)

Cost: one gradient-sized ring all-reduce per step, 2(n-1)/n model-sized vectors per worker.

``backup=b`` (Chen et al., arXiv 1604.00981): average only the first ``n - b`` gradients to
arrive; the step time becomes the (n-b)-th order statistic of the compute times.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Steps
from harness.ops import AllReduce, Grad, Record, retrying


def _check(p, n_workers):
    if p["backup"] >= n_workers:
        raise ValueError(f"algorithm.backup: must be in 0..n_workers-1 = {n_workers - 1}, got {p['backup']}")


@register("sync_sgd", requires=lambda p: {"quorum"} if p["backup"] else set(), check=_check)
def sync_sgd(ctx, x, *, inner: Optimizer = Optimizer(lr=0.1), backup: Steps = 0):
    opt, lr_at = inner.build(ctx.steps)
    state = opt.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        g = yield from retrying(AllReduce(g, op="mean", quorum=ctx.n_workers - backup if backup else None))
        g = g.value if backup else g  # a quorum all-reduce also says who arrived (g.arrived)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
    return x
