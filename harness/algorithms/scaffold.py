"""SCAFFOLD, stochastic controlled averaging (Karimireddy et al., arXiv 1910.06378, Algorithm 1).

Server state: the model ``x`` and the control variate ``c``; client ``i``'s state: its control
variate ``c_i`` (all start at 0). Each round the ``m`` slots play ``m`` sampled clients ``S``
(uniformly, or by data size with ``sampling: size``); client ``i`` receives ``(x, c)``, sets
``y_i <- x`` and takes ``K_i`` corrected local steps (``local_steps`` minibatches, or
``local_epochs`` passes over its shard: ``K_i = E ceil(n_i / B)``), learning rate ``eta_l``:

    y_i   <- y_i - eta_l (g_i(y_i) - c_i + c)
    c_i^+ <- g_i(x)                                          (option I: a minibatch gradient at x)
          |  c_i - c + (x - y_i) / (K_i eta_l)               (option II)
    upload (Delta y_i, Delta c_i) = (y_i - x, c_i^+ - c_i);  c_i <- c_i^+
    x <- x + eta_g (1/m) sum_{i in S} Delta y_i
    c <- c + (m / N) (1/m) sum_{i in S} Delta c_i            (N = n_clients)

``c_i`` lives in keyed rows (:func:`harness.parts.keyed`, one per client): a client that is not
sampled keeps its ``c_i`` bit for bit. ``c`` is the part's state, the same on every slot. The
correction ``c - c_i`` reaches the local steps as ``Step.shift`` (:class:`~harness.parts.local_train`
adds it to every minibatch gradient). Option II's formula assumes the paper's plain SGD; with
``momentum`` it is the paper's formula applied as is. Averages are plain means as in the paper.
Defaults: ``eta_g = 1`` (the paper's experiments), option II (the cheaper one, used in the
paper's experiments), the client side as FedAvg's on digits (lr 0.05, E = 2).

Cost per round, counted by the ops: one ``AllReduce(via="server")`` of the concatenated
``[Delta y_i, Delta c_i]``, ``2d`` entries, so each sampled client sends ``2d`` and receives
``2d`` (in a deployment: uploads ``Delta y_i`` and ``Delta c_i``, downloads ``x`` and ``c``),
``4 m d`` entries a round, twice FedAvg. Option I also computes one extra minibatch gradient.
On the real backends keyed rows stay on the rank that hosts the client (``client % n_workers``),
so there ``n_clients`` must equal ``n_workers`` for now (harness/keyed.py).
"""

from typing import Literal

import torch

from harness import ops
from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Steps
from harness.algorithms.fedavg import _check
from harness.parts import Part, _built, chain, keyed, local_train, play


class client_variate(Part):  # noqa: N801
    """A client's round: the keyed row is ``c_i``. In: ``s.x = x``, ``s.shift = c`` (the server's);
    out: ``s.x = y_i``, ``s.shift = Delta c_i = c_i^+ - c_i``; the row becomes ``c_i^+``."""

    def __init__(self, inner, epochs: int, steps: int, option: str):
        self.train = local_train(inner, epochs, steps)
        self.inner, self.epochs, self.steps, self.option = inner, epochs, steps, option

    def init(self, ctx, x):
        return torch.zeros_like(x)

    def step(self, ctx, s, ci):
        x, c = s.x, s.shift
        s, _ = yield from self.train.step(ctx, s._replace(shift=c - ci), ())
        if self.option == "I":
            _, new = yield ops.Grad(x)
        else:
            # 1 / (K_i eta_l) per slot, formed in Python and multiplied: torch divides by a one-element
            # tensor as a multiplication by its reciprocal, by an [m, 1] one exactly, so a division
            # would round differently on SimPy and stacked
            lr = _built(self.inner, ctx.steps).lr(s.t)
            ks = [self.steps or self.epochs * -(-ctx.part_sizes[cl] // ctx.batch_size) for cl in s.cohort]
            inv = torch.tensor([1.0 / (k * lr) for k in ks], dtype=x.dtype)[ctx.index].unsqueeze(-1)
            new = ci - c + (x - s.x) * inv
        return s._replace(shift=new - ci), new


class scaffold_round(Part):  # noqa: N801
    """The server's side of a SCAFFOLD round around the keyed client part; state ``(c, row0)``
    (``row0``: the row of a client never sampled, zeros)."""

    def __init__(self, client: Part, server_lr: float, name: str = "scaffold.c_i"):
        self.client, self.lr = keyed(client, name=name), server_lr

    def init(self, ctx, x):
        return torch.zeros_like(x), self.client.init(ctx, x)

    def step(self, ctx, s, state):
        c, row0 = state
        x, d = s.x, s.x.shape[-1]
        s, _ = yield from self.client.step(ctx, s._replace(shift=c), row0)
        up = yield ops.AllReduce(torch.cat([s.x - x, s.shift], -1), op="mean", via="server")
        x = x + self.lr * up[..., :d]
        c = c + (ctx.n_workers / ctx.n_clients) * up[..., d:]
        return s._replace(x=x, shift=None), (c, row0)


@register("scaffold", check=_check)
def scaffold(*, option: Literal["I", "II"] = "II", server_lr: NonNegative = 1.0, local_epochs: Steps = 2,
             local_steps: Steps = 0, inner: Optimizer = Optimizer(lr=0.05),
             sampling: Literal["uniform", "size"] = "uniform"):
    return chain(play(weighted=sampling == "size"),
                 scaffold_round(client_variate(inner, local_epochs, local_steps, option), server_lr))
