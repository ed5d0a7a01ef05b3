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
"""
import torch

from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Period, Steps, Versions
from harness.ops import ANY, SERVER, Grad, Rate, Record, Recv, Send


@register("async_local_sgd", server=True, requires={"p2p"})
def async_local_sgd(ctx, x, *, period: Period = 16, inner: Optimizer = Optimizer(lr=0.1),
                    outer_lr: NonNegative = 0.7, outer_momentum: NonNegative = 0.9, delayed: bool = True,
                    buffer: Steps = 0, dynamic: bool = True):
    n, rounds = ctx.n_workers, max(1, ctx.steps // period)
    N = buffer or n  # Delayed Nesterov buffer size (default: the number of workers)
    if ctx.role == "server":
        m, acc, rates = torch.zeros_like(x), torch.zeros_like(x), torch.zeros(n + 1, dtype=torch.float64)
        versions = Versions()
        for k in range(1, n * rounds + 1):
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
        return x
    opt, lr_at = inner.build(ctx.steps)
    state, steps, h = opt.init(x), 0, period
    for r in range(rounds):
        theta = x
        for _ in range(h):
            loss, g = yield Grad(x)
            u, state = opt.update(g, state, x)
            x, steps = x + lr_at(steps) * u, steps + 1
        yield Send(SERVER, theta - x)
        yield Send(SERVER, (yield Rate()))
        x = (yield Recv(SERVER)).x
        h = int((yield Recv(SERVER)).x.item())
        yield Record(step=(r + 1) * period, round=r + 1, x=x, loss=loss)
    return x
