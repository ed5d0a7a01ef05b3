"""The algorithm language: what an algorithm generator may ``yield``.

An algorithm is a generator written from one worker's point of view. It yields these
frozen dataclasses and receives their results; a backend (SimPy, stacked, MPI,
torch.distributed) interprets them. An algorithm never reads a clock, a rank or a
network: time and bytes belong to the backend.

Tensors in ops are *rank-polymorphic*: one worker's ``[d]`` vector on per-worker
backends, or all workers' ``[n, d]`` stack on the stacked backend. Payloads are never
modified in place, by algorithms or backends.

==============  =====================================================  ================
op              meaning                                                result
==============  =====================================================  ================
Grad(x)         minibatch loss and gradient on this worker's shard     (loss, grad)
Compute(cost)   local work with an abstract cost (units of one Grad)   None
AllReduce(x)    reduce ``x`` over all workers ("mean" or "sum")        reduced tensor
AllGather(x)    every worker's ``x``, stacked along a new first axis    ``[n, *x]``
Gossip(x, step) ``sum_j W(step)[i, j] x_j`` over the graph's neighbours mixed tensor
Rand()          a uniform draw from this worker's own random stream    ``[]``
Rate()          this worker's measured compute rate so far (units/s)   ``[]``
Start(op)       begin a collective without waiting (overlap)           :class:`Handle`
Wait(handle)    finish it                                              the op's result
Send(dst, x)    point-to-point message to rank ``dst`` (buffered)       None
Recv(src)       next message from ``src`` (or ``ANY`` source)           :class:`Message`
Record(...)     a row for the result table (the backend stamps it)     None
==============  =====================================================  ================

Asynchronous methods use *roles*: an algorithm registered with ``server=True`` runs on
``n_workers + 1`` ranks; rank 0 (``SERVER``) has ``ctx.role == "server"``, ranks 1..n are
workers (``ctx.index = rank - 1``). Such algorithms run on SimPy and the real backends; the
stacked backend refuses them. Collectives then span the workers only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Grad:
    """Compute the minibatch loss and gradient at ``x`` (costs ``batches`` compute units)."""

    x: Tensor
    batches: int = 1


@dataclass(frozen=True)
class Compute:
    """Spend ``cost`` compute units (one unit = one minibatch gradient) without data."""

    cost: float = 1.0


@dataclass(frozen=True)
class AllReduce:
    """Reduce ``x`` over all workers; every worker gets the result.

    ``quorum=k`` (backup workers, Chen et al. arXiv 1604.00981): reduce only the first ``k``
    arrivals; the others' computation is cut short when the result is out, and they
    continue from it. Ties in arrival time are broken by worker index."""

    x: Tensor
    op: str = "mean"
    quorum: int | None = None

    def __post_init__(self):
        if self.op not in ("mean", "sum"):
            raise ValueError(f"AllReduce.op must be 'mean' or 'sum', got {self.op!r}")


@dataclass(frozen=True)
class AllGather:
    """Gather every worker's ``x``: the result is ``[n, *x.shape]`` on a per-worker backend
    and ``[n, n, *row.shape]`` on the stacked one (each worker's own copy). Use it for small
    things (losses, norms); priced as a ring all-gather."""

    x: Tensor


@dataclass(frozen=True)
class Rand:
    """A ``U[0, 1)`` draw per worker (``[]``, or ``[n]`` stacked), from the worker's own
    seeded stream, so every backend draws the same numbers."""


@dataclass(frozen=True)
class Gossip:
    """Mix ``x`` with the neighbours of the run's topology at ``step``:
    ``x_i <- sum_j W(step)[i, j] x_j``. Costs one message per in-edge."""

    x: Tensor
    step: int


class WorkerFailed(RuntimeError):
    """Thrown into an algorithm at the yield point of a communication that needed a worker
    that crashed (fault policy ``continue``). Re-issuing the op runs it among the survivors."""

    def __init__(self, worker: int, time_s: float):
        super().__init__(worker, time_s)  # plain args: SimPy re-creates exceptions from them
        self.worker, self.time_s = worker, time_s

    def __str__(self):
        return (f"worker {self.worker} crashed at t={self.time_s:.3f} s; catch harness.ops.WorkerFailed in the "
                "algorithm (e.g. harness.ops.retrying) to continue without it")


def retrying(op):
    """``x = yield from retrying(AllReduce(x))``: re-issue ``op`` among the survivors
    whenever a participant crashed."""
    while True:
        try:
            return (yield op)
        except WorkerFailed:
            continue


@dataclass(frozen=True)
class Rate:
    """This worker's measured compute speed so far: compute units (minibatch gradients) per
    second of its own compute time (simulated or wall clock). The one window onto time an
    algorithm gets, for methods that adapt work to speed (e.g. dynamic local updates);
    0 before the first computation."""


@dataclass(frozen=True)
class Start:
    """Begin a collective (``AllReduce``/``AllGather``) and go on computing; its result comes
    from ``Wait(handle)``. Only the part of the communication not hidden behind
    computation shows up as communication/idle time."""

    op: AllReduce | AllGather


@dataclass(frozen=True)
class Handle:
    id: int


@dataclass(frozen=True)
class Wait:
    handle: Handle


ANY = -1  # Recv from any source
SERVER = 0  # the server's rank in algorithms registered with server=True


@dataclass(frozen=True)
class Send:
    """Send ``x`` to rank ``dst`` with an integer ``tag``. Returns once the message has left
    this rank (buffered send); the receiver gets it with :class:`Recv`."""

    dst: int
    x: Tensor
    tag: int = 0


@dataclass(frozen=True)
class Recv:
    """Wait for the next message from rank ``src`` (``ANY``: from anyone) with ``tag``
    (``None``: any tag). Messages from one sender arrive in the order they were sent."""

    src: int = ANY
    tag: int | None = None


@dataclass(frozen=True)
class Message:
    src: int
    tag: int
    x: Tensor


@dataclass(frozen=True)
class Record:
    """A row for the result table at ``step``.

    ``x`` is this worker's current model (the backend averages the workers' models into
    the consensus model at evaluation steps); ``loss`` its latest minibatch loss;
    ``metrics`` extra numeric columns (per worker)."""

    step: int
    x: Tensor
    loss: Tensor | float | None = None
    round: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


Op = Grad | Compute | AllReduce | AllGather | Gossip | Rand | Rate | Start | Wait | Send | Recv | Record
