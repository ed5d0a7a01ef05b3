"""D-PSGD, decentralized parallel SGD (Lian et al., arXiv 1705.09056).

    x_i <- sum_j W(t)[i, j] x_j + opt_i(grad f_i(x_i))

The gradient is taken at the worker's own model and the gossip uses the models from
before the step (so computation and mixing could overlap). ``W(t)`` comes from the run's
topology. Cost per step: one model-sized message per graph edge and direction; a worker
waits only for its neighbours.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, every
from harness.parts import apply, chain, gossip, grad, opt_update, when


@register("dpsgd", requires={"gossip"})
def dpsgd(*, inner: Optimizer = Optimizer(lr=0.1)):
    # the update is computed at x_i, then applied to the mixed model
    return chain(grad(), opt_update(inner), when(every(1), gossip), apply)
