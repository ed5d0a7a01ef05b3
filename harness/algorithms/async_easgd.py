"""Asynchronous EASGD (Zhang, Choromanska & LeCun, arXiv 1412.6651, Algorithm 1).

Worker ``i`` takes local momentum-SGD steps; every ``tau`` of its own steps it sends ``x_i``
to the server, which answers with the elastic difference computed against the center at
that moment and moves the center by the same amount:

    e = alpha (x_i - x_c);    x_c <- x_c + e   (server, on arrival);    x_i <- x_i - e

``alpha = beta / n``. No barrier: fast workers exchange more often. Cost per exchange:
1 model-sized vector up, 1 down. Defaults: tau=4, lr 0.1, momentum 0.9 (the baseline settings
of the authors' lab) and the paper's moving rate beta=0.9 (its Section 5; the lab's baseline
beta=0.1 makes the pull weak at n=16; set it in the config to compare).

Written as two parts (:class:`harness.parts.roles`): the server's state is the model versions
(the centre is its carry), the worker's its optimizer state.
"""
from harness.algorithms import register
from harness.algorithms.blocks import Fraction, Optimizer, Period, Versions, every
from harness.ops import ANY, SERVER, Record, Recv, Send
from harness.parts import chain, grad, local_step, part, roles, when


def _exchange(ctx, s, state):
    yield Send(SERVER, s.x)
    return s._replace(x=s.x - (yield Recv(SERVER)).x), state


@register("async_easgd", server=True, requires={"p2p"})
def async_easgd(*, tau: Period = 4, beta: Fraction = 0.9, inner: Optimizer = Optimizer(lr=0.1, momentum=0.9)):
    def serve(ctx, s, versions):  # one exchange; s.t counts them, s.x is the centre
        n, k, x = ctx.n_workers, s.t, s.x
        msg = yield Recv(ANY)
        stale = versions.staleness(msg.src)
        e = beta / n * (msg.x - x)  # alpha = beta / n
        x = x + e
        versions.applied()
        yield Send(msg.src, e)
        versions.sent(msg.src)
        yield Record(step=k // n * tau, x=x, staleness=stale, src=msg.src)
        if (k + 1) % n == 0:  # one "step" of the center = n exchanges, tau steps each
            yield Record(step=(k + 1) // n * tau, round=k + 1, x=x)
        return s._replace(x=x), versions

    return roles(server=part(serve, init=lambda ctx, x: Versions()),
                 worker=chain(grad(), local_step(inner), when(every(tau), part(_exchange))),  # `exchanges` of them
                 arrivals=lambda ctx: ctx.n_workers * (ctx.steps // tau))
