"""FedBuff, buffered asynchronous aggregation (Nguyen et al., arXiv 2106.06639, Algorithm 1).

The skeleton of :mod:`harness.algorithms.fedasync` (server roles; ``n_workers`` slots train
clients concurrently; a free slot gets the current model at once), with FedBuff's server: each
arriving client update ``Delta_i = x_tau - x_i`` (the model it pulled minus its trained model) is
added to a buffer, weighted by its staleness ``tau_i`` (server steps since its pull) when
``staleness_weighting`` is on (the paper's ``s(tau) = 1 / sqrt(1 + tau)``); after ``K`` updates

    x_{t+1} = x_t - server_lr * (1/K) sum_{i in buffer} s(tau_i) Delta_i

and the buffer empties. A run makes ``steps`` server steps. With ``K = 1``, no weighting and
``server_lr = 1``, one slot gives FedAsync with mixing 1 (``x_{t+1} = x_i``; a test). Cost per
assignment as FedAsync's: the model and 3 int64 down, ``Delta`` up.
"""

import math

import torch

from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Period, Positive, Steps
from harness.algorithms.fedasync import MODEL, Scheduler, check_local, client
from harness.ops import ANY, Record, Recv


@register("fedbuff", server=True, requires={"p2p"}, check=check_local)
def fedbuff(ctx, x, *, buffer: Period = 10, server_lr: Positive = 1.0, staleness_weighting: bool = True,
            mu: NonNegative = 0.0, local_epochs: Steps = 1, local_steps: Steps = 0,
            inner: Optimizer = Optimizer(lr=0.05)):
    if ctx.role != "server":
        return (yield from client(ctx, x, inner=inner, epochs=local_epochs, steps=local_steps, mu=mu, upload="delta"))
    srv = Scheduler(ctx)
    for r in srv.ranks:
        yield from srv.assign(r, x)
    acc, k, t = torch.zeros_like(x), 0, 0
    while t < ctx.steps:
        msg = yield Recv(ANY, tag=MODEL)
        _, stale = srv.arrived(msg)
        acc = acc + (1.0 / math.sqrt(1.0 + stale) if staleness_weighting else 1.0) * msg.x
        k += 1
        yield Record(step=t + 1, x=x, staleness=stale, src=msg.src)
        if k == buffer:
            x, acc, k, t = x - server_lr * (acc / buffer), torch.zeros_like(x), 0, t + 1
            srv.versions.applied()
            yield Record(step=t, round=t, x=x)
        if t < ctx.steps:
            yield from srv.assign(msg.src, x)
    yield from srv.finish()
    return x
