"""Building blocks of algorithms: *when* to communicate apart from *how*.

A **trigger** says when: ``sync(t)`` answers "synchronise after local step ``t``?" (``t``
counts local steps from 0) and ``sync.round(t)`` is the number of synchronisations up to
and including step ``t``. Triggers are pure functions of ``t`` (no state), so a backend or
a test may ask in any order:

    every(H)                      after steps H-1, 2H-1, ...            (Local SGD)
    after(w).then(every(H))       nothing for w steps, then every H     (post-local SGD, PALSGD)
    qsr_rule(h_base, alpha, lr_at, steps)   QSR's rounds, H = max(h_base, (alpha / lr)^2)

An **averager** says how: a generator used with ``yield from`` that yields the ops and
returns the new value(s): :func:`mean_average`, :func:`elastic_pull`,
:func:`weighted_average`, :func:`gossip_average`, :func:`outer_step`.

The **ranges** below are annotations for hyper-parameters: a value outside fails when the
config is read, e.g. ``algorithm.period: Input should be greater than or equal to 1``.
:class:`~harness.transforms.Optimizer` is the optimizer spec (re-exported here).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Annotated, Callable

from pydantic import Field

from harness.ops import AllReduce, Gossip, retrying
from harness.transforms import Optimizer

# ---- ranges ------------------------------------------------------------------------------
Period = Annotated[int, Field(ge=1)]              # steps between synchronisations
Steps = Annotated[int, Field(ge=0)]               # a count of steps or workers, 0 allowed
Prob = Annotated[float, Field(gt=0, lt=1)]        # a probability strictly inside (0, 1)
Fraction = Annotated[float, Field(gt=0, le=1)]    # a pull or mixing fraction in (0, 1]
Unit = Annotated[float, Field(ge=0, le=1)]        # [0, 1]
Smoothing = Annotated[float, Field(ge=0, lt=1)]   # an exponential-average factor in [0, 1)
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


# ---- triggers (when) ---------------------------------------------------------------------
class Trigger:
    """``trigger(t)``: synchronise after local step ``t``? ``round(t)``: syncs in steps 0..t."""

    def __call__(self, t: int) -> bool:
        raise NotImplementedError

    def round(self, t: int) -> int:
        return sum(self(s) for s in range(t + 1))


@dataclass(frozen=True)
class every(Trigger):  # noqa: N801 (reads as a phrase: every(8))
    """After every ``period``-th local step: t = period-1, 2 period-1, ..."""
    period: int

    def __call__(self, t: int) -> bool:
        return (t + 1) % self.period == 0

    def round(self, t: int) -> int:
        return (t + 1) // self.period


@dataclass(frozen=True)
class _Then(Trigger):
    start: int
    trigger: Trigger

    def __call__(self, t: int) -> bool:
        return t >= self.start and self.trigger(t - self.start)

    def round(self, t: int) -> int:
        return self.trigger.round(t - self.start) if t >= self.start else 0


@dataclass(frozen=True)
class after:  # noqa: N801
    """``after(w).then(trigger)``: never during the first ``w`` steps, then ``trigger`` with
    steps counted from ``w`` (what an algorithm does during those steps is its own business)."""
    steps: int

    def then(self, trigger: Trigger) -> Trigger:
        return _Then(self.steps, trigger)


def warmup_then_periodic(warmup: int, period: int) -> Trigger:
    """``after(warmup).then(every(period))``."""
    return after(warmup).then(every(period))


@dataclass(frozen=True)
class qsr_rule(Trigger):  # noqa: N801
    """QSR (Gu et al., arXiv 2310.14423): a round starting at step ``t`` lasts
    ``H = max(h_base, floor((alpha / lr_at(t))^2))`` steps (the whole run once ``lr`` is 0),
    cut at the end of the run. ``period(t)`` is the (uncut) ``H`` of the round holding ``t``."""
    h_base: int
    alpha: float
    lr_at: Callable[[int], float]
    steps: int
    ends: tuple = field(init=False)
    lengths: tuple = field(init=False)

    def __post_init__(self):
        ends, lengths, t = [], [], 0
        while t < self.steps:
            eta = self.lr_at(t)
            h = max(self.h_base, math.floor((self.alpha / eta) ** 2)) if eta > 0 else self.steps
            t = min(t + h, self.steps)
            ends.append(t)
            lengths.append(h)
        object.__setattr__(self, "ends", tuple(ends))
        object.__setattr__(self, "lengths", tuple(lengths))

    def __call__(self, t: int) -> bool:
        return t + 1 in self.ends

    def round(self, t: int) -> int:
        return bisect_right(self.ends, t + 1)

    def period(self, t: int) -> int:
        return self.lengths[bisect_right(self.ends, t)]


# ---- averagers (how) ---------------------------------------------------------------------
def mean_average(x):
    """``x_i <- (1/n) sum_j x_j`` (one all-reduce); after a permanent crash, over the survivors."""
    return (yield from retrying(AllReduce(x, op="mean")))


def elastic_pull(x, center, alpha, beta):
    """EASGD's elastic exchange with a centre kept identically on every worker:
    ``x_i <- x_i - alpha (x_i - c)``, ``c <- (1 - beta) c + beta xbar`` (``xbar``: the mean of
    the ``x_j`` before their pull). Returns ``(x, center)``."""
    xbar = yield from mean_average(x)
    return x - alpha * (x - center), (1 - beta) * center + beta * xbar


def weighted_average(x, w, sizes=None):
    """``sum_j (w_j / sum_k w_k) x_j``: one all-reduce of the weights, one of the models.
    ``w`` is ``[..., 1]`` (one weight per model) or ``[..., L]`` per layer, then ``sizes`` are the
    layers' lengths (``w`` is normalised per layer before it is spread over the layer)."""
    w = w / (yield AllReduce(w, op="sum"))
    if sizes is not None:
        w = w.repeat_interleave(sizes, dim=-1)
    return (yield AllReduce(w * x, op="sum"))


def gossip_average(x, step):
    """``x_i <- sum_j W(step)[i, j] x_j`` over the run's topology."""
    return (yield Gossip(x, step=step))


def outer_step(theta, x, outer, outer_state, lr=1.0):
    """DiLoCo-style outer step: ``Delta = mean_i (theta - x_i)`` (all-reduce, survivors only
    after a crash), ``theta <- theta + lr * outer(Delta)``. ``outer`` is a transform (from
    ``Optimizer.build``: unit rate, ``lr`` the outer rate). Returns ``(theta, outer_state)``."""
    delta = yield from mean_average(theta - x)
    step, outer_state = outer.update(delta, outer_state, theta)
    return theta + lr * step, outer_state


def sample_members(seed: int, rnd: int, n: int, m: int) -> tuple[int, ...]:
    """``m`` of ``n`` workers for round ``rnd``, uniformly without replacement (FedAvg's
    client sampling): a pure function of ``(seed, rnd)``, so every worker and every backend
    computes the same set without communicating. Use as ``members=``."""
    import numpy as np

    if not 1 <= m <= n:
        raise ValueError(f"members: need 1 <= m <= n_workers = {n}, got m = {m}")
    from harness import streams

    return tuple(sorted(int(i) for i in streams.rng("members", seed, rnd).choice(n, m, replace=False)))


def sample_clients(seed: int, rnd: int, n_clients: int, m: int, sizes=None) -> tuple[int, ...]:
    """The ``m`` clients of round ``rnd`` (slot ``i`` plays the ``i``-th), without replacement:
    uniformly, or with probability proportional to ``sizes`` (a client's samples). A pure function
    of ``(seed, rnd)`` like :func:`sample_members`, so every slot and backend agrees."""
    import numpy as np
    from harness import streams

    if not 1 <= m <= n_clients:
        raise ValueError(f"clients: need 1 <= slots = {m} <= n_clients = {n_clients}")
    p = None
    if sizes is not None:
        p = np.asarray(sizes, dtype=np.float64)
        p = p / p.sum()
    return tuple(sorted(int(i) for i in streams.rng("clients", seed, rnd).choice(n_clients, m, replace=False, p=p)))


class Versions:
    """A server's model versions, for the ``staleness`` of every update it applies:
    the number of updates applied since the sender last received the model (the
    "versions since the pull" of Asynchronous Local-SGD, FedAsync's ``t - tau``). Use:
    ``s = v.staleness(src)``, apply the update, ``v.applied()``, send the model back,
    ``v.sent(src)``; then ``Record(..., staleness=s, src=src)`` writes an ``update`` row."""

    def __init__(self):
        self.version, self.pulled = 0, {}

    def staleness(self, src: int) -> int:
        return self.version - self.pulled.get(src, 0)

    def applied(self) -> None:
        self.version += 1

    def sent(self, src: int) -> None:
        self.pulled[src] = self.version


__all__ = ["Fraction", "NonNegative", "Optimizer", "Period", "Positive", "Prob", "Smoothing", "Steps", "Trigger", "Unit", "Versions", "sample_members",
           "after", "elastic_pull", "every", "gossip_average", "mean_average", "outer_step", "qsr_rule",
           "warmup_then_periodic", "weighted_average"]
