"""Asynchronous EASGD (Zhang, Choromanska & LeCun, arXiv 1412.6651, Algorithm 1).

Worker ``i`` takes local momentum-SGD steps; every ``tau`` of its own steps it sends ``x_i``
to the server, which answers with the elastic difference computed against the center at
that moment and moves the center by the same amount:

    e = alpha (x_i - x_c);    x_c <- x_c + e   (server, on arrival);    x_i <- x_i - e

``alpha = beta / n``. No barrier: fast workers exchange more often. Cost per exchange:
1 model-sized vector up, 1 down. Defaults: tau=4, lr 0.1, momentum 0.9 (the baseline settings
of the authors' lab) and the paper's moving rate beta=0.9 (its Section 5; the lab's baseline
beta=0.1 makes the pull weak at n=16; set it in the config to compare).
"""
from harness.algorithms import register
from harness.algorithms.blocks import Fraction, Optimizer, Period, every, Versions
from harness.ops import ANY, SERVER, Grad, Record, Recv, Send


@register("async_easgd", server=True, requires={"p2p"})
def async_easgd(ctx, x, *, tau: Period = 4, beta: Fraction = 0.9, inner: Optimizer = Optimizer(lr=0.1, momentum=0.9)):
    alpha = beta / ctx.n_workers
    exchanges = ctx.steps // tau
    if ctx.role == "server":
        versions = Versions()
        for k in range(ctx.n_workers * exchanges):
            msg = yield Recv(ANY)
            stale = versions.staleness(msg.src)
            e = alpha * (msg.x - x)
            x = x + e
            versions.applied()
            yield Send(msg.src, e)
            versions.sent(msg.src)
            yield Record(step=k // ctx.n_workers * tau, x=x, staleness=stale, src=msg.src)
            if (k + 1) % ctx.n_workers == 0:  # one "step" of the center = n exchanges, tau steps each
                yield Record(step=(k + 1) // ctx.n_workers * tau, round=k + 1, x=x)
        return x
    opt, lr_at = inner.build(ctx.steps)
    sync, state = every(tau), opt.init(x)
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        u, state = opt.update(g, state, x)
        x = x + lr_at(t) * u
        if sync(t):  # `exchanges` of them: t < steps
            yield Send(SERVER, x)
            x = x - (yield Recv(SERVER)).x
        yield Record(step=t + 1, round=sync.round(t), x=x, loss=loss)
    return x
