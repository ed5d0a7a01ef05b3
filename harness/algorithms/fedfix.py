"""FedFix, fixed-duration rounds (Fraboni, Vidal, Kameni, Lorenzi, "A General Theory for Federated
Optimization with Asynchronous and Heterogeneous Clients Updates", arXiv 2206.10189). A
RECONSTRUCTION from the paper's description (section on FedFix), not its code.

The skeleton of :mod:`harness.algorithms.fedasync` (server roles; ``n_workers`` slots train clients
concurrently). Every round lasts ``period_s`` seconds (simulated on SimPy, wall on the real
backends): round ``t`` ends at ``t * period_s`` since the start (``Recv(deadline=)``, so rounds do
not drift). The server aggregates the updates ``Delta_i = x_{rho_i} - x_i`` that arrived during the
round, each computed from the model of the round its client started in (``rho_i``; the slow
clients' are stale, and they are never cut short):

    x_{t+1} = x_t - server_lr * sum_{i in A_t} w_i Delta_i,   w_i = n_i / sum_{j in A_t} n_j

(``weighted``: by the clients' samples, as FedAvg; else 1 / |A_t|; nothing arrived: ``x`` stays).
Then the slots that delivered take the new model and new clients; the others keep computing.
With a period longer than every client's time it is FedAvg with slots refilled each round; with
a very short one it approaches asynchronous FedAvg. A run is ``steps`` rounds. Needs the
``timeout`` feature (a receive with a deadline): SimPy, MPI, loopback.
"""

import torch

from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Positive, Steps
from harness.algorithms.fedasync import MODEL, Scheduler, check_local, client
from harness.ops import ANY, Record, Recv


@register("fedfix", server=True, requires={"p2p", "timeout"}, check=check_local)
def fedfix(ctx, x, *, period_s: Positive = 1.0, server_lr: Positive = 1.0, weighted: bool = True,
           mu: NonNegative = 0.0, local_epochs: Steps = 1, local_steps: Steps = 0,
           inner: Optimizer = Optimizer(lr=0.05)):
    if ctx.role != "server":
        return (yield from client(ctx, x, inner=inner, epochs=local_epochs, steps=local_steps, mu=mu, upload="delta"))
    srv = Scheduler(ctx)
    free = list(srv.ranks)
    for t in range(1, ctx.steps + 1):
        for r in free:
            yield from srv.assign(r, x)
        got = []  # (src, client, staleness, Delta) in arrival order
        while (msg := (yield Recv(ANY, tag=MODEL, deadline=t * period_s))) is not None:
            c, stale = srv.arrived(msg)
            got.append((msg.src, c, stale, msg.x))
        if got:
            total = float(sum(ctx.part_sizes[c] for _, c, _, _ in got))
            w = [ctx.part_sizes[c] / total if weighted else 1.0 / len(got) for _, c, _, _ in got]
            step = torch.zeros_like(x)
            for wi, (_, _, _, d) in zip(w, got):
                step = step + wi * d
            x = x - server_lr * step
            srv.versions.applied()
        for src, _, stale, _ in got:
            yield Record(step=t, x=x, staleness=stale, src=src)
        yield Record(step=t, round=t, x=x, metrics={"arrived": float(len(got))})
        free = [src for src, _, _, _ in got]
    yield from srv.finish()
    return x
