"""Local SGD (Stich, arXiv 1805.09767): ``period`` local steps, then average the models.

    x_i <- x_i + opt_i(grad f_i(x_i))          every step (momentum buffers stay local)
    x_i <- (1/n) sum_j x_j                     every ``period`` steps (all-reduce)

Cost: one model-sized ring all-reduce per ``period`` steps (~2/period vectors per step).
A worker that crashes for good drops out: the others average among themselves.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Period, every
from harness.parts import average, chain, grad, local_step, when


@register("local_sgd")
def local_sgd(*, period: Period = 8, inner: Optimizer = Optimizer(lr=0.1)):
    return chain(grad(), local_step(inner), when(every(period), average()))
