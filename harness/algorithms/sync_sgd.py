"""Synchronous SGD (data-parallel, as DDP): average gradients every step.

    g_i = grad f_i(x; batch_i);   g = (1/n) sum_i g_i   (all-reduce)
    x <- x + opt(g)                                       (identical on every worker)

Cost: one gradient-sized ring all-reduce per step, 2(n-1)/n model-sized vectors per worker.

``backup=b`` (Chen et al., arXiv 1604.00981): average only the first ``n - b`` gradients to
arrive; the step time becomes the (n-b)-th order statistic of the compute times.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Steps, every
from harness.parts import average, chain, grad, local_step, part, when


def _check(p, n_workers):
    if p["backup"] >= n_workers:
        raise ValueError(f"algorithm.backup: must be in 0..n_workers-1 = {n_workers - 1}, got {p['backup']}")


@register("sync_sgd", requires=lambda p: {"quorum"} if p["backup"] else set(), check=_check)
def sync_sgd(*, inner: Optimizer = Optimizer(lr=0.1), backup: Steps = 0):
    def average_grads(ctx, s, state):  # the quorum needs n, known at run time
        return (yield from average("grad", quorum=ctx.n_workers - backup if backup else None).step(ctx, s, state))

    return chain(grad(), when(every(1), part(average_grads)), local_step(inner))
