"""FedAsync, asynchronous federated optimization (Xie, Koyejo, Gupta, arXiv 1903.03934, Algorithm 1),
and the skeleton the asynchronous federated methods share (FedBuff, FedFix: server roles, issue [22]).

Roles: rank 0 is the server; the ``n_workers`` slots are the clients training *at the same time*
(the concurrency), out of ``N = n_clients``. The server's scheduler hands a free slot the current
model ``x_t``, a client ``c`` drawn uniformly (server ``Rand``) among the clients no slot is
playing, the assignment's number ``j`` and the version ``tau = t``; the slot plays ``c`` (its data
and, on SimPy, its speed), trains locally from ``x_t`` and sends back its result. FedAsync's
updater, on each arrival (the ``t``-th update):

    alpha_t = alpha * s(t - tau)
    x_t     = (1 - alpha_t) x_{t-1} + alpha_t x_new

with the staleness functions of the paper (section 5.2): ``constant`` s = 1; ``polynomial``
s_a(t - tau) = (t - tau + 1)^(-a); ``hinge`` s_{a,b}(t - tau) = 1 if t - tau <= b, else
1 / (a (t - tau - b) + 1). As in Algorithm 1, a model taken at version ``tau`` and applied as the
``t``-th update has ``t - tau >= 1``; the table's ``staleness`` column counts the updates applied
in between (``t - tau - 1``, 0 = fresh), as for every server method. Local training: ``local_epochs``
passes over the client's shard (without replacement, ragged last batch) or ``local_steps``
minibatches, from a fresh ``inner`` optimizer state, with FedAsync+Prox's term ``mu (x - x_t)``
added to every gradient (``mu`` is the paper's ``rho``; 0: plain FedAsync). A run makes
``steps`` server updates; then the server collects the updates still under way (discarded) and
stops the slots. Cost per assignment: the model and 3 int64 (client, j, tau) down, the model up;
one empty stop message per slot at the end.
"""

from typing import Literal

import torch

from harness.algorithms import register
from harness.algorithms.blocks import Fraction, NonNegative, Optimizer, Steps, Versions
from harness.ops import ANY, SERVER, Grad, Play, Rand, Record, Recv, Send

MODEL, META, STOP = 0, 1, 2  # message tags


def staleness_factor(kind: str, lag: int, a: float, b: float) -> float:
    """FedAsync's ``s(t - tau)`` (Xie et al. section 5.2) for ``lag = t - tau >= 1``."""
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return float(lag + 1) ** (-a)
    if kind == "hinge":
        return 1.0 if lag <= b else 1.0 / (a * (lag - b) + 1.0)
    raise ValueError(f"algorithm.staleness: unknown staleness function {kind!r}; choose constant, polynomial or hinge")


class Scheduler:
    """The server's side of the skeleton: which slot plays which client, the assignment count
    ``j``, the model versions (staleness rows) and the end of the run."""

    def __init__(self, ctx, versions: Versions | None = None):
        self.ctx, self.busy, self.j = ctx, {}, 0  # busy: slot rank -> client
        self.versions = versions or Versions()
        self.ranks = range(SERVER + 1, ctx.n_workers + 1)

    def assign(self, r: int, x: torch.Tensor):
        """Hand slot ``r`` the model ``x`` and a client no slot is playing (uniform, server Rand)."""
        playing = set(self.busy.values())
        idle = [c for c in range(self.ctx.n_clients) if c not in playing]
        u = float((yield Rand()))
        c = idle[min(int(u * len(idle)), len(idle) - 1)]
        self.busy[r] = c
        yield Send(r, x, tag=MODEL)
        yield Send(r, torch.tensor([c, self.j, self.versions.version], dtype=torch.int64), tag=META)
        self.versions.sent(r)
        self.j += 1

    def arrived(self, msg) -> tuple[int, int]:
        """``(client, staleness)`` of the update in ``msg``; its slot is free again."""
        return self.busy.pop(msg.src), self.versions.staleness(msg.src)

    def finish(self):
        """Collect the updates still under way (the clients were working: their bytes count),
        then stop every slot with an empty message."""
        for r in sorted(self.busy):
            yield Recv(r, tag=MODEL)
        self.busy = {}
        for r in self.ranks:
            yield Send(r, torch.zeros(0), tag=STOP)


def client(ctx, x, *, inner: Optimizer, epochs: int, steps: int, mu: float, upload: str):
    """A slot's loop: take (model, client, j, tau) or stop; play the client; train; send back the
    new model (``upload="model"``) or the update ``x_t - x`` (``"delta"``)."""
    opt, lr_at = inner.build(ctx.steps)
    while True:
        m = yield Recv(SERVER)
        if m.tag == STOP:
            return x
        c, j, tau = (int(v) for v in (yield Recv(SERVER, tag=META)).x.tolist())
        yield Play(c)
        xg = x = m.x
        st, loss, lr = opt.init(x), None, lr_at(min(tau, ctx.steps - 1))
        if steps:
            plan = [(None, None)] * steps
        else:
            nb = -(-ctx.part_sizes[c] // ctx.batch_size)
            plan = [(j * epochs + e, k) for e in range(epochs) for k in range(nb)]
        for epoch, k in plan:
            loss, g = yield Grad(x, epoch=epoch, nth=k)
            if mu:
                g = g + mu * (x - xg)
            u, st = opt.update(g, st, x)
            x = x + lr * u
        yield Send(SERVER, x if upload == "model" else xg - x, tag=MODEL)
        yield Record(step=tau, round=j + 1, x=x, loss=loss, metrics={"client": float(c)})


def check_local(p, n_workers):
    if bool(p["local_epochs"]) == bool(p["local_steps"]):
        raise ValueError("algorithm.local_epochs: give local_epochs or local_steps (set the other to 0)")


@register("fedasync", server=True, requires={"p2p"}, check=check_local)
def fedasync(ctx, x, *, alpha: Fraction = 0.6, staleness: Literal["constant", "polynomial", "hinge"] = "polynomial",
             a: NonNegative = 0.5, b: NonNegative = 4.0, mu: NonNegative = 0.0, local_epochs: Steps = 1,
             local_steps: Steps = 0, inner: Optimizer = Optimizer(lr=0.05)):
    if ctx.role != "server":
        return (yield from client(ctx, x, inner=inner, epochs=local_epochs, steps=local_steps, mu=mu, upload="model"))
    srv = Scheduler(ctx)
    for r in srv.ranks:
        yield from srv.assign(r, x)
    for t in range(1, ctx.steps + 1):
        msg = yield Recv(ANY, tag=MODEL)
        _, stale = srv.arrived(msg)
        at = alpha * staleness_factor(staleness, stale + 1, a, b)
        x = (1 - at) * x + at * msg.x
        srv.versions.applied()
        yield Record(step=t, x=x, staleness=stale, src=msg.src)
        yield Record(step=t, round=t, x=x)
        if t < ctx.steps:
            yield from srv.assign(msg.src, x)
    yield from srv.finish()
    return x
