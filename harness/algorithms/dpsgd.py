"""D-PSGD, decentralized parallel SGD (Lian et al., arXiv 1705.09056).

    x_i <- sum_j W(t)[i, j] x_j + opt_i(grad f_i(x_i))

The gradient is taken at the worker's own model and the gossip uses the models from
before the step (so computation and mixing could overlap). ``W(t)`` comes from the run's
topology. Cost per step: one model-sized message per graph edge and direction; a worker
waits only for its neighbours.
"""
from harness.algorithms import register
from harness.ops import Gossip, Grad, Record
from harness.transforms import sgd


@register("dpsgd")
def dpsgd(ctx, x, *, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    opt = sgd(lr, momentum, nesterov, weight_decay)
    state = opt.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = (yield Gossip(x, step=t)) + u
        yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
    return x
