"""Post-local SGD (Lin et al., arXiv 1808.07217): synchronous SGD, then Local SGD.

    t <  switch:  g = (1/n) sum_i g_i (all-reduce);  x <- x + opt(g)      (every step)
    t >= switch:  x_i <- x_i + opt_i(grad f_i(x_i));  average x every ``period`` steps

The optimizer state is identical on every worker during the first phase and becomes
local after the switch. The authors switch at the first learning-rate decay; here
``switch`` is a step (default: half of the run). Cost: one gradient all-reduce per step
before the switch, one model all-reduce per ``period`` steps after.

Defaults from the authors' code: H=16, Nesterov momentum 0.9, weight decay 1e-4, with
the digits task's lr 0.1.
A worker that crashes for good (fault policy ``continue``) drops out of the averages.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Period, Steps, after, every
from harness.parts import average, chain, grad, local_step, when


@register("post_local_sgd")
def post_local_sgd(*, switch: Steps | None = None, period: Period = 16,
                   inner: Optimizer = Optimizer(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)):
    def at(ctx):
        return ctx.steps // 2 if switch is None else switch

    return chain(grad(),
                 when(lambda ctx, t: t < at(ctx), average("grad")),  # synchronous SGD: average the gradients
                 local_step(inner),
                 when(lambda ctx, t: after(at(ctx)).then(every(period))(t), average()))  # Local SGD: the models
