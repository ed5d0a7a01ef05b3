"""Asynchronous Local-SGD (Liu et al., arXiv 2401.09135) with Delayed Nesterov and
dynamic local updates. A RECONSTRUCTION from two re-implementations
citing the paper's Algorithm 3; constants are tunable, not the paper's verified code.

Server holds ``theta`` and the outer momentum ``m``. Worker ``w`` pulls ``theta``, takes
``H_w`` inner steps (its inner optimizer state persists), pushes ``Delta_w = theta_pulled -
x_w`` and its measured speed ``v_w``. On each arrival ``k`` (staleness is implicit: the
server applies Delta whenever it arrives):

    plain part, every arrival:          theta <- theta - outer_lr * Delta / N
    Delayed Nesterov, every N arrivals: b = sum of the last N Deltas;  m <- beta m + b / N
                                        theta <- theta - outer_lr * beta * m

so N arrivals together make one Nesterov step with gradient ``b / N`` (``delayed: false``
applies ``m <- beta m + Delta; theta -= outer_lr (Delta + beta m)`` on every arrival: the
naive asynchronous Nesterov). Dynamic local updates: ``H_w = max(1, floor(v_w / max_u v_u
* H))``, so slow workers take fewer steps per round. Each worker runs ``steps // H``
rounds. Cost per round: 1 vector up, 1 down (+ a few scalars). The inner optimizer is the
``inner`` spec (SGD without momentum by default; ``inner: adamw`` with PyTorch's betas).

Written as two parts (:class:`harness.parts.roles`): the server's state is the outer momentum,
the Delayed-Nesterov buffer, the workers' rates and the model versions; a worker's its inner
optimizer state, its number of local steps and its step count.
"""
import torch

from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Period, Steps, Versions
from harness.ops import ANY, SERVER, Grad, Rate, Record, Recv, Send
from harness.parts import opt_update, part, roles


@register("async_local_sgd", server=True, requires={"p2p"})
def async_local_sgd(*, period: Period = 16, inner: Optimizer = Optimizer(lr=0.1),
                    outer_lr: NonNegative = 0.7, outer_momentum: NonNegative = 0.9, delayed: bool = True,
                    buffer: Steps = 0, dynamic: bool = True):
    upd = opt_update(inner)

    def serve(ctx, s, state):  # one arrival (k = s.t + 1); s.x is the global model theta
        m, acc, rates, versions = state
        n, k, x = ctx.n_workers, s.t + 1, s.x
        N = buffer or n  # Delayed Nesterov buffer size (default: the number of workers)
        msg = yield Recv(ANY)
        rates[msg.src] = (yield Recv(msg.src)).x
        stale = versions.staleness(msg.src)
        delta = msg.x
        if delayed:
            x, acc = x - outer_lr * delta / N, acc + delta
            if k % N == 0:
                m = outer_momentum * m + acc / N
                x, acc = x - outer_lr * outer_momentum * m, torch.zeros_like(acc)
        else:
            m = outer_momentum * m + delta
            x = x - outer_lr * (delta + outer_momentum * m)
        h = max(1, int(rates[msg.src] / rates.max() * period)) if dynamic and rates.max() > 0 else period
        versions.applied()
        yield Send(msg.src, x)
        yield Send(msg.src, torch.tensor(float(h), dtype=torch.float64))
        versions.sent(msg.src)
        yield Record(step=(k - 1) // n * period, x=x, staleness=stale, src=msg.src)
        if k % n == 0:
            yield Record(step=k // n * period, round=k, x=x)
        return s._replace(x=x), (m, acc, rates, versions)

    def serve_init(ctx, x):
        return torch.zeros_like(x), torch.zeros_like(x), torch.zeros(ctx.n_workers + 1, dtype=torch.float64), Versions()

    def local_round(ctx, s, state):  # round r = s.t: h inner steps from theta, push Delta and speed, pull
        opt_state, h, steps = state
        r, theta, x = s.t, s.x, s.x
        for _ in range(h):
            loss, g = yield Grad(x)
            s, opt_state = yield from upd.step(ctx, s._replace(t=steps, x=x, grad=g), opt_state)
            x, steps = x + s.lr * s.update, steps + 1
        yield Send(SERVER, theta - x)
        yield Send(SERVER, (yield Rate()))
        x = (yield Recv(SERVER)).x
        h = int((yield Recv(SERVER)).x.item())
        yield Record(step=(r + 1) * period, round=r + 1, x=x, loss=loss)
        return s._replace(t=r, x=x), (opt_state, h, steps)

    return roles(server=part(serve, init=serve_init),
                 worker=part(local_round, init=lambda ctx, x: (upd.init(ctx, x), period, 0)),
                 arrivals=lambda ctx: ctx.n_workers * max(1, ctx.steps // period),
                 steps=lambda ctx: max(1, ctx.steps // period), worker_records=False)
