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
from harness.algorithms.blocks import Optimizer, Period, Steps, after, every, mean_average
from harness.ops import Grad, Record


@register("post_local_sgd")
def post_local_sgd(ctx, x, *, switch: Steps | None = None, period: Period = 16,
                   inner: Optimizer = Optimizer(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)):
    switch = ctx.steps // 2 if switch is None else switch
    opt, lr_at = inner.build(ctx.steps)
    sync, state = after(switch).then(every(period)), opt.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        if t < switch:  # synchronous SGD: average the gradients
            g = yield from mean_average(g)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if sync(t):  # Local SGD: average the models
            x = yield from mean_average(x)
        yield Record(step=t + 1, round=min(t + 1, switch) + sync.round(t), x=x, loss=loss)
    return x
