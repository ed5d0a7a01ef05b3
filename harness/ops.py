"""The algorithm language: what an algorithm generator may ``yield``, and what each op means.

An algorithm is a generator written from one worker's point of view. It yields these
frozen dataclasses and receives their results; a backend (SimPy, stacked, MPI,
torch.distributed, loopback) interprets them. An algorithm never reads a clock, a rank or
a network: time and bytes belong to the backend.

**One meaning per op.** What an op computes lives on the op itself (``combine`` of the
payloads in canonical order: worker index ascending; ``Gossip.mix``; the codec's
round trip in :mod:`harness.codecs`) and what it costs lives in :mod:`harness.cost`;
interpreters only synchronise (SimPy events, stacked max-plus clocks, real messages).
So SimPy and stacked give bit-identical tables, also in float32.

Tensors are *rank-polymorphic*: one worker's ``[d]`` vector on per-worker backends, all
workers' ``[n, d]`` stack on the stacked one. Payloads are never modified in place.

===================  ====================================================  =====================
op                   meaning                                               result
===================  ====================================================  =====================
Grad(x, part=)       minibatch loss and gradient on this worker's shard    ``(loss, grad)``
                     (or on data part ``part``; ``members=``: only they)
Compute(cost)        local work with an abstract cost (units of one Grad)  None
AllReduce(x)         reduce over the workers (``members=``: a subset;      reduced tensor, or
                     ``quorum=k``: the first k arrivals; ``codec=``)        :class:`Quorum`
AllGather(x)         every member's ``x`` stacked along a new first axis    ``[m, *x]``
Gossip(x, step)      ``sum_j W(step)[i, j] x_j`` over the graph             mixed tensor
Neighbors(step)      this worker's in/out peers in ``W(step)``              :class:`Peers`
Put/Accumulate       write / add ``x`` into worker ``peer``'s window         None
Get(peer)            read worker ``peer``'s window                          tensor
Exchange(peer)       atomically average my window with ``peer``'s           the average
Rand()               a uniform draw from this worker's own random stream   ``[]``
Rate()               this worker's measured compute rate so far (units/s)  ``[]``
Start(op), Wait(h)   begin a collective without waiting, finish it         Handle, op's result
Send(dst, x)         point-to-point message to rank ``dst`` (buffered)      None
Recv(src)            next message from ``src`` (or ``ANY`` source;          :class:`Message`
                     ``timeout=``/``deadline=``: ``None`` if none came)     or None
Sleep(s), Until(t)   wait ``s`` seconds / until ``t`` s since the start      None
Record(...)          a row for the result table (the backend stamps it)    None
===================  ====================================================  =====================

*Members.* ``members=`` is a tuple of worker indices or a boolean mask over workers
(``[n]``, or ``[n, n]`` stacked with equal rows). Every worker yields the op; a
non-member pays nothing, waits for nothing and gets its input back (``Grad``: loss NaN,
gradient zero; ``AllGather``: zeros). Collectives over the same member set are matched
by their sequence number within that set, never by step.

Asynchronous methods use *roles*: an algorithm registered with ``server=True`` runs on
``n_workers + 1`` ranks; rank 0 (``SERVER``) has ``ctx.role == "server"``, ranks 1..n are
workers (``ctx.index = rank - 1``). Windows (``Put``/``Get``/``Accumulate``/``Exchange``)
belong to workers and hold one model-shaped tensor each (the initial model until written).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Sequence

import torch
from torch import Tensor

from harness import aggregators, codecs
from harness.aggregators import fold
from harness.cost import Cost, NetworkSpec

ANY = -1  # Recv from any source
SERVER = 0  # the server's rank in algorithms registered with server=True
SELF = -2  # one-sided ops on this worker's own window


# -- shared meaning -----------------------------------------------------------------------
def member_ids(members, n: int) -> tuple[int, ...]:
    """Canonical member set: ascending worker indices (all ``n`` when ``members`` is None)."""
    if members is None:
        return tuple(range(n))
    if isinstance(members, Tensor):
        m = members if members.dim() <= 1 else members.reshape(-1, members.shape[-1])[0]
        if m.dtype == torch.bool:
            if m.numel() != n:
                raise ValueError(f"members: a mask needs one entry per worker ({n}), got {m.numel()}")
            return tuple(int(i) for i in torch.nonzero(m).flatten().tolist())
        members = m.flatten().tolist()
    ids = tuple(sorted({int(i) for i in members}))
    if not ids or ids[0] < 0 or ids[-1] >= n:
        raise ValueError(f"members: need a non-empty subset of workers 0..{n - 1}, got {members!r}")
    return ids


def wire(x: Tensor, codec) -> tuple[Tensor, int]:
    """One worker's payload as received (after the codec's round trip) and its bytes."""
    c = codecs.parse(codec)
    if c is None:
        return x, x.numel() * x.element_size()
    return c.roundtrip(x), (c.wire_bits(x) + 7) // 8


def with_wire(op, codec):
    """``op`` with ``codec`` where it names none (a run's wire precision, e.g. bf16 training);
    ops without payloads, or with a codec of their own, are returned unchanged."""
    if codec is None:
        return op
    if isinstance(op, Start):
        inner = with_wire(op.op, codec)
        return op if inner is op else Start(inner)
    if getattr(op, "codec", "") is None:
        from dataclasses import replace

        return replace(op, codec=codec)
    return op


def mix(coefs: Sequence[Tensor], terms: Sequence[Tensor], valid: Sequence[Tensor] | None = None) -> Tensor:
    """``sum_k coefs[k] * terms[k]`` left to right; ``valid[k]`` masks padded terms (stacked;
    ``None``: all valid).
    Elementwise, so one worker's ``[d]`` and a stacked ``[n, d]`` give the same bits."""
    acc = coefs[0] * terms[0]
    for k in range(1, len(terms)):
        step = acc + coefs[k] * terms[k]
        acc = step if valid is None or valid[k] is None else torch.where(valid[k], step, acc)
    return acc


# -- ops ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grad:
    """Minibatch loss and gradient at ``x`` (costs ``batches`` compute units). ``part``: a
    data part (shard index; ``[]`` or ``[n]`` tensor, or int) instead of the worker's own."""

    pattern: ClassVar[str] = "compute"
    x: Tensor
    batches: int = 1
    part: Any = None
    members: Any = None
    epoch: Any = None  # with nth: the nth minibatch of pass `epoch` over the shard, without replacement
    nth: Any = None

    def skip(self, n: int):
        """A non-member's result: NaN loss, zero gradient."""
        return torch.tensor(float("nan"), dtype=self.x.dtype), torch.zeros_like(self.x)


@dataclass(frozen=True)
class Compute:
    """Spend ``cost`` compute units (one unit = one minibatch gradient) without data."""

    pattern: ClassVar[str] = "compute"
    cost: float = 1.0
    members: Any = None

    def skip(self, n: int):
        return None


class Quorum(NamedTuple):
    """Result of ``AllReduce(quorum=k)``: the value and which workers' payloads are in it
    (a bool mask over workers, ``[n]``; ``[n, n]`` stacked)."""

    value: Tensor
    arrived: Tensor


class Collective:
    """The *collective* pattern: every member contributes one payload ``x`` (through its
    ``codec``); ``combine(payloads, ids)`` (payloads in ascending worker order ``ids``) is
    what every member gets; ``cost(net, sizes, ids)`` prices it; ``skip(n)`` is what a
    non-member gets. ``native`` names a transport primitive that computes the same thing
    (``"sum"``: an all-reduce, then ``finish(total, m)``; ``"gather"``: an all-gather) or is
    ``None`` (members exchange payloads and each combines them). A new collective is a
    frozen dataclass with fields ``x``, ``members``, ``codec`` and these methods: every
    interpreter runs it (see ``tests/plugins/broadcast_op.py``)."""

    pattern: ClassVar[str] = "collective"
    native: ClassVar[str | None] = None

    def skip(self, n: int):
        return self.x

    def finish(self, total: Tensor, m: int) -> Tensor:
        return total


@dataclass(frozen=True)
class AllReduce(Collective):
    """Reduce ``x`` over the members; every member gets the result.

    ``reduce``: the aggregator (:mod:`harness.aggregators`; default ``op``, ``"mean"`` or
    ``"sum"``): a linear one is a native all-reduce, a non-linear one (``median``, a user's
    Krum) is priced as the all-gather it needs. ``quorum=k`` (backup workers, Chen et al.
    arXiv 1604.00981): reduce only the first ``k`` arrivals (ties: lower index first); the
    others' computation is cut short when the result is out; the result is a
    :class:`Quorum`. ``codec``: payloads as received through it (:mod:`harness.codecs`); a
    codec that cannot be summed is gathered."""

    x: Tensor
    op: str = "mean"
    quorum: int | None = None
    members: Any = None
    codec: Any = None
    reduce: Any = None
    via: str | None = None  # "server": members upload to and download from a server (federated rounds)

    def __post_init__(self):
        if self.op not in ("mean", "sum"):
            raise ValueError(f"AllReduce.op must be 'mean' or 'sum', got {self.op!r}")
        if self.via not in (None, "server"):
            raise ValueError(f"AllReduce.via must be None (the network's all-reduce) or 'server', got {self.via!r}")
        q = self.quorum  # [issue 21] 0 (or False) must not read as "no quorum"
        if q is not None and (isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 1):
            raise ValueError(f"AllReduce.quorum must be a whole number >= 1 (reduce the first k arrivals) or None "
                             f"(all members), got {q!r}")
        c = codecs.parse(self.codec)
        agg = aggregators.parse(self.op if self.reduce is None else self.reduce)
        object.__setattr__(self, "aggregator", agg)
        object.__setattr__(self, "_gather", not agg.linear or (c is not None and not c.summable))

    @property
    def native(self):
        return None if self._gather else "sum"

    def finish(self, total: Tensor, m: int) -> Tensor:
        return self.aggregator.finish(total, m)

    def combine(self, payloads: Sequence[Tensor], ids=None) -> Tensor:
        """The reduction of the payloads (in ascending worker order)."""
        return self.aggregator.combine(payloads)

    def cost(self, net: NetworkSpec, sizes: Sequence[int], ids: Sequence[int]) -> Cost:
        if self.via == "server":  # uploads to a server, which combines and sends the result back
            return net.server_cost(max(sizes), ids)
        if self._gather:  # not reducible on the way: every payload travels
            return net.allgather_cost(sizes, ids)
        return net.allreduce_cost(max(sizes), ids)


@dataclass(frozen=True)
class AllGather(Collective):
    """Gather every member's ``x``: ``[m, *x.shape]`` per worker, ``[n, m, *row]`` stacked
    (each worker's own copy). For small things (losses, norms); a ring all-gather."""

    native: ClassVar[str | None] = "gather"
    x: Tensor
    members: Any = None
    codec: Any = None

    def combine(self, payloads: Sequence[Tensor], ids=None) -> Tensor:
        return torch.stack(list(payloads))

    def cost(self, net: NetworkSpec, sizes: Sequence[int], ids: Sequence[int]) -> Cost:
        return net.allgather_cost(sizes, ids)

    def skip(self, n: int):
        return torch.zeros((len(member_ids(self.members, n)), *self.x.shape), dtype=self.x.dtype)


COLLECTIVES = (Collective,)


@dataclass(frozen=True)
class Gossip:
    """Mix ``x`` with the neighbours of the run's topology at ``step``:
    ``x_i <- sum_j W(step)[i, j] x_j``, ``j`` ascending (own ``x`` uncoded, neighbours' through
    ``codec``). Costs one message per out-edge. Matched per edge by sequence number."""

    pattern: ClassVar[str] = "gossip"
    feature: ClassVar[str] = "gossip"
    x: Tensor
    step: int
    codec: Any = None

    mix = staticmethod(mix)


class Peers(NamedTuple):
    """In- and out-neighbours as bool masks over workers (``[n]``; ``[n, n]`` stacked)."""

    ins: Tensor
    outs: Tensor


class Local:
    """The *local* pattern: a question a worker asks its backend, answered without
    communication by ``local(env, w)`` for worker ``w`` (the stacked backend stacks the
    answers of all workers). ``env`` offers ``draw(w)`` (the worker's random stream),
    ``rate(w)`` (compute units per second so far) and ``peers(w, step)``."""

    pattern: ClassVar[str] = "local"

    def local(self, env, w: int):
        raise NotImplementedError


@dataclass(frozen=True)
class Neighbors(Local):
    """This worker's peers in the topology at ``step`` (no communication)."""

    feature: ClassVar[str] = "gossip"
    step: int

    def local(self, env, w):
        return env.peers(w, self.step)

    @staticmethod
    def peers(W, i: int) -> Peers:
        """Worker ``i``'s peers in mixing matrix ``W`` (``W[i, j] > 0``: ``j`` reaches ``i``)."""
        import numpy as np

        off = ~np.eye(len(W), dtype=bool)[i]
        return Peers(torch.as_tensor((W[i] > 0) & off), torch.as_tensor((W[:, i] > 0) & off))


class OneSided:
    """The *one-sided* pattern: ``update(windows)`` maps the target windows (``[mine,
    theirs]`` for a pairwise op, else ``[theirs]``) to their new values; ``update = None``
    reads. The peer yields nothing."""

    pattern: ClassVar[str] = "onesided"
    feature: ClassVar[str] = "onesided"


@dataclass(frozen=True)
class Put(OneSided):
    """Write ``x`` into worker ``peer``'s window (``SELF``: my own); the peer yields nothing."""

    peer: Any
    x: Tensor

    def update(self, windows: list[Tensor]) -> list[Tensor]:
        return [self.x]


@dataclass(frozen=True)
class Accumulate(OneSided):
    """Add ``x`` into worker ``peer``'s window, atomically."""

    peer: Any
    x: Tensor

    def update(self, windows: list[Tensor]) -> list[Tensor]:
        return [windows[0] + self.x]


@dataclass(frozen=True)
class Get(OneSided):
    """Read worker ``peer``'s window."""

    peer: Any
    update = None  # a read writes nothing


@dataclass(frozen=True)
class Exchange(OneSided):
    """Atomic pairwise averaging (AD-PSGD): both my window and ``peer``'s become
    ``(1 - weight) mine + weight theirs`` and ``weight mine + (1 - weight) theirs``; returns
    my new window."""

    peer: Any
    weight: float = 0.5

    def update(self, windows: list[Tensor]) -> list[Tensor]:
        """``[mine, theirs] -> [new mine, new theirs]`` (one window: itself)."""
        if len(windows) == 1:
            return windows
        mine, theirs = windows
        w = self.weight
        return [(1 - w) * mine + w * theirs, w * mine + (1 - w) * theirs]


ONESIDED = (Put, Accumulate, Get, Exchange)


def skipped(op, n: int):
    """What a non-member of ``op.members`` gets back (``n`` workers): its own input, untouched
    (``Grad``: NaN loss and zero gradient; ``AllGather``: zeros of the gathered shape)."""
    return op.skip(n)


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
class Play(Local):
    """This slot plays ``client`` from now on (``[]``, or ``[n]`` stacked): its ``Grad`` without
    ``part`` reads the client's data (the client's own minibatch stream) and its compute takes the
    client's time (the compute model describes clients when the run has ``n_clients``)."""

    client: Any

    def local(self, env, w):
        c = self.client
        env.play(w, int(c[w]) if isinstance(c, Tensor) and c.dim() else int(c))


@dataclass(frozen=True)
class Rand(Local):
    """A ``U[0, 1)`` draw per worker (``[]``, or ``[n]`` stacked), from the worker's own
    seeded stream, so every backend draws the same numbers."""

    def local(self, env, w):
        return env.draw(w)


@dataclass(frozen=True)
class Rate(Local):
    """This worker's measured compute speed so far: compute units per second of its own
    compute time (simulated or wall clock); 0 before the first computation. The one
    window onto time an algorithm gets (dynamic local updates)."""

    def local(self, env, w):
        return env.rate(w)


@dataclass(frozen=True)
class Start:
    """Begin a collective (``AllReduce``/``AllGather``) and go on computing; its result comes
    from ``Wait(handle)``. Only the part not hidden behind computation counts as
    communication/idle time."""

    pattern: ClassVar[str] = "start"
    feature: ClassVar[str] = "overlap"
    op: Collective


@dataclass(frozen=True)
class Handle:
    id: int


@dataclass(frozen=True)
class Wait:
    pattern: ClassVar[str] = "wait"
    feature: ClassVar[str] = "overlap"
    handle: Handle


@dataclass(frozen=True)
class Send:
    """Send ``x`` to rank ``dst`` with an integer ``tag`` (buffered: returns once the
    message has left this rank); ``codec``: the receiver gets the round-tripped payload."""

    pattern: ClassVar[str] = "send"
    feature: ClassVar[str] = "p2p"
    dst: int
    x: Tensor
    tag: int = 0
    codec: Any = None


def _seconds(owner: str, v, fix: str) -> None:
    """``v`` must be a finite number of seconds >= 0 (one line naming ``owner`` otherwise)."""
    import math

    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{owner} must be a finite number of seconds >= 0 ({fix}), got {v!r}")


@dataclass(frozen=True)
class Recv:
    """Wait for the next message from rank ``src`` (``ANY``: from anyone) with ``tag``
    (``None``: any tag). Messages from one sender arrive in the order they were sent.

    ``timeout=s`` (seconds from now) and/or ``deadline=t`` (seconds since the run's start, as
    ``Until``): give up then and return ``None`` when nothing matching arrived (``timeout=0``
    polls). Simulated seconds on SimPy, wall seconds on the real backends (feature ``timeout``)."""

    pattern: ClassVar[str] = "recv"
    feature: ClassVar[str] = "p2p"
    src: int = ANY
    tag: int | None = None
    timeout: float | None = None
    deadline: float | None = None

    def __post_init__(self):
        if self.timeout is not None:
            _seconds("Recv.timeout", self.timeout, "None: wait for ever")
        if self.deadline is not None:
            _seconds("Recv.deadline", self.deadline, "seconds since the run's start; None: no deadline")

    def limit(self, now: float) -> float | None:
        """Seconds this receive may wait from ``now`` (``None``: for ever)."""
        ends = [now + self.timeout if self.timeout is not None else None, self.deadline]
        ends = [e for e in ends if e is not None]
        return max(0.0, min(ends) - now) if ends else None


class Time:
    """The *time* pattern: wait, doing nothing, until ``resume_at(now)`` (seconds since the run's
    start: simulated on SimPy, wall clock since the start barrier on the real backends; counted as
    idle time). Feature ``time``; the result is ``None``."""

    pattern: ClassVar[str] = "time"
    feature: ClassVar[str] = "time"


@dataclass(frozen=True)
class Sleep(Time):
    """Wait ``seconds`` (a fixed-duration round, a client's think time)."""

    seconds: float

    def __post_init__(self):
        _seconds("Sleep.seconds", self.seconds, "0 returns at once")

    def resume_at(self, now: float) -> float:
        return now + float(self.seconds)


@dataclass(frozen=True)
class Until(Time):
    """Wait until ``t`` seconds since the run's start (at once if that has passed): a round's
    deadline that does not drift with the time spent in between."""

    t: float

    def __post_init__(self):
        _seconds("Until.t", self.t, "seconds since the run's start")

    def resume_at(self, now: float) -> float:
        return max(now, float(self.t))


@dataclass(frozen=True)
class Message:
    src: int
    tag: int
    x: Tensor


@dataclass(frozen=True)
class Record:
    """A row for the result table at ``step``.

    ``x`` is this worker's current model; at evaluation steps the backend averages the
    workers' ``eval_x`` (default ``x``) into the evaluated model (EASGD's centre, LSGD's
    leader), while the consensus distance always measures the spread of ``x``. ``loss``:
    the latest minibatch loss; ``metrics``: extra numeric columns. On a server,
    ``staleness=s, src=rank`` makes an ``update`` row instead (one per applied update)."""

    pattern: ClassVar[str] = "record"
    step: int
    x: Tensor
    loss: Tensor | float | None = None
    round: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    eval_x: Tensor | None = None
    staleness: float | None = None
    src: int | None = None


@dataclass(frozen=True)
class LoadState:
    """The *state* pattern: read this worker's row of keyed state ``name`` at ``key`` (an int,
    ``[]`` or ``[n]`` stacked: a client or worker id in ``0..ctx.n_clients-1``); a key never
    saved reads ``default`` (this worker's row of the initial state: a tensor or a tuple of
    tensors). The backend owns the rows (stacked: ``[K, ...]`` tensors; SimPy: a store; a real
    rank: the rows it saved last, moved to the rank that loads them next), so state outlives a
    worker playing a key."""

    pattern: ClassVar[str] = "state"
    name: str
    key: Any
    default: Any
    members: Any = None

    def skip(self, n: int):
        return self.default


@dataclass(frozen=True)
class SaveState:
    """Write this worker's row ``value`` of keyed state ``name`` at ``key`` (members only: a
    non-member's row does not change)."""

    pattern: ClassVar[str] = "state"
    name: str
    key: Any
    value: Any
    members: Any = None

    def skip(self, n: int):
        return None


@dataclass(frozen=True)
class Checkpoint:
    """The *checkpoint* pattern: a step boundary after which the run could resume (issue [27]).
    :func:`harness.parts.run` yields it after each step's ``Record`` with ``carry = (next step,
    Step, state tree)``, everything the algorithm holds; the backend may save it with its own
    state (:mod:`harness.checkpoint`) or ignore it. It costs nothing and answers ``None``."""

    pattern: ClassVar[str] = "checkpoint"
    step: int
    carry: Any = None


Op = (Grad | Compute | Collective | Gossip | Local | OneSided | Start | Wait | Send | Recv | Time | Record
      | LoadState | SaveState | Checkpoint)

PATTERNS = ("compute", "collective", "gossip", "local", "onesided", "start", "wait", "send", "recv", "time", "record",
            "state", "checkpoint")
