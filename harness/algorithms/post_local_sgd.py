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
from harness import schedules
from harness.algorithms import register
from harness.ops import AllReduce, Grad, Record, retrying
from harness.schedules import LR
from harness.transforms import sgd


@register("post_local_sgd")
def post_local_sgd(ctx, x, *, switch: int | None = None, period: int = 16, lr: LR = 0.1, momentum: float = 0.9,
                   nesterov: bool = True, weight_decay: float = 1e-4):
    if period < 1:
        raise ValueError(f"algorithm.period: must be >= 1, got {period}")
    if switch is not None and switch < 0:
        raise ValueError(f"algorithm.switch: must be >= 0, got {switch}")
    switch = ctx.steps // 2 if switch is None else switch
    lr_at = schedules.make(lr, ctx.steps)
    opt = sgd(1.0, momentum, nesterov, weight_decay)
    state, rounds = opt.init(x), 0
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        if t < switch:
            g = yield from retrying(AllReduce(g, op="mean"))
            rounds += 1
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if t >= switch and (t + 1 - switch) % period == 0:
            x = yield from retrying(AllReduce(x, op="mean"))
            rounds += 1
        yield Record(step=t + 1, round=rounds, x=x, loss=loss)
    return x
