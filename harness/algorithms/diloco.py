"""DiLoCo, distributed low-communication training (Douillard et al., arXiv 2311.08105).

Every round, from the shared global model ``theta``, each worker takes ``period`` (H)
inner optimizer steps (its inner state stays local and persists across rounds), then

    Delta = (1/n) sum_i (theta - x_i)             pseudo-gradient (all-reduce)
    theta <- theta + outer(Delta)                 outer SGD, Nesterov momentum by default
    x_i <- theta

``theta`` is kept identically on every worker (so is the outer momentum). With
``outer_lr = 1, outer_momentum = 0`` the round is plain model averaging: DiLoCo becomes
Local SGD with the inner optimizer. Cost: one model all-reduce per H steps.

Paper defaults: inner AdamW lr 4e-4, weight decay 0.1, betas (0.9, 0.95); outer lr 0.7,
momentum 0.9 Nesterov; H = 500. Here H defaults to 20 and the inner lr to 3e-3 so that a
few-hundred-step digits run has rounds to average and trains. ``inner: sgd`` swaps the
inner optimizer for SGD (``momentum``, ``nesterov``). The outer optimizer is the ``outer``
spec (keys ``outer``, ``outer_lr``, ``outer_momentum``, ``outer_nesterov``, ...); a schedule
for ``outer_lr`` is read at the local step of each outer step.
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
from harness import parts
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Period, every
from harness.parts import chain, grad, local_step, when


@register("diloco")
def diloco(*, period: Period = 20,
           inner: Optimizer = Optimizer(name="adamw", lr=3e-3, weight_decay=0.1, beta1=0.9, beta2=0.95),
           outer: Optimizer = Optimizer(lr=0.7, momentum=0.9, nesterov=True)):
    return chain(grad(), local_step(inner), when(every(period), parts.outer(outer)))
