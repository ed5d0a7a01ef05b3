"""FedAU, federated averaging with online aggregation weights for unknown participation (Wang & Ji,
ICLR 2024, arXiv 2306.03401), with the weightings its paper compares against (``weighting``).

Paper: "A Lightweight Method for Tackling Unknown Participation Statistics in Federated Averaging".
The rule is the one read in the authors' code (github IBM/fedau, main.py, ``-weighting``), not a
reconstruction.

Client ``n`` takes part in round ``t`` with its own unknown probability ``p_n`` (``participation:
bernoulli``, :class:`~harness.algorithms.blocks.Participation`; ``S_t`` the round's participants).
A participant runs ``local_steps`` minibatch SGD steps from ``x_t`` (or ``local_epochs`` passes),
giving ``Delta_n = y_n - x_t``; the server applies

    x_{t+1} = x_t + eta_g (1/N) sum_{n in S_t} omega_n Delta_n       (adaptive, known, all)
    x_{t+1} = x_t + eta_g (1/|S_t|) sum_{n in S_t} Delta_n           (participating: FedAvg's mean)

    adaptive (FedAU):  omega_n = mean(I_n), the mean of client n's completed participation
                       intervals (1 while it has none): an online estimate of 1 / p_n
    known:             omega_n = 1 / p_n, the true probability (an oracle baseline)
    all:               omega_n = 1

FedAU's bookkeeping (authors' code): each client has a counter ``c_n`` and the list ``I_n``. A
participant's weight is computed first, then ``I_n <- I_n + [c_n + 1]`` and ``c_n <- 0``; a client
that sits the round out does ``c_n <- c_n + 1`` and, when ``c_n >= K`` (``cutoff``; 0: none, the
code's default 100000 in effect), ``I_n <- I_n + [K]``, ``c_n <- 0``.

Here only participants' state changes (an unsampled client's keyed row never changes, issue
[22]): the row is ``(last, total, count)``: the round of the client's last participation (-1
before the first), and the sum and number of its completed intervals. The gap ``g = t - 1 - last``
rounds it sat out since then is what the counter went through: the cutoff fired ``floor(g / K)``
times (``I_n`` got that many ``K``) and ``c_n = g mod K`` now (``c_n = g`` without a cutoff). So at
participation ``total += K floor(g/K)``, ``count += floor(g/K)``, ``omega_n = total / count`` (1 if
``count = 0``), then ``total += (g mod K) + 1``, ``count += 1``, ``last = t``: the same weights as the
authors' per-round counters, O(1) state per client (a test checks it against their loop).

Cost per round, counted by the ops: every participant downloads and uploads the model once (the
``ServerSum`` collective, priced as ``AllReduce(via="server")`` over the participants); the
weights are server-side scalars. Idle slots (fewer participants than ``n_workers``) move
nothing. Defaults: the authors' (local lr 0.1, 5 local iterations, eta_g = 1, participation
mean 0.1, min 0.02) with the participation Dirichlet drawn per client (see ``Participation``).
"""
from typing import Literal

import torch

from harness.algorithms import register
from harness.algorithms.blocks import NonNegative, Optimizer, Participation, Positive, ServerSum, Steps, Unit
from harness.parts import Part, active, chain, keyed, local_train, masked, play


def _check(p, n_workers):
    if bool(p["local_epochs"]) == bool(p["local_steps"]):
        raise ValueError("algorithm.local_epochs: give local_epochs or local_steps (set the other to 0)")
    if not 0 < p["p_min"] <= p["p_mean"] <= 1:
        raise ValueError(f"algorithm.p_min: need 0 < p_min ({p['p_min']}) <= p_mean ({p['p_mean']}) <= 1")


class intervals(Part):  # noqa: N801
    """FedAU's per-client row ``(last, total, count)`` (module docstring). In: ``s.t`` the round;
    out: ``s.update`` = this participant's weight ``omega_n`` (``[..., 1]``)."""

    def __init__(self, cutoff: int):
        self.cutoff = cutoff

    def init(self, ctx, x):
        return (-1, 0, 0)

    def step(self, ctx, s, row):
        last, total, count = row
        gap = s.t - 1 - last
        if self.cutoff:
            cuts = torch.div(gap, self.cutoff, rounding_mode="floor")
            total, count, gap = total + self.cutoff * cuts, count + cuts, gap - self.cutoff * cuts
        omega = torch.where(count > 0, total / torch.clamp(count, min=1), torch.ones_like(total))
        return s._replace(update=omega), (last * 0 + s.t, total + gap + 1, count + 1)
        yield  # pragma: no cover


class fedau_round(Part):  # noqa: N801
    """The round after ``play``: local training of the participants, their weights, the server's
    step. State: the keyed part's row of a client never seen (for ``adaptive``)."""

    def __init__(self, train: Part, weighting: str, cutoff: int, server_lr: float, part: Participation):
        self.train, self.weighting, self.lr, self.part = train, weighting, server_lr, part
        self.weights = masked(keyed(intervals(cutoff), name="fedau.intervals"), active) if weighting == "adaptive" else None

    def init(self, ctx, x):
        return self.weights.init(ctx, x) if self.weights else ()

    def step(self, ctx, s, row0):
        if not s.cohort:
            return s, row0  # nobody is available: x_{t+1} = x_t, no state changes
        x = s.x
        s, _ = yield from self.train.step(ctx, s, ())
        delta = s.x - x
        if self.weights is not None:
            s, _ = yield from self.weights.step(ctx, s, row0)
            delta = s.update * delta
        elif self.weighting == "known":
            p = self.part.probs(ctx.seed, ctx.n_clients, ctx.n_workers)
            w = [1.0 / p[c] for c in s.cohort] + [0.0] * (ctx.n_workers - len(s.cohort))
            delta = torch.tensor(w, dtype=x.dtype)[ctx.index].unsqueeze(-1) * delta
        mean = self.weighting == "participating"
        total = yield ServerSum(delta, active=active(ctx, s), op="mean" if mean else "sum")
        step = total if mean else total / ctx.n_clients
        return s._replace(x=x + self.lr * step, update=None), row0


@register("fedau", check=_check)
def fedau(*, weighting: Literal["adaptive", "known", "participating", "all"] = "adaptive", cutoff: Steps = 0,
          server_lr: NonNegative = 1.0, local_epochs: Steps = 0, local_steps: Steps = 5,
          inner: Optimizer = Optimizer(lr=0.1), participation: Literal["bernoulli", "uniform"] = "bernoulli",
          p_mean: Unit = 0.1, p_min: Unit = 0.02, p_alpha: Positive = 1.0):
    part = Participation(participation, p_mean, p_min, p_alpha)
    return chain(play(participation=part),
                 fedau_round(local_train(inner, local_epochs, local_steps), weighting, cutoff, server_lr, part))
