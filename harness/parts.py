"""Stateful parts: an algorithm's pieces with explicit state, composed like Optax transforms.

A **part** is a pair ``init(ctx, x) -> state`` and ``step(ctx, s, state)``, a generator that may
yield ops (:mod:`harness.ops`) and returns ``(s, state)``. ``s`` is a :class:`Step`, what flows
through one local step: the model ``x``, the step ``t``, the minibatch ``loss`` and ``grad``, an
optimizer's ``update`` and ``lr``, the communication ``round``, ``metrics`` and the ``eval_x`` to
evaluate. State is explicit data (tensors in tuples, rank-polymorphic: ``[d]`` or ``[n, d]``), so
the combinators below can mask, key and (later) checkpoint it without knowing the method:

    chain(a, b, ...)           run parts in order; the state is the tuple of their states
    when(trigger, part)        run ``part`` after the local steps ``trigger`` names (it counts a round)
    masked(part, members)      only ``members`` take part: the part's ops carry ``members=`` (a
                               non-member computes and pays nothing) and a non-member keeps its
                               model *and* state bit for bit, structurally
    keyed(part, by=...)        the part's state is a row per key (client or worker) that the
                               backend owns (``LoadState``/``SaveState``): an unplayed key's row
                               never changes
    run(part, ctx, x)          the loop: ``ctx.steps`` steps, a ``Record`` after each

An algorithm registers a *factory* of keyword-only hyper-parameters that returns a part::

    @register("local_sgd")
    def local_sgd(*, period: Period = 8, inner: Optimizer = Optimizer(lr=0.1)):
        return chain(grad(), local_step(inner), when(every(period), average()))

and the registry runs it with :func:`run`; generator algorithms keep working. The pieces every
family needs are here (:func:`grad`, :func:`local_step`, :func:`average`, :func:`gossip`, ...);
one method's own maths is a :class:`Part` subclass or :func:`part` in its module.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import torch

from harness import ops, tree


class Step(NamedTuple):
    """What flows through the parts during one local step (``t`` counts from 0)."""

    t: int
    x: Any
    loss: Any = None
    grad: Any = None
    update: Any = None
    lr: float = 0.0
    round: int = 0
    metrics: dict | None = None
    eval_x: Any = None
    client: Any = None  # the client this slot plays this round (play), else None
    cohort: tuple = ()  # the round's clients, slot order (play)
    shift: Any = None  # a drift correction local_train adds to every local gradient (SCAFFOLD's c - c_i)


class Part:
    """Base class: override ``init`` (default: no state) and ``step``."""

    def init(self, ctx, x):
        return ()

    def step(self, ctx, s: Step, state):
        raise NotImplementedError
        yield  # pragma: no cover


class part(Part):  # noqa: N801 (a function-like constructor: part(step, init=...))
    """A part from plain functions: ``step(ctx, s, state)`` (a generator, or a function that
    returns ``(s, state)``) and ``init(ctx, x)``."""

    def __init__(self, step: Callable, init: Callable | None = None):
        self._step, self._init = step, init

    def init(self, ctx, x):
        return () if self._init is None else self._init(ctx, x)

    def step(self, ctx, s, state):
        out = self._step(ctx, s, state)
        if hasattr(out, "send"):
            return (yield from out)
        return out


# -- combinators ------------------------------------------------------------------------------
class chain(Part):  # noqa: N801
    def __init__(self, *parts: Part):
        self.parts = parts

    def init(self, ctx, x):
        return tuple(p.init(ctx, x) for p in self.parts)

    def step(self, ctx, s, state):
        new = []
        for p, st in zip(self.parts, state):
            s, st = yield from p.step(ctx, s, st)
            new.append(st)
        return s, tuple(new)


class when(Part):  # noqa: N801
    """Run ``part`` after local step ``t`` when ``trigger(t)`` (:mod:`harness.algorithms.blocks`),
    or ``trigger(ctx, t)`` for a rule that needs the run (e.g. half of ``ctx.steps``); each firing
    counts one communication ``round`` (``count=False``: it does not)."""

    def __init__(self, trigger: Callable, part: Part, count: bool = True):
        self.trigger, self.part, self.count = trigger, part, count
        try:
            import inspect

            self.with_ctx = len(inspect.signature(trigger).parameters) == 2
        except (TypeError, ValueError):
            self.with_ctx = False

    def init(self, ctx, x):
        return self.part.init(ctx, x)

    def step(self, ctx, s, state):
        if not (self.trigger(ctx, s.t) if self.with_ctx else self.trigger(s.t)):
            return s, state
        s, state = yield from self.part.step(ctx, s, state)
        return (s._replace(round=s.round + 1) if self.count else s), state


def tensorize(state, x):
    """``state`` with integer leaves (AdamW's step count) as per-worker tensors shaped like
    ``x[..., :1]``, so that they can be masked and stored in rows."""
    like = torch.zeros_like(x[..., :1])
    return tree.map(lambda v: like + v if isinstance(v, (int, float)) and not isinstance(v, bool) else v, state)


def select(mask, new, old):
    """Leaf by leaf ``where(mask, new, old)``; ``mask`` is ``[]`` or ``[n]`` (a worker's
    membership), broadcast over each leaf's trailing dimensions."""
    def pick(a, b):
        if not isinstance(a, torch.Tensor):
            return a
        m = mask.reshape(*mask.shape, *([1] * (a.dim() - mask.dim())))
        return torch.where(m, a, b)
    return tree.map(pick, new, old)


def rewrite(gen, fn):
    """``yield from gen`` with every op it yields passed through ``fn``; what the backend sends
    or throws in (a ``WorkerFailed``) reaches ``gen`` unchanged. Returns ``gen``'s value."""
    value, exc = None, None
    while True:
        try:
            op = gen.throw(exc) if exc is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value
        exc = None
        try:
            value = yield fn(op)
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as e:  # noqa: BLE001 - forwarded to the part, which decides
            exc = e


class masked(Part):  # noqa: N801
    """Only ``members`` (ids, a mask, or ``fn(ctx, s)`` returning them, e.g. :func:`sampled`)
    take part in ``part``: its ops carry ``members=`` so a non-member neither computes nor
    communicates, and a non-member's ``x`` and state stay as they were, bit for bit."""

    def __init__(self, part: Part, members):
        self.part, self.members = part, members

    def init(self, ctx, x):
        return tensorize(self.part.init(ctx, x), x)

    def step(self, ctx, s, state):
        from dataclasses import replace

        ids = self.members(ctx, s) if callable(self.members) else self.members

        def restrict(op):
            if "members" in getattr(op, "__dataclass_fields__", ()) and op.members is None:
                return replace(op, members=ids)
            return op

        new_s, new_state = yield from rewrite(self.part.step(ctx, s, state), restrict)
        mask = ctx.member(ids)
        x = torch.where(mask.unsqueeze(-1), new_s.x, s.x)
        return new_s._replace(x=x), select(mask, tensorize(new_state, s.x), state)


def sampled(m: int) -> Callable:
    """``members`` for :class:`masked`: ``m`` of the workers, uniformly without replacement,
    drawn afresh each round (:func:`harness.algorithms.blocks.sample_members`)."""
    def members(ctx, s):
        from harness.algorithms.blocks import sample_members

        return sample_members(ctx.seed, s.round, ctx.n_workers, m)
    return members


class keyed(Part):  # noqa: N801
    """``part``'s state lives in rows the backend owns, one per key: ``by(ctx, s)`` names the
    row this worker plays now (default: the client it plays, else the worker itself).
    The row is loaded before ``part`` runs and saved after; a key nobody plays keeps its row."""

    def __init__(self, part: Part, by: Callable | None = None, name: str = "keyed"):
        self.part, self.by, self.name = part, by, name

    def init(self, ctx, x):
        return tensorize(self.part.init(ctx, x), x)  # the row of a key never saved

    def step(self, ctx, s, default):
        key = (ctx.index if s.client is None else s.client) if self.by is None else self.by(ctx, s)
        row = yield ops.LoadState(self.name, key, default)
        s, row = yield from self.part.step(ctx, s, row)
        yield ops.SaveState(self.name, key, tensorize(row, s.x))
        return s, default


# -- the loop ---------------------------------------------------------------------------------
class roles(Part):  # noqa: N801
    """The two sides of an asynchronous method (``register(..., server=True)``): rank 0 runs
    ``server`` once per arrival it expects (``arrivals(ctx)`` steps; ``s.t`` counts them), the
    workers run ``worker`` for ``steps(ctx)`` steps (default ``ctx.steps``). Sides whose records
    do not follow the steps (a server's ``update`` rows; a worker that records per round) yield
    their own ``Record`` (``records=False``); each side's state is its own tree, held by :func:`run`."""

    def __init__(self, server: Part, worker: Part, arrivals: Callable, steps: Callable | None = None,
                 worker_records: bool = True):
        self.server, self.worker, self.arrivals, self.steps = server, worker, arrivals, steps
        self.worker_records = worker_records


def run(p: Part, ctx, x, steps: int | None = None, records: bool = True, checkpoints: bool = True):
    """The generator of a part-based algorithm: ``steps`` (default ``ctx.steps``) steps, each
    followed by a ``Record`` of the step's ``x``, ``loss``, ``round``, ``metrics`` and ``eval_x``
    (``records=False``: the part records itself). The whole state lives here, in one tree
    (``state``), beside the step's carry ``s``; after each step a ``Checkpoint`` op offers both to
    the backend, and ``ctx.resume`` (a saved carry) continues from one (issue [27]).
    :class:`roles` picks this rank's side."""
    if isinstance(p, roles):  # asynchronous: never quiescent, so no Checkpoint (a preempted run restarts)
        if ctx.role == "server":
            return (yield from run(p.server, ctx, x, p.arrivals(ctx), records=False, checkpoints=False))
        n = ctx.steps if p.steps is None else p.steps(ctx)
        return (yield from run(p.worker, ctx, x, n, records=p.worker_records, checkpoints=False))
    if ctx.resume is not None:  # [issue 27] continue from a saved carry (harness.checkpoint)
        t0, s, state = ctx.resume
    else:
        t0, s, state = 0, Step(t=0, x=x), p.init(ctx, x)
    for t in range(t0, ctx.steps if steps is None else steps):
        s = Step(t=t, x=s.x, round=s.round)  # client and cohort are per round: play sets them
        s, state = yield from p.step(ctx, s, state)
        if records:
            yield ops.Record(step=t + 1, round=s.round, x=s.x, loss=s.loss, metrics=s.metrics or {}, eval_x=s.eval_x)
        if checkpoints:
            yield ops.Checkpoint(step=t + 1, carry=(t + 1, s, state))
    return s.x


# -- the pieces of many methods ---------------------------------------------------------------
class grad(Part):  # noqa: N801
    """A minibatch gradient at ``x``: sets ``loss`` and ``grad``."""

    def step(self, ctx, s, state):
        loss, g = yield ops.Grad(s.x)
        return s._replace(loss=loss, grad=g), state


@functools.lru_cache(maxsize=64)
def _built(opt, steps):
    return opt.build(steps)


class opt_update(Part):  # noqa: N801
    """The optimizer's unit-rate ``update`` of ``grad`` and this step's ``lr``
    (:class:`harness.transforms.Optimizer`); its state (momentum, AdamW's moments and count)
    is this part's state. :func:`apply` takes the step."""

    def __init__(self, opt):
        self.opt, self._built = opt, {}

    def built(self, steps):
        b = self._built.get(steps)  # hashing the spec every step costs more than the update itself
        if b is None:
            b = self._built[steps] = _built(self.opt, steps)
        return b

    def init(self, ctx, x):
        return self.built(ctx.steps).transform.init(x)

    def step(self, ctx, s, state):
        tr, lr_at = self.built(ctx.steps)
        u, state = tr.update(s.grad, state, s.x)
        return s._replace(update=u, lr=lr_at(s.t)), state
        yield  # pragma: no cover


class _Apply(Part):
    """``x <- x + lr * update``."""

    def step(self, ctx, s, state):
        return s._replace(x=s.x + s.lr * s.update), state
        yield  # pragma: no cover


apply = _Apply()


def local_step(opt) -> Part:
    """One optimizer step on the worker's own gradient: ``x <- x + lr_t * opt(grad)``."""
    return chain(opt_update(opt), apply)


class average(Part):  # noqa: N801
    """``x_i <- (1/n) sum_j x_j`` (``of="grad"``: the gradients), one all-reduce; ``reduce``: an
    aggregator (:mod:`harness.aggregators`); ``quorum=k``: the first k arrivals. After a permanent
    crash, among the survivors."""

    def __init__(self, of: str = "x", reduce=None, quorum: int | None = None):
        self.of, self.reduce, self.quorum = of, reduce, quorum

    def step(self, ctx, s, state):
        v = yield from ops.retrying(ops.AllReduce(getattr(s, self.of), op="mean", quorum=self.quorum,
                                                  reduce=self.reduce))
        if self.quorum:
            v = v.value  # a quorum all-reduce also says who arrived (v.arrived)
        return s._replace(**{self.of: v}), state


class outer(Part):  # noqa: N801
    """DiLoCo's outer step (Douillard et al., arXiv 2311.08105, Algorithm 1): ``Delta = mean_i
    (theta - x_i)`` (one all-reduce), ``theta <- theta + outer_lr_t * opt(Delta)``, ``x_i <- theta``.
    State: the global model ``theta`` and the outer optimizer's state, identical on every worker."""

    def __init__(self, opt):
        self.opt = opt

    def init(self, ctx, x):
        return x, _built(self.opt, ctx.steps).transform.init(x)

    def step(self, ctx, s, state):
        from harness.algorithms.blocks import outer_step

        tr, lr_at = _built(self.opt, ctx.steps)
        theta, ostate = yield from outer_step(state[0], s.x, tr, state[1], lr_at(s.t))
        return s._replace(x=theta), (theta, ostate)


@part
def gossip(ctx, s, state):
    """``x_i <- sum_j W(t)[i, j] x_j`` over the run's topology at step ``t``."""
    return s._replace(x=(yield ops.Gossip(s.x, step=s.t))), state


# -- federated pieces (issue [22]) ------------------------------------------------------------
class play(Part):  # noqa: N801
    """Each round the ``n_workers`` slots play ``n_workers`` distinct clients of ``ctx.n_clients``
    (slot ``i`` the ``i``-th of :func:`~harness.algorithms.blocks.sample_clients`), uniformly or
    in proportion to their data (``weighted``). Sets ``s.client``, ``s.cohort`` and the ``client``
    metric (the table's client column); the slot's data and speed become the client's (``Play``).
    ``participation``: a :class:`~harness.algorithms.blocks.Participation` (``bernoulli``: each
    client available with its own ``p_n``); then ``s.cohort`` may be shorter than the slots and
    the slots after it are idle in the round (client metric NaN; they play the cohort's first
    client, or 0, and compute nothing: :func:`active` names the busy ones). Adds the
    ``available`` metric (clients available this round)."""

    def __init__(self, weighted: bool = False, participation=None):
        self.weighted, self.participation = weighted, participation

    def step(self, ctx, s, state):
        from harness.algorithms.blocks import sample_clients

        sizes = ctx.part_sizes if self.weighted else None
        if self.participation is None:
            cohort, avail = sample_clients(ctx.seed, s.t, ctx.n_clients, ctx.n_workers, sizes), None
        else:
            cohort, avail = self.participation.cohort(ctx.seed, s.t, ctx.n_clients, ctx.n_workers, sizes)
        pad = ctx.n_workers - len(cohort)
        c = torch.tensor([*cohort, *[cohort[0] if cohort else 0] * pad])[ctx.index]
        yield ops.Play(c)
        shown = c.to(torch.float64)
        if pad:
            shown = torch.where(ctx.index < len(cohort), shown, torch.full_like(shown, float("nan")))
        metrics = {**(s.metrics or {}), "client": shown}
        if avail is not None:
            metrics["available"] = torch.full_like(shown, float(avail))
        return s._replace(client=c, cohort=cohort, metrics=metrics), state


def active(ctx, s) -> tuple[int, ...]:
    """The slots that play a client this round (:class:`play`): ``0 .. len(s.cohort) - 1``
    (``members=`` of the round's ops; empty when nobody is available; all slots without play)."""
    return tuple(range(ctx.n_workers)) if s.client is None else tuple(range(len(s.cohort)))


class local_train(Part):  # noqa: N801
    """A client's local training from the round's model ``x_g``: ``epochs`` passes over its shard
    without replacement (ragged last batch; a slot whose client has fewer batches sits the extra
    ones out, structurally, as ``masked``) or ``steps`` minibatches with replacement, each an
    optimizer step ``x <- x + lr_t opt(g + mu (x - x_g))`` from a fresh optimizer state (``mu``:
    FedProx's proximal term, Li et al. arXiv 1812.06127 eq. 2; 0 for FedAvg), plus ``s.shift`` when a
    part before it set one (a drift correction, SCAFFOLD's ``c - c_i``). ``lr_t`` is the rate
    of round ``t``. Sets ``x`` and ``loss`` (the last minibatch's)."""

    def __init__(self, opt, epochs: int = 0, steps: int = 0, mu: float = 0.0):
        if bool(epochs) == bool(steps):
            raise ValueError("local_train: give epochs or steps (one of them)")
        self.opt, self.epochs, self.steps, self.mu = opt, epochs, steps, mu

    def step(self, ctx, s, state):
        tr, lr_at = _built(self.opt, ctx.steps)
        xg, x, lr = s.x, s.x, lr_at(s.t)
        st = tensorize(tr.init(x), x)
        loss = None
        if s.client is not None and not s.cohort:
            return s, state  # play's participation: nobody is available this round
        if self.steps:  # a cohort shorter than the slots (play's participation): the idle slots sit out
            short = s.client is not None and len(s.cohort) < ctx.n_workers
            plan = [(None, None, tuple(range(len(s.cohort))) if short else None)] * self.steps
        else:
            nb = [-(-ctx.part_sizes[c] // ctx.batch_size) for c in s.cohort]
            plan = [(s.t * self.epochs + e, k, tuple(i for i, b in enumerate(nb) if b > k))
                    for e in range(self.epochs) for k in range(max(nb))]
        for epoch, k, ids in plan:
            full = ids is None or len(ids) == ctx.n_workers
            l, g = yield ops.Grad(x, epoch=epoch, nth=k, members=None if full else ids)
            if self.mu:
                g = g + self.mu * (x - xg)
            if s.shift is not None:  # a part before this one set a per-round correction (SCAFFOLD)
                g = g + s.shift
            u, new = tr.update(g, st, x)
            stepped = x + lr * u
            if full:
                x, st, loss = stepped, new, l
            else:
                mine = ctx.member(ids)
                x, st = torch.where(mine.unsqueeze(-1), stepped, x), select(mine, new, st)
                loss = l if loss is None else torch.where(mine, l, loss)
        return s._replace(x=x, loss=loss), state


class server_average(Part):  # noqa: N801
    """The server's average of the slots' models (FedAvg, McMahan et al. arXiv 1602.05629): weighted
    by the clients' samples ``n_c / sum_{cohort} n_c`` (``weighted``) or plain; priced as uploads to
    and downloads from a server (``AllReduce(via="server")``: ``2 m`` model transfers a round)."""

    def __init__(self, weighted: bool = True):
        self.weighted = weighted

    def step(self, ctx, s, state):
        pad = 0 if s.client is None else ctx.n_workers - len(s.cohort)
        if self.weighted:
            total = float(sum(ctx.part_sizes[c] for c in s.cohort))
            w = torch.tensor([ctx.part_sizes[c] / total for c in s.cohort] + [0.0] * pad, dtype=s.x.dtype)[ctx.index]
            v, op = w.unsqueeze(-1) * s.x, "sum"
        else:
            v, op = s.x, "mean"
        if not pad:
            x = yield ops.AllReduce(v, op=op, via="server")
        elif len(s.cohort):  # play's participation left slots idle: only the busy ones pay, all get x
            from harness.algorithms.blocks import ServerSum

            x = yield ServerSum(v, active=active(ctx, s), op=op)
        else:
            x = s.x  # nobody took part: the model stays
        return s._replace(x=x), state


class metric(Part):  # noqa: N801
    """Add ``name = fn(ctx, s)`` to the step's metrics."""

    def __init__(self, name: str, fn: Callable):
        self.name, self.fn = name, fn

    def step(self, ctx, s, state):
        return s._replace(metrics={**(s.metrics or {}), self.name: self.fn(ctx, s)}), state
        yield  # pragma: no cover


__all__ = ["Part", "Step", "active", "local_train", "play", "rewrite", "roles", "server_average", "apply", "average", "chain", "gossip", "grad", "keyed", "local_step", "masked", "metric",
           "opt_update", "outer", "part", "run", "sampled", "select", "tensorize", "when"]
