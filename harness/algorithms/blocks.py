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

import functools
import math
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Annotated, Callable

from pydantic import Field

from harness.aggregators import fold
from harness.cost import NONE, Cost
from harness.ops import AllReduce, Collective, Gossip, retrying
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


@dataclass(frozen=True)
class Participation:
    """Which clients can take part in a round (:class:`harness.parts.play`), issue [22].

    * ``uniform`` (default): every round the slots play ``m`` clients drawn without replacement
      (:func:`sample_clients`), as FedAvg samples them.
    * ``bernoulli``: client ``n`` is available in a round with its own probability ``p_n``,
      independently of the other clients and rounds (FedAU's setting, Wang & Ji, arXiv 2306.03401,
      Sec. 5). ``p_n = min(1, max(p_min, p_mean N w_n))`` with ``w ~ Dirichlet(alpha 1_N)``: the form
      of the FedAU authors' code (``util.data_participation_each_node``: a Dirichlet multiplier
      scaled to mean ``p_mean``, floored at ``p_min``), drawn per client instead of per label, so
      it needs no labels; small ``alpha`` spreads the ``p_n`` further. The round's cohort is the
      available clients; the ``m`` slots are the server's capacity: if more are available, ``m``
      of them are drawn uniformly and the others sit the round out (the ``available`` metric
      counts them all); if fewer, the extra slots are idle. Pick ``n_workers`` well above
      ``sum_n p_n`` so that capacity rarely binds.

    Both are pure functions of ``(seed, round)`` (streams ``clients``, ``participation``), so
    every slot and every backend draws the same cohort without communicating."""
    kind: str = "uniform"
    p_mean: float = 0.1
    p_min: float = 0.02
    alpha: float = 1.0

    def __post_init__(self):
        if self.kind not in ("uniform", "bernoulli"):
            raise ValueError(f"participation: {self.kind!r} is not a participation model; use uniform or bernoulli")
        if not (0 < self.p_min <= self.p_mean <= 1) or self.alpha <= 0:
            raise ValueError(f"participation: need 0 < p_min ({self.p_min}) <= p_mean ({self.p_mean}) <= 1 and "
                             f"alpha ({self.alpha}) > 0")

    def probs(self, seed: int, n_clients: int, m: int = 0) -> tuple[float, ...]:
        """Each client's probability ``p_n`` of taking part in a round (``uniform``: ``m / N``)."""
        if self.kind == "uniform":
            return (m / n_clients,) * n_clients
        return _bernoulli_probs(seed, n_clients, self.p_mean, self.p_min, self.alpha)

    def cohort(self, seed: int, rnd: int, n_clients: int, m: int, sizes=None) -> tuple[tuple[int, ...], int]:
        """``(clients, available)``: the clients the slots play in round ``rnd`` (ascending; slot
        ``i`` plays the ``i``-th, the slots after the last are idle) and how many were available."""
        if self.kind == "uniform":
            return sample_clients(seed, rnd, n_clients, m, sizes), m
        return _bernoulli_cohort(seed, rnd, n_clients, m, self.probs(seed, n_clients))


@functools.lru_cache(maxsize=16)
def _bernoulli_probs(seed, n, p_mean, p_min, alpha):
    import numpy as np
    from harness import streams

    w = streams.rng("participation", seed).dirichlet(alpha * np.ones(n))
    return tuple(float(p) for p in np.minimum(1.0, np.maximum(p_min, p_mean * n * w)))


@functools.lru_cache(maxsize=4)
def _bernoulli_cohort(seed, rnd, n, m, probs):
    import numpy as np
    from harness import streams

    if not 1 <= m <= n:
        raise ValueError(f"clients: need 1 <= slots = {m} <= n_clients = {n}")
    g = streams.rng("participation", seed, rnd)
    avail = np.flatnonzero(g.random(n) < np.asarray(probs))
    chosen = avail if len(avail) <= m else g.choice(avail, m, replace=False)
    return tuple(sorted(int(i) for i in chosen)), len(avail)


@dataclass(frozen=True)
class ServerSum(Collective):
    """A federated round's aggregate when only the ``active`` slots hold a client (issue [22],
    :class:`Participation` ``bernoulli``): the server combines the active slots' payloads (``op``
    ``sum`` or ``mean``, ascending slot order, as ``AllReduce``) and every slot gets the result,
    so an idle slot starts its next client's round from the current model. Priced as
    ``AllReduce(via="server")`` over the active slots only (``NetworkSpec.server_cost``: each
    uploads and downloads once); an idle slot moves nothing. In a deployment the download goes
    to a round's participants at its start; the count per round is the same, ``2 |S_t|``
    models. Members are all slots (``members`` None), so the collective is one barrier."""
    x: Any
    active: tuple = ()
    op: str = "sum"
    members: Any = None
    codec: Any = None

    def combine(self, payloads, ids=None):
        ids = list(range(len(payloads))) if ids is None else list(ids)
        mine = [p for j, p in zip(ids, payloads) if j in self.active]
        total = fold(mine)
        return total / len(mine) if self.op == "mean" else total

    def cost(self, net, sizes, ids):
        act = [j for j in ids if j in self.active]
        c = net.server_cost(max(sizes), act)
        per = dict(zip(act, c.traffic))
        return Cost(c.seconds, tuple(per.get(j, NONE) for j in ids))


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


__all__ = ["Fraction", "NonNegative", "Optimizer", "Period", "Positive", "Prob", "Smoothing", "Steps", "Participation", "ServerSum", "Trigger", "Unit", "Versions", "sample_members",
           "after", "elastic_pull", "every", "gossip_average", "mean_average", "outer_step", "qsr_rule",
           "warmup_then_periodic", "weighted_average"]
