"""Loopback backend: ``n`` ranks as threads of one process over an in-process transport.

Why: tests drive the real per-rank interpreter (:class:`harness.backends.rank.RankDriver`)
without ``mpiexec``/``torchrun``, see every op, and inject a failure into one rank's next
transport call (as torchft's fake process groups do). :func:`run` (``loopback_run.py``) runs a
whole config, like ``run_rank`` without the files.

* Collectives (``barrier``, ``bcast_obj``, ``gather_obj`` over all ranks; ``allreduce_sum``,
  ``allgather``, ``gather_eval`` over the ``setup`` workers) meet in call order per member
  group; every rank reduces the values in ascending rank order (reproducible sums). Objects
  are pickled, as the real gathers do.
* ``send`` is buffered; ``recv`` takes a rank or ``ANY`` (-1) and a tag or any tag; one
  sender's messages arrive in order (MPI matching). ``exchange`` has its own channel.
* Nothing waits for ever: needing a peer that failed or closed raises :class:`PeerFailed`
  naming it; mismatched collectives raise; when every live rank is blocked they all raise
  :class:`Deadlock`; ``abort`` ends every wait; so does ``timeout_s``.

A new ``Transport`` method: ``self._collective(...)``, or take ``world.cv``, call
``self._enter(name)`` (abort, injected failures) and use ``_post``/``_take``/``world.wait``.
"""
from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import torch

from harness.backends.transport import Transport


class LoopbackError(RuntimeError):
    """A loopback world cannot complete an op (timeout, mismatched collectives, misuse)."""


class PeerFailed(LoopbackError):
    """An op needed a rank that failed or closed."""

    def __init__(self, rank: int, why: str, what: str):
        super().__init__(f"rank {rank} {why}; {what} needed it")
        self.rank = rank


class Deadlock(LoopbackError):
    """Every live rank is blocked: nothing can ever change."""


class Aborted(LoopbackError):
    """A rank called ``abort`` (or the run timed out)."""


class LoopbackWorld:
    """State shared by the ranks of one in-process world; every field is guarded by ``cv``."""

    def __init__(self, size: int, timeout_s: float = 60.0):
        self.size, self.timeout_s = size, timeout_s
        self.cv = threading.Condition()
        self.slots: dict = {}  # (group, members, seq) -> collective in progress
        self.mail: list[list] = [[] for _ in range(size)]  # per receiver, arrival order: (src, channel, tag, x)
        self.gone: dict[int, str] = {}  # rank -> "failed: ..." / "closed"
        self.failed: list[int] = []  # failed ranks, first failure first
        self.faults: dict[int, list] = {}  # rank -> [op, calls to skip, exception]
        self.waiting: dict[int, str] = {}  # blocked ranks (since the last change) -> what they wait for
        self.aborted: str | None = None
        self.deadlock: str | None = None
        self.windows: dict[int, torch.Tensor] = {}  # rank -> its one-sided window

    def inject(self, rank: int, exc: BaseException | None = None, op: str | None = None, after: int = 0) -> None:
        """``rank``'s next call of transport method ``op`` (``None``: any but ``describe``,
        ``close``, ``abort``), after ``after`` such calls, raises ``exc``; the rank is failed then.
        One pending failure per rank: injecting again replaces it."""
        if not 0 <= rank < self.size:
            raise ValueError(f"inject: rank {rank} is not in 0..{self.size - 1}")
        with self.cv:
            self.faults[rank] = [op, after, exc or RuntimeError(f"injected failure on rank {rank}")]

    def fail(self, rank: int, why: str) -> None:
        """``rank`` is dead: peers that need it get :class:`PeerFailed`."""
        with self.cv:
            if rank not in self.gone:
                self.gone[rank] = f"failed ({why})"
                self.failed.append(rank)
                self.changed()

    def abort(self, msg: str) -> None:
        with self.cv:
            self.aborted = self.aborted or msg
            self.changed()

    def changed(self) -> None:
        """After any state change (``cv`` held): waiters look again; only ranks that looked since
        count as blocked, so a full ``waiting`` is a true deadlock."""
        self.waiting.clear()
        self.cv.notify_all()

    def wait(self, rank: int, what: str, ready, needs):
        """Block (``cv`` held) until ``ready()`` is not None and return it; raise when a rank
        in ``needs()`` is gone, on abort, deadlock or timeout."""
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                got = ready()
                if got is not None:
                    return got
                if self.aborted:
                    raise Aborted(self.aborted)
                if self.deadlock:  # before PeerFailed: a deadlocked peer may have closed since
                    raise Deadlock(self.deadlock)
                for j in needs():
                    if j in self.gone:
                        raise PeerFailed(j, self.gone[j], f"rank {rank}'s {what}")
                self.waiting[rank] = what
                live = set(range(self.size)) - set(self.gone)
                if live <= set(self.waiting):
                    self.deadlock = "deadlock: " + "; ".join(f"rank {r} waits in {w}" for r, w in sorted(self.waiting.items()))
                    self.changed()
                    raise Deadlock(self.deadlock)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LoopbackError(f"rank {rank}: no progress for {self.timeout_s:g} s in {what}")
                self.cv.wait(left)
        finally:
            self.waiting.pop(rank, None)


class LoopbackTransport(Transport):
    """Rank ``rank`` of ``world``; one instance per rank thread."""

    name = "loopback"

    def __init__(self, world: LoopbackWorld, rank: int):
        self.world, self.rank, self.size = world, rank, world.size
        self.all = tuple(range(world.size))
        self.workers = self.all
        self.seq: dict[str, int] = {}  # group -> collectives this rank has entered on it

    def describe(self) -> str:
        return f"loopback: {self.size} ranks as threads of one process"

    def _enter(self, name: str) -> None:  # cv held
        w = self.world
        if w.aborted:
            raise Aborted(w.aborted)
        if self.rank in w.gone:
            raise LoopbackError(f"rank {self.rank} is {w.gone[self.rank]}; it cannot call {name}")
        f = w.faults.get(self.rank)
        if f is not None and f[0] in (None, name):
            f[1] -= 1
            if f[1] < 0:
                del w.faults[self.rank]
                w.fail(self.rank, f"{type(f[2]).__name__}: {f[2]}")
                raise f[2]

    def _collective(self, kind: str, group: str, value) -> list:
        """Deposit ``value`` in this rank's next collective on ``group`` ("world": all ranks,
        "workers": the ``setup`` ranks; kept apart like the real backends' communicators); the
        members' values in rank order once all have arrived (takes ``cv`` itself)."""
        w, members = self.world, self.all if group == "world" else self.workers
        with w.cv:
            self._enter(kind)
            seq = self.seq[group] = self.seq.get(group, 0) + 1
            slot = w.slots.setdefault((group, members, seq), {"kind": kind, "by": self.rank, "vals": {}, "read": 0})
            if slot["kind"] != kind:
                raise LoopbackError(f"mismatched collectives: rank {self.rank} called {kind} while rank {slot['by']} "
                                    f"called {slot['kind']} (collective {seq} over ranks {list(members)})")
            slot["vals"][self.rank] = value
            w.changed()
            vals = w.wait(self.rank, f"{kind} (collective {seq})",
                          lambda: slot["vals"] if len(slot["vals"]) == len(members) else None,
                          lambda: [j for j in members if j not in slot["vals"]])
            slot["read"] += 1
            if slot["read"] == len(members):  # the last reader clears the slot
                del w.slots[(group, members, seq)]
            return [vals[j] for j in members]

    def _post(self, dst: int, channel: str, tag: int, x) -> None:  # cv held; x: a tensor or (tensor, bytes)
        x = (x[0].detach().clone(), x[1]) if isinstance(x, tuple) else x.detach().clone()
        self.world.mail[dst].append((self.rank, channel, tag, x))
        self.world.changed()

    def _take(self, src: int, channel: str, tag: int | None, what: str):
        """The first message in this rank's mailbox from ``src`` (-1: any) with ``tag`` (cv held)."""
        w, box = self.world, self.world.mail[self.rank]

        def ready():
            for k, m in enumerate(box):
                if m[1] == channel and (src < 0 or m[0] == src) and (tag is None or m[2] == tag):
                    return box.pop(k)
            return None

        def needs():  # ANY is hopeless only when every other rank is gone
            others = [j for j in self.all if j != self.rank]
            return [src] if src >= 0 else (others if all(j in w.gone for j in others) else [])

        return w.wait(self.rank, what, ready, needs)

    def setup(self, workers):
        with self.world.cv:
            self._enter("setup")
            self.workers = tuple(workers)

    def barrier(self):
        self._collective("barrier", "world", None)

    def bcast_obj(self, obj):
        return pickle.loads(self._collective("bcast_obj", "world", pickle.dumps(obj))[0])

    def gather_obj(self, obj):
        got = self._collective("gather_obj", "world", pickle.dumps(obj))  # pickled, as the real gathers
        return [pickle.loads(b) for b in got] if self.rank == 0 else None

    def allreduce_sum(self, x):
        vals = self._collective("allreduce_sum", "workers", x.detach().clone())
        out = vals[0].clone()
        for v in vals[1:]:  # ascending rank order: reproducible sums
            out += v
        return out

    def allgather(self, x):
        return torch.stack(self._collective("allgather", "workers", x.detach().clone()))

    def gather_eval(self, x, counters):
        vals = self._collective("gather_eval", "workers", (x.detach().clone(), np.array(counters, dtype=np.float64)))
        if self.rank != self.workers[0]:
            return None
        return torch.stack([v[0] for v in vals]), np.stack([v[1] for v in vals])

    def exchange(self, x, outs, ins):
        with self.world.cv:
            self._enter("exchange")
            for j, t in outs.items():
                self._post(j, "gossip", t, x)
            return {j: self._take(j, "gossip", t, f"exchange (tag {t}) from rank {j}")[3] for j, t in ins.items()}

    def send(self, dst, x, tag, nbytes=None):
        with self.world.cv:
            self._enter("send")
            if not 0 <= dst < self.size:
                raise LoopbackError(f"send: dst={dst} is not a rank in 0..{self.size - 1}")
            self._post(dst, "p2p", tag, (x, x.numel() * x.element_size() if nbytes is None else nbytes))

    def recv(self, src, tag):
        t0 = time.perf_counter()
        with self.world.cv:
            self._enter("recv")
            s, _, got_tag, (x, nbytes) = self._take(src, "p2p", tag,
                                                    f"recv from {'any rank' if src < 0 else f'rank {src}'}")
        return s, got_tag, x, time.perf_counter() - t0, nbytes

    def recv_within(self, src, tag, seconds):
        """``recv``, or ``None`` after ``seconds`` without a match. A rank waiting with a timeout is
        never counted as blocked (it wakes up by itself), so it cannot make a deadlock."""
        t0, w = time.perf_counter(), self.world
        end, box = time.monotonic() + seconds, self.world.mail[self.rank]
        with w.cv:
            self._enter("recv")
            while True:
                k = next((k for k, m in enumerate(box) if m[1] == "p2p" and (src < 0 or m[0] == src)
                          and (tag is None or m[2] == tag)), None)
                if k is not None:
                    s, _, got_tag, (x, nbytes) = box.pop(k)
                    return s, got_tag, x, time.perf_counter() - t0, nbytes
                if w.aborted:
                    raise Aborted(w.aborted)
                left = end - time.monotonic()
                if left <= 0:
                    return None
                w.cv.wait(left)

    def win_create(self, x):
        """Every rank's window: one tensor like ``x`` in the shared world (one lock for all,
        so every update is atomic)."""
        self._collective("win_create", "world", None)
        with self.world.cv:
            self.world.windows[self.rank] = x.detach().clone()

    def win_update(self, ranks, fn):
        with self.world.cv:
            self._enter("win_update")
            win = self.world.windows
            missing = [r for r in ranks if r not in win]
            if missing:
                raise LoopbackError(f"win_update: ranks {missing} have no window (win_create was not called)")
            vals = [win[r].clone() for r in ranks]
            if fn is None:
                return vals
            new = [v.detach().clone() for v in fn(vals)]
            for r, v in zip(ranks, new):
                win[r] = v
            return new

    def finish(self):  # sends are delivered at once: nothing is in flight
        with self.world.cv:
            self._enter("finish")

    def close(self):
        with self.world.cv:
            if self.rank not in self.world.gone:
                self.world.gone[self.rank] = "closed"
                self.world.changed()

    def abort(self, msg):
        self.world.abort(f"rank {self.rank} aborted: {msg}")
        raise Aborted(self.world.aborted)


class RunFailed(LoopbackError):
    """A loopback run ended with an error; the message is the first failing rank's."""

    def __init__(self, msg: str, rank: int, errors: dict[int, str]):
        super().__init__(msg)
        self.rank, self.errors = rank, errors


def run(cfg, **kw):
    """Run a whole config in this process, one thread per rank, with the real ``RankDriver``:
    :func:`harness.backends.loopback_run.run` (same arguments)."""
    from harness.backends.loopback_run import run as run_

    return run_(cfg, **kw)
