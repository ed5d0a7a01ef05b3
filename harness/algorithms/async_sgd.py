"""Asynchronous SGD with a parameter server (Downpour-style; Dean et al., NeurIPS 2012).

Server (rank 0) holds ``x``; whenever a gradient arrives from worker ``w`` it applies
``x <- x + opt(g_w)`` at once (the gradient may be stale: computed on an older ``x``) and
sends the new ``x`` back to ``w`` only. Workers loop: ``g = grad f_w(x_w)``; send ``g``;
receive ``x_w``. No barrier: a fast worker makes more updates than a slow one.
Cost per worker step: 1 model-sized vector up, 1 down.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Versions
from harness.ops import ANY, SERVER, Grad, Recv, Record, Send


@register("async_sgd", server=True, requires={"p2p"})
def async_sgd(ctx, x, *, inner: Optimizer = Optimizer(lr=0.05)):
    if ctx.role == "server":
        opt, lr_at = inner.build(ctx.steps)
        state, versions = opt.init(x), Versions()
        for k in range(ctx.n_workers * ctx.steps):  # every worker sends `steps` gradients
            msg = yield Recv(ANY)
            stale = versions.staleness(msg.src)
            u, state = opt.update(msg.x, state, x)
            x = x + lr_at(k // ctx.n_workers) * u  # a schedule advances once per n updates
            versions.applied()
            yield Send(msg.src, x)
            versions.sent(msg.src)
            yield Record(step=k // ctx.n_workers, x=x, staleness=stale, src=msg.src)
            if (k + 1) % ctx.n_workers == 0:  # one "step" = n updates, to align with workers
                yield Record(step=(k + 1) // ctx.n_workers, round=k + 1, x=x)
        return x
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        yield Send(SERVER, g)
        x = (yield Recv(SERVER)).x
        yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
    return x
