"""Asynchronous SGD with a parameter server (Downpour-style; Dean et al., NeurIPS 2012).

Server (rank 0) holds ``x``; whenever a gradient arrives from worker ``w`` it applies
``x <- x + opt(g_w)`` at once (the gradient may be stale: computed on an older ``x``) and
sends the new ``x`` back to ``w`` only. Workers loop: ``g = grad f_w(x_w)``; send ``g``;
receive ``x_w``. No barrier: a fast worker makes more updates than a slow one.
Cost per worker step: 1 model-sized vector up, 1 down.

Written as two parts (:class:`harness.parts.roles`): the server's state is its optimizer state
and model versions, the worker's nothing but its model.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Optimizer, Versions, every
from harness.ops import ANY, SERVER, Recv, Record, Send
from harness.parts import chain, grad, opt_update, part, roles, when


def _push_pull(ctx, s, state):
    yield Send(SERVER, s.grad)
    return s._replace(x=(yield Recv(SERVER)).x), state


@register("async_sgd", server=True, requires={"p2p"})
def async_sgd(*, inner: Optimizer = Optimizer(lr=0.05)):
    upd = opt_update(inner)

    def serve(ctx, s, state):  # one arrival; s.t counts them, s.x is the server's model
        opt_state, versions = state
        n, k = ctx.n_workers, s.t
        msg = yield Recv(ANY)
        stale = versions.staleness(msg.src)
        s, opt_state = yield from upd.step(ctx, s._replace(t=k // n, grad=msg.x), opt_state)  # schedule: per n
        x = s.x + s.lr * s.update
        versions.applied()
        yield Send(msg.src, x)
        versions.sent(msg.src)
        yield Record(step=k // n, x=x, staleness=stale, src=msg.src)
        if (k + 1) % n == 0:  # one "step" = n updates, to align with workers
            yield Record(step=(k + 1) // n, round=k + 1, x=x)
        return s._replace(t=k, x=x), (opt_state, versions)

    return roles(server=part(serve, init=lambda ctx, x: (upd.init(ctx, x), Versions())),
                 worker=chain(grad(), when(every(1), part(_push_pull))),
                 arrivals=lambda ctx: ctx.n_workers * ctx.steps)  # every worker sends `steps` gradients
