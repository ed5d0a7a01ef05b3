"""MIFA, memory-augmented impatient federated averaging (Gu et al., NeurIPS 2021, arXiv 2106.04159),
as the FedAU authors' code runs it (the baseline FedAU is compared against).

Paper: Gu, Huang, Zhang, Huang, "Fast Federated Learning in the Presence of Arbitrary Device
Unavailability"; the form here is the FedAU authors' (github IBM/fedau, main.py ``-weighting mifa``).

The server keeps every client's latest update ``G_n`` (0 until the client first takes part).
Each round the available clients ``S_t`` (``participation: bernoulli``, as in FedAU) run
``local_steps`` SGD steps from ``x_t``; a participant's ``G_n <- Delta_n = y_n - x_t``; then the
server averages all ``N`` memories, whether their clients took part or not:

    x_{t+1} = x_t + eta_g (1/N) sum_{n=1}^{N} G_n

(Gu et al. write ``G_n`` as the latest gradient average ``-(y_n - x)/(eta K)`` and a server step
``eta``; with ``eta_g = 1`` the code's form is the same update.) ``G_n`` lives in keyed rows
(:func:`harness.parts.keyed`, ``N x d``: the state the method keeps); the sum ``G = sum_n G_n`` is the
part's state, the same on every slot, kept up to date by the participants' changes
``Delta_n - G_n`` (one ``ServerSum``), so a round costs what FedAvg's does: every participant
uploads one model and downloads one. With nobody available the server still steps with the old
memories (no traffic). The running sum equals the code's fresh mean up to rounding (a test).
"""
from typing import Literal

import torch

from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Participation, Positive, ServerSum, Steps, Unit
from harness.algorithms.fedau import _check
from harness.parts import Part, active, chain, keyed, local_train, masked, play


class latest(Part):  # noqa: N801
    """A participant's memory row ``G_n``. In: ``s.update = Delta_n``; out: ``s.update = Delta_n - G_n``
    (what the server's sum changes by); the row becomes ``Delta_n``."""

    def init(self, ctx, x):
        return torch.zeros_like(x)

    def step(self, ctx, s, g):
        return s._replace(update=s.update - g), s.update
        yield  # pragma: no cover


class mifa_round(Part):  # noqa: N801
    """State ``(G, row0)``: the sum of all memories and the row of a client never seen (zeros)."""

    def __init__(self, train: Part, server_lr: float):
        self.train, self.lr = train, server_lr
        self.memory = masked(keyed(latest(), name="mifa.latest"), active)

    def init(self, ctx, x):
        return torch.zeros_like(x), self.memory.init(ctx, x)

    def step(self, ctx, s, state):
        g, row0 = state
        x = s.x
        if s.cohort:
            s, _ = yield from self.train.step(ctx, s, ())
            s, _ = yield from self.memory.step(ctx, s._replace(update=s.x - x), row0)
            g = g + (yield ServerSum(s.update, active=active(ctx, s), op="sum"))
        return s._replace(x=x + self.lr * (g / ctx.n_clients), update=None), (g, row0)


@register("mifa", check=_check)
def mifa(*, server_lr: NonNegative = 1.0, local_epochs: Steps = 0, local_steps: Steps = 5,
         inner: Optimizer = Optimizer(lr=0.1), participation: Literal["bernoulli", "uniform"] = "bernoulli",
         p_mean: Unit = 0.1, p_min: Unit = 0.02, p_alpha: Positive = 1.0):
    part = Participation(participation, p_mean, p_min, p_alpha)
    return chain(play(participation=part), mifa_round(local_train(inner, local_epochs, local_steps), server_lr))
