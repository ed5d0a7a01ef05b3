"""D-PSGD, decentralized parallel SGD (Lian et al., arXiv 1705.09056).

    x_i <- sum_j W(t)[i, j] x_j + opt_i(grad f_i(x_i))

The gradient is taken at the worker's own model and the gossip uses the models from
before the step (so computation and mixing could overlap). ``W(t)`` comes from the run's
topology. Cost per step: one model-sized message per graph edge and direction; a worker
waits only for its neighbours.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, gossip_average
from harness.ops import Grad, Record


@register("dpsgd", requires={"gossip"})
def dpsgd(ctx, x, *, inner: Optimizer = Optimizer(lr=0.1)):
    opt, lr_at = inner.build(ctx.steps)
    state = opt.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = (yield from gossip_average(x, step=t)) + lr_at(t) * u
        yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
    return x
