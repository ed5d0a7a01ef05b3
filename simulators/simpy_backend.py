"""Event-driven simulation on SimPy: one SimPy process per worker, virtual time.

Each worker runs its own instance of the algorithm generator on its ``[d]`` model. The
driver forwards every yielded op to a handler that is itself a SimPy generator:

* ``Grad``/``Compute``: hold the worker for a drawn compute time;
* ``AllReduce``: a barrier keyed by the worker's collective count; the last arrival
  computes the result, everybody leaves at ``max_j T_j + ring cost``;
* ``Gossip``: send the model to each out-neighbour (arrives after ``alpha + b/beta``),
  wait for every in-neighbour's message of the same step, mix with ``W(step)``.

Messages are tagged by step, so a worker that runs ahead never mixes the wrong round.
Algorithms registered with ``server=True`` run on ``n + 1`` ranks: rank 0 is the server,
rank ``r >= 1`` is worker ``r - 1``; collectives span the workers. ``Send``/``Recv`` with
NIC contention live in :mod:`simulators.simpy_p2p`.
"""
from __future__ import annotations

from dataclasses import replace

import simpy
import torch

from harness import comm, ops
from simulators.base import Simulator
from simulators.simpy_p2p import P2PMixin


class _Dead(Exception):
    """Raised inside a crashed worker's process (fault policy ``continue``) to end it."""


class _Collective:
    def __init__(self, env):
        self.done = env.event()
        self.payloads: dict[int, torch.Tensor] = {}
        self.arrivals = 0
        self.started = False
        self.failed: ops.WorkerFailed | None = None


class SimPyBackend(P2PMixin, Simulator):
    name = "simpy"

    def execute(self, x0: torch.Tensor) -> torch.Tensor:
        self.env = simpy.Environment()
        self.start(x0)
        self.final: dict[int, torch.Tensor] = {}
        self.coll_count = [0] * self.ranks
        self.collectives: dict[int, _Collective] = {}
        self.mailboxes = [simpy.FilterStore(self.env) for _ in range(self.ranks)]
        self._link_cache = {}
        self._init_p2p()
        self.holding = [None] * self.ranks  # when each rank's current compute ends
        self.n_alive = self.n
        self.handles = [[] for _ in range(self.ranks)]
        self.units = [0.0] * self.ranks  # compute units done, for Rate
        self.procs = procs = [self.env.process(self._process(r, x0.clone())) for r in range(self.ranks)]
        self.env.run()
        stuck = [r for r, p in enumerate(procs) if not p.triggered]
        if stuck:
            raise RuntimeError(f"simulation deadlocked: ranks {stuck} wait on a communication nobody completes "
                               "(do all workers yield the same collectives in the same order?)")
        return torch.stack([self.final[r] for r in range(self.offset, self.ranks) if r in self.final])

    def _process(self, r, x):
        ctx = replace(self.run.ctx, index=torch.tensor(max(self.w(r), 0)), rank=r,
                      role="server" if self.w(r) < 0 else "worker")
        gen = self.run.algorithm(ctx, x, **self.run.params)
        handlers = {ops.Grad: self._grad, ops.Compute: self._compute, ops.AllReduce: self._allreduce,
                    ops.AllGather: self._allgather, ops.Gossip: self._gossip, ops.Rand: self._rand,
                    ops.Send: self._send, ops.Recv: self._recv, ops.Record: self._record,
                    ops.Start: self._start, ops.Wait: self._wait, ops.Rate: self._rate}
        value, failure = None, None
        while True:
            try:
                op = gen.throw(failure) if failure else gen.send(value)
            except StopIteration as stop:
                self.final[r] = stop.value
                return
            failure = None
            try:
                value = yield from handlers[type(op)](r, op)
            except ops.WorkerFailed as e:  # the algorithm decides: thrown in at its yield point
                failure = e
            except _Dead:
                gen.close()
                return

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

    def _grad(self, r, op):
        if self.w(r) < 0:
            raise ValueError("Grad: the server has no data; only workers compute gradients")
        out = self.run.task.loss_and_grad(op.x, self.run.sampler.worker(self.w(r), op.batches))
        yield from self._hold(r, op.batches)
        return out

    def _compute(self, i, op):
        yield from self._hold(i, op.cost)

    def _allreduce(self, i, op, pending=False):
        nbytes = comm.payload_bytes(op.x, stacked=False)
        reduce = (lambda t: t.mean(0)) if op.op == "mean" else (lambda t: t.sum(0))
        return (yield from self._collective(i, op.x, reduce, comm.ring_allreduce(nbytes, self.n),
                                            self.run.network.allreduce_time(nbytes, self.n), op.quorum, pending))

    def _allgather(self, i, op, pending=False):
        nbytes = comm.payload_bytes(op.x, stacked=False)
        return (yield from self._collective(i, op.x, lambda t: t, comm.ring_allgather(nbytes, self.n),
                                            self.run.network.ring_allgather(nbytes, self.n), None, pending))

    def _start(self, r, op):
        """Arrive at the collective now, hand back a handle; ``_wait`` collects."""
        gen = {ops.AllReduce: self._allreduce, ops.AllGather: self._allgather}[type(op.op)](r, op.op, pending=True)
        pending = next(gen)  # runs the arrival, stops where the blocking version would wait
        self.handles[r].append((gen, pending))
        return ops.Handle(len(self.handles[r]) - 1)
        yield  # a handler is a generator even when it never waits

    def _wait(self, r, op):
        gen, (event, cost) = self.handles[r][op.handle.id]
        arrived = self.env.now
        result = yield event
        self.stats.finish_comm(r, arrived, self.env.now, cost)
        try:
            gen.send(result)
        except StopIteration as stop:
            return stop.value

    def _collective(self, i, x, combine, traffic, cost, quorum=None, pending=False):
        """A barrier keyed by the worker's collective count: the ``quorum``-th (default: last)
        arrival combines the payloads in; everybody leaves ``cost`` seconds after it."""
        key = self.coll_count[i]
        self.coll_count[i] += 1
        c = self.collectives.setdefault(key, _Collective(self.env))
        if c.failed is not None:
            raise c.failed
        c.arrivals += 1
        if not c.started:
            c.payloads[self.w(i)] = x
        arrived = self.env.now
        if c.arrivals == min(quorum or self.n, self.n_alive):
            c.started = True
            result = combine(torch.stack([c.payloads[j] for j in sorted(c.payloads)]))
            self.env.process(self._succeed_later(c.done, cost, result, key if quorum else None))
        if c.arrivals == self.n_alive:
            del self.collectives[key]
        if pending:  # non-blocking: Wait accounts for the exposed time, then resumes us
            self.stats.add_traffic(i, traffic)
            result = yield (c.done, cost)
            return result.clone()
        result = yield c.done
        self.stats.add_traffic(i, traffic)
        self.stats.finish_comm(i, arrived, self.env.now, cost)
        return result.clone()

    def _crash(self, r, at):
        """Worker of rank ``r`` dies at ``at`` (policy continue): pending collectives fail."""
        self.stats.compute_s[r] += at - self.env.now
        yield self.env.timeout(at - self.env.now)
        w = self.w(r)
        self.stats.time[r] = at
        self.n_alive -= 1
        self.run.recorder.event(w, "failed", at, self.stats, slot=r)
        self.run.recorder.drop(w, self.stats)
        # The first collective it never reached fails for everybody (same key on every
        # survivor, so their collective counts stay aligned when they re-issue the op).
        c = self.collectives.setdefault(self.coll_count[r], _Collective(self.env))
        if not c.started:
            c.failed = ops.WorkerFailed(w, at)
            c.done.defused = True  # nobody may be waiting yet
            c.done.fail(c.failed)
        raise _Dead()

    def _succeed_later(self, event, delay, value, quorum_key=None):
        yield self.env.timeout(delay)
        event.succeed(value)
        if quorum_key is not None:  # late workers still computing for this round stop now
            for r in range(self.offset, self.ranks):
                if self.holding[r] is not None and self.coll_count[r] == quorum_key:
                    self.procs[r].interrupt()

    def _gossip(self, i, op):
        topo, w, o = self.topology(), self.w(i), self.offset
        outs, ins = topo.out_neighbors(w, op.step), topo.in_neighbors(w, op.step)
        nbytes = comm.payload_bytes(op.x, stacked=False)
        L = self._links(nbytes)
        arrived = self.env.now
        for j in outs:
            self.env.process(self._deliver(j + o, (op.step, w), op.x, L[j, w]))
        got = {w: op.x}
        for j in ins:
            msg = yield self.mailboxes[i].get(lambda m, j=j: m[0] == (op.step, j))
            got[j] = msg[1]
        row = topo.W(op.step)[w]
        mixed = sum(float(row[j]) * got[j] for j in sorted(got))
        self.stats.add_traffic(i, comm.gossip(nbytes, len(outs), len(ins)))
        self.stats.finish_comm(i, arrived, self.env.now, max((L[w, j] for j in ins), default=0.0))
        return mixed

    def _links(self, nbytes):
        if nbytes not in self._link_cache:
            self._link_cache[nbytes] = self.run.network.link_matrix(nbytes, self.n)
        return self._link_cache[nbytes]

    def _deliver(self, dst, tag, x, delay):
        yield self.env.timeout(delay)
        yield self.mailboxes[dst].put((tag, x))

    def _rate(self, r, op):
        busy = self.stats.compute_s[r]
        return torch.tensor(self.units[r] / busy if busy > 0 else 0.0, dtype=torch.float64)
        yield  # a handler is a generator even when it never waits

    def _rand(self, i, op):
        return self.draw(self.w(i))
        yield  # a handler is a generator even when it never waits

    def _record(self, i, op):
        rec, w = self.run.recorder, self.w(i)
        if w < 0:  # the server's model is the global model
            if rec.is_eval(op.step):
                rec.consensus(op.step, op.round, op.x.unsqueeze(0), self.stats.counters())
        else:
            rec.worker(w, op.step, op.round, self.stats, op.loss, op.metrics, slot=i)
            if not self.offset:
                rec.offer(w, op.step, op.round, op.x, self.stats)
        return None
        yield  # a handler is a generator even when it never waits
