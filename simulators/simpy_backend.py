"""Event-driven simulation on SimPy: one SimPy process per worker, virtual time.

Each worker runs its own instance of the algorithm generator on its ``[d]`` model. The
driver forwards every yielded op to a handler that is itself a SimPy generator. The
handlers only *synchronise*; what an op computes comes from the op (``combine``, ``mix``,
codecs) and what it costs from :mod:`harness.cost`:

* ``Grad``/``Compute``: hold the worker for a drawn compute time (members only);
* collectives: a barrier keyed by (member set, sequence number within that set); the
  last (or ``quorum``-th) arrival combines the payloads in worker order, everybody leaves
  ``cost`` seconds later;
* ``Gossip``: send the model to each out-neighbour (arrives after ``alpha + b/beta``),
  wait for every in-neighbour's message with the same per-edge sequence number, mix;
* one-sided ops: the initiator spends the op's cost, then reads/writes the target's
  window atomically (the target yields nothing).

Algorithms registered with ``server=True`` run on ``n + 1`` ranks: rank 0 is the server,
rank ``r >= 1`` is worker ``r - 1``; collectives span the workers. ``Send``/``Recv`` with
NIC contention live in :mod:`simulators.simpy_p2p`.
"""
from __future__ import annotations

import sys
from dataclasses import replace

import simpy
import torch

from harness import ops
from harness.keyed import DictStore
from simulators.base import BackendError, Simulator
from simulators.simpy_p2p import P2PMixin


_TIMELESS = ("record", "local", "state", "checkpoint")  # ops that take no simulated time


class _Dead(Exception):
    """Raised inside a crashed worker's process (fault policy ``continue``) to end it."""


class _Collective:
    def __init__(self, env):
        self.done = env.event()
        self.payloads: dict[int, torch.Tensor] = {}
        self.sizes: dict[int, int] = {}
        self.arrivals = 0
        self.started = False
        self.failed: ops.WorkerFailed | None = None


class SimPyBackend(P2PMixin, Simulator):
    name = "simpy"

    # the event loop and what lives in it: rebuilt on resume, never saved (harness.checkpoint)
    TRANSIENT = Simulator.TRANSIENT + ("env", "procs", "collectives", "mailboxes", "uplinks", "downlinks", "inboxes",
                                       "handles", "ck_barrier")

    def execute(self, x0: torch.Tensor) -> torch.Tensor:
        resumed = self.resumed  # {rank: carry} of a checkpoint (Simulator.restore), else None
        self.env = simpy.Environment(initial_time=self.ck_time if resumed is not None else 0)
        if resumed is None:
            self.start(x0)
            self.final: dict[int, torch.Tensor] = {}
            self.seq: dict[tuple, int] = {}  # (member set, worker) -> collectives done over that set
            self.sent: dict[tuple, int] = {}  # (src, dst) -> gossip messages sent on that edge
            self.got: dict[tuple, int] = {}  # (src, dst) -> gossip messages received on that edge
            self.windows = [x0.clone() for _ in range(self.n)]
            self._link_cache = {}
            self.holding = [None] * self.ranks  # when each rank's current compute ends
            self.alive = set(range(self.n))
            self.sat_out: set[int] = set()  # ranks whose last Grad skipped them (members=)
            self.all_ids = tuple(range(self.n))
            self.store = DictStore(self.run.ctx.n_clients)  # keyed state: one store, the server side
            self.synced = [False] * self.ranks  # since its last collective over all workers, no timed op
            self.ck_due: dict[int, list] = {}  # step -> [decision, ranks still to ask]: one decision per step
            self.ck_broken = False  # a rank broke lock-step at a checkpoint: no more checkpoints
        kept = (self.loss_rng, self.dropped) if resumed is not None else None
        self.collectives: dict[tuple, _Collective] = {}
        self.mailboxes = [simpy.FilterStore(self.env) for _ in range(self.ranks)]
        self._init_p2p()
        if kept is not None:  # the message-loss stream continues
            self.loss_rng, self.dropped = kept
        self.handles = [[] for _ in range(self.ranks)]
        self.ck_barrier: dict[int, tuple] = {}
        self.handlers = self.patterns()
        start = (lambda r: x0.clone()) if resumed is None else (lambda r: resumed[r][1].x)
        live = range(self.ranks) if resumed is None else sorted(resumed)
        self.procs = procs = [self.env.process(self._process(r, start(r))) if r in live else None
                              for r in range(self.ranks)]
        self.env.run()
        stuck = [r for r, p in enumerate(procs) if p is not None and not p.triggered]
        if stuck:
            raise RuntimeError(f"simulation deadlocked: ranks {stuck} wait on a communication nobody completes "
                               "(do all workers yield the same collectives in the same order?)")
        return torch.stack([self.final[r] for r in range(self.offset, self.ranks) if r in self.final])

    def patterns(self) -> dict:
        """One handler per op pattern (:data:`harness.ops.PATTERNS`)."""
        return {"compute": self._compute, "collective": self._collective, "gossip": self._gossip,
                "local": self._local, "send": self._send, "recv": self._recv, "record": self._record,
                "start": self._start, "wait": self._wait, "onesided": self._onesided, "state": self._state,
                "time": self._time, "checkpoint": self._checkpoint}

    def _process(self, r, x):
        ctx = replace(self.run.ctx, index=torch.tensor(max(self.w(r), 0)), rank=r,
                      role="server" if self.w(r) < 0 else "worker",
                      resume=None if self.resumed is None else self.resumed[r])
        gen = self.run.algorithm(ctx, x, **self.run.params)
        value, failure = None, None
        while True:
            try:
                op = gen.throw(failure) if failure else gen.send(value)
            except StopIteration as stop:
                self.final[r] = stop.value
                return
            failure = None
            op = ops.with_wire(op, self.run.task.wire_codec)
            pattern = getattr(op, "pattern", None)
            handler = self.handlers.get(pattern)
            if handler is None:
                raise TypeError(f"algorithm yielded {op!r}, which is not an op of harness.ops")
            if pattern not in _TIMELESS:
                self.synced[r] = False
                if self.ck_barrier:  # others wait to save a checkpoint this rank will not reach now
                    self._ck_cancel(r)
            try:
                value = yield from handler(r, op)
            except ops.WorkerFailed as e:  # the algorithm decides: thrown in at its yield point
                failure = e
            except _Dead:
                gen.close()
                return

    def _member(self, r, op) -> tuple[tuple[int, ...], bool]:
        ids = self.all_ids if op.members is None else ops.member_ids(op.members, self.n)
        return ids, self.w(r) in ids

    # -- compute ---------------------------------------------------------------------------
    def _hold(self, r, cost):
        w, now = self.w(r), self.env.now
        dt, down = self.compute_seconds(w, now, cost) if w >= 0 else (self.run.compute.mean_s * cost, 0.0)
        f = self.run.faults
        if w >= 0 and f is not None and f.spec.policy == "continue" and f.next_crash(w) <= now + dt:
            yield from self._crash(r, max(f.next_crash(w), now))
        self.stats.compute_s[r] += dt
        self.units[r] += cost
        self.stats.idle_s[r] += down  # down after a crash: neither computing nor communicating
        dt += down
        self.holding[r] = self.env.now + dt
        try:
            yield self.env.timeout(dt)
        except simpy.Interrupt:  # a quorum all-reduce finished without us: stop computing
            self.stats.compute_s[r] -= self.holding[r] - self.env.now
        self.holding[r] = None
        self.stats.time[r] = self.env.now

    def _compute(self, r, op):
        if not isinstance(op, ops.Grad):  # work without data
            if self._member(r, op)[1]:
                yield from self._hold(r, op.cost)
            return None
        w = self.w(r)
        if w < 0:
            raise ValueError("Grad: the server has no data; only workers compute gradients")
        if not self._member(r, op)[1]:
            self.sat_out.add(r)  # its NaN loss is no divergence (Recorder.check_loss)
            return ops.skipped(op, self.n)
        self.sat_out.discard(r)
        out = self.run.task.loss_and_grad(op.x, self.batches(op, [w])[0], w)
        yield from self._hold(r, op.batches)
        return out

    # -- collectives -----------------------------------------------------------------------
    def _start(self, r, op):
        """Arrive at the collective now, hand back a handle; ``_wait`` collects."""
        if getattr(op.op, "pattern", None) != "collective":
            raise BackendError(f"Start: only AllReduce/AllGather can be started, got {type(op.op).__name__}")
        gen = self._collective(r, op.op, pending=True)
        try:
            pending = next(gen)  # runs the arrival, stops where the blocking version would wait
        except StopIteration as stop:  # a non-member: nothing to wait for
            pending, gen = None, stop.value
        self.handles[r].append((gen, pending))
        return ops.Handle(len(self.handles[r]) - 1)
        yield  # a handler is a generator even when it never waits

    def _wait(self, r, op):
        gen, pending = self.handles[r][op.handle.id]
        if pending is None:
            return gen
        event, c = pending
        arrived = self.env.now
        result = yield event
        self.stats.finish_comm(r, arrived, self.env.now, c.cost.seconds)
        try:
            gen.send(result)
        except StopIteration as stop:
            return stop.value

    def _collective(self, r, op, pending=False):
        """A barrier keyed by (member set, this worker's count of collectives over it): the
        ``quorum``-th (default: last) arrival combines the payloads in; everybody leaves
        ``cost`` seconds after it."""
        ids, member = self._member(r, op)
        quorum = getattr(op, "quorum", None)
        if not member:
            return ops.skipped(op, self.n)
        w = self.w(r)
        seq = self.seq.get((ids, w), 0)
        self.seq[(ids, w)] = seq + 1
        key = (ids, seq)
        c = self.collectives.setdefault(key, _Collective(self.env))
        if c.failed is not None:
            raise c.failed
        c.arrivals += 1
        if not c.started:
            c.payloads[w], c.sizes[w] = ops.wire(op.x, op.codec)
        arrived = self.env.now
        live = [i for i in ids if i in self.alive]
        if c.arrivals == min(quorum or len(ids), len(live)):
            c.started = True
            got = sorted(c.payloads)
            value = op.combine([c.payloads[j] for j in got], got)
            size = max(c.sizes.values())
            c.cost = op.cost(self.run.network, [c.sizes.get(j, size) for j in ids], ids)
            if quorum:
                value = ops.Quorum(value, torch.tensor([i in c.payloads for i in range(self.n)]))
            self.env.process(self._succeed_later(c.done, c.cost.seconds, value, key if quorum else None))
        if c.arrivals == len(live):
            del self.collectives[key]
        if pending:  # non-blocking: Wait accounts for the exposed time, then resumes us
            result = yield (c.done, c)  # the cost is known once the collective has started
        else:
            result = yield c.done
        self.stats.add_traffic(r, c.cost.traffic[ids.index(w)])
        if not pending:
            self.stats.finish_comm(r, arrived, self.env.now, c.cost.seconds)
            self.synced[r] = ids == self.all_ids  # every worker leaves it now: a candidate for a checkpoint
        return result.clone() if isinstance(result, torch.Tensor) else ops.Quorum(result.value.clone(), result.arrived)

    def _crash(self, r, at):
        """Worker of rank ``r`` dies at ``at`` (policy continue): pending collectives fail."""
        self.stats.compute_s[r] += at - self.env.now
        yield self.env.timeout(at - self.env.now)
        w = self.w(r)
        self.stats.time[r] = at
        self.alive.discard(w)
        self.run.recorder.event(w, "failed", at, self.stats, slot=r)
        self.run.recorder.drop(w, self.stats)
        # The first collective over all workers it never reached fails for everybody (same
        # key on every survivor, so their sequence numbers stay aligned when they re-issue).
        c = self.collectives.setdefault((self.all_ids, self.seq.get((self.all_ids, w), 0)), _Collective(self.env))
        if not c.started:
            c.failed = ops.WorkerFailed(w, at)
            c.done.defused = True  # nobody may be waiting yet
            c.done.fail(c.failed)
        raise _Dead()

    def _succeed_later(self, event, delay, value, quorum_key=None):
        yield self.env.timeout(delay)
        event.succeed(value)
        if quorum_key is not None:  # late members still computing for this round stop now
            ids, seq = quorum_key
            for w in ids:
                r = w + self.offset
                if self.holding[r] is not None and self.seq.get((ids, w), 0) == seq:
                    self.procs[r].interrupt()

    # -- gossip and peers ------------------------------------------------------------------
    def _gossip(self, r, op):
        topo, w, o = self.topology(), self.w(r), self.offset
        if w < 0:
            raise ValueError("Gossip: the server rank is not a node of the topology")
        outs, ins = topo.out_neighbors(w, op.step), topo.in_neighbors(w, op.step)
        payload, nbytes = ops.wire(op.x, op.codec)
        L = self._links(nbytes)
        arrived = self.env.now
        for j in outs:
            k = self.sent.get((w, j), 0)
            self.sent[(w, j)] = k + 1
            self.env.process(self._deliver(j + o, (k, w), (payload, nbytes), L[j, w]))
        got, sizes = {w: op.x}, {}
        for j in ins:
            k = self.got.get((j, w), 0)
            self.got[(j, w)] = k + 1
            msg = yield self.mailboxes[r].get(lambda m, tag=(k, j): m[0] == tag)
            got[j], sizes[j] = msg[1]
        row = topo.W(op.step)[w]
        order = sorted(got)
        mixed = op.mix([torch.tensor(float(row[j]), dtype=op.x.dtype) for j in order], [got[j] for j in order])
        t = self.run.network.gossip(nbytes, len(outs), len(ins))
        self.stats.add_traffic(r, t._replace(recv=float(sum(sizes.values()))))
        slowest = max((self._links(sizes[j])[w, j] for j in ins), default=0.0)
        self.stats.finish_comm(r, arrived, self.env.now, slowest)
        return mixed

    def _links(self, nbytes):
        if nbytes not in self._link_cache:
            self._link_cache[nbytes] = self.run.network.link_matrix(nbytes, self.n)
        return self._link_cache[nbytes]

    def _deliver(self, dst, tag, x, delay):
        yield self.env.timeout(delay)
        yield self.mailboxes[dst].put((tag, x))


    def _onesided(self, r, op):
        """The initiator pays the op's cost, then the windows change atomically."""
        w = self.w(r)
        peer = w if op.peer == ops.SELF else int(op.peer)
        if w < 0 or not 0 <= peer < self.n:
            raise ValueError(f"{type(op).__name__}.peer: {op.peer} is not a worker 0..{self.n - 1} (workers only)")
        kind = type(op).__name__.lower()
        x = getattr(op, "x", self.windows[peer])
        nbytes = x.numel() * x.element_size()
        seconds, traffic = self.run.network.onesided(kind, nbytes, r, peer + self.offset)
        arrived = self.env.now
        if seconds:
            yield self.env.timeout(seconds)
        self.stats.add_traffic(r, traffic)
        self.stats.finish_comm(r, arrived, self.env.now, seconds)
        win = self.windows
        targets = [w, peer] if isinstance(op, ops.Exchange) and peer != w else [peer]
        if op.update is None:  # Get
            return win[peer]
        for t, v in zip(targets, op.update([win[t] for t in targets])):
            win[t] = v
        return win[w] if isinstance(op, ops.Exchange) else None

    # -- the rest --------------------------------------------------------------------------
    def _local(self, r, op):
        return op.local(self, self.w(r))
        yield  # a handler is a generator even when it never waits

    def _checkpoint(self, r, op):
        """Quiescent when every live worker left a collective over all workers and did nothing timed
        since: then all are at this step at the same instant, no message is in flight, and they wait
        here for each other (zero simulated time) while the state is saved. The first rank to ask
        decides for the step, so all ranks agree."""
        p = self.policy
        if p is None or not p.on:
            return None
        live = [w + self.offset for w in sorted(self.alive)]
        asked = self.ck_due.get(op.step)
        if asked is None:  # the others are at this instant too, resumed by the same collective
            quiet = self.synced[r] and not self.offset and not self.ck_broken
            asked = self.ck_due[op.step] = [p.due(op.step, quiet), len(live)]
        asked[1] -= 1
        if asked[1] == 0:
            del self.ck_due[op.step]
        if not asked[0]:
            return None
        event, carries = self.ck_barrier.setdefault(op.step, (self.env.event(), {}))
        carries[r] = op.carry
        if len(carries) < len(live):
            yield event
            return None
        del self.ck_barrier[op.step]
        self.ck_time = self.env.now
        self.save_checkpoint(op.step, carries, self.env.now)  # Preempted ends env.run() here
        event.succeed()
        return None
        yield

    def _ck_cancel(self, r):
        """A rank did a timed op between the collective and the step's end (no lock-step method
        does): release the waiting ranks at this same instant, and checkpoint no more in this run
        (the wait could otherwise move a clock)."""
        for step, (event, carries) in list(self.ck_barrier.items()):
            if r not in carries:
                del self.ck_barrier[step]
                event.succeed()
                self.ck_broken = True
                print(f"harness: note: checkpoints are off for this run: rank {r} does timed work after the "
                      "round's collective, so SimPy finds no quiescent step", file=sys.stderr, flush=True)

    def _state(self, r, op):
        if not self._member(r, op)[1]:
            return op.skip(self.n)
        if isinstance(op, ops.LoadState):
            return self.store.load(op.name, op.key, op.default)
        self.store.save(op.name, op.key, op.value)
        return None
        yield  # a handler is a generator even when it never waits

    def _record(self, r, op):
        rec, w = self.run.recorder, self.w(r)
        if op.staleness is not None:
            rec.update(op.src - self.offset if op.src is not None else w, op.step, op.staleness, self.stats, slot=r)
        elif w < 0:  # the server's model is the global model
            if rec.is_eval(op.step):
                ex = op.x if op.eval_x is None else op.eval_x
                rec.consensus(op.step, op.round, op.x.unsqueeze(0), self.stats.counters(), ex.unsqueeze(0),
                              ids=[-1])
        else:
            rec.worker(w, op.step, op.round, self.stats, op.loss, op.metrics, slot=r)
            # a non-finite loss raises Diverged under on_divergence: stop, which ends env.run() at once
            rec.check_loss(w, op.step, op.loss, self.stats, slots=r, skip=() if r not in self.sat_out else (w,))
            if not self.offset:
                rec.offer(w, op.step, op.round, op.x, self.stats, op.eval_x)
        return None
        yield  # a handler is a generator even when it never waits
