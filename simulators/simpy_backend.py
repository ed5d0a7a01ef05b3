"""Event-driven simulation on SimPy: one SimPy process per worker, virtual time.

Each worker runs its own instance of the algorithm generator on its ``[d]`` model. The
driver forwards every yielded op to a handler that is itself a SimPy generator:

* ``Grad``/``Compute``: hold the worker for a drawn compute time;
* ``AllReduce``: a barrier keyed by the worker's collective count; the last arrival
  computes the result, everybody leaves at ``max_j T_j + ring cost``;
* ``Gossip``: send the model to each out-neighbour (arrives after ``alpha + b/beta``),
  wait for every in-neighbour's message of the same step, mix with ``W(step)``.

Messages are tagged by step, so a worker that runs ahead never mixes the wrong round.
"""
from __future__ import annotations

from dataclasses import replace

import simpy
import torch

from harness import comm, ops
from simulators.base import Simulator


class _Collective:
    def __init__(self, env):
        self.done = env.event()
        self.payloads: dict[int, torch.Tensor] = {}


class SimPyBackend(Simulator):
    name = "simpy"

    def execute(self, x0: torch.Tensor) -> torch.Tensor:
        self.env = simpy.Environment()
        self.start(x0)
        self.final: dict[int, torch.Tensor] = {}
        self.coll_count = [0] * self.n
        self.collectives: dict[int, _Collective] = {}
        self.mailboxes = [simpy.FilterStore(self.env) for _ in range(self.n)]
        procs = [self.env.process(self._worker(i, x0.clone())) for i in range(self.n)]
        self.env.run()
        stuck = [i for i, p in enumerate(procs) if not p.triggered]
        if stuck:
            raise RuntimeError(f"simulation deadlocked: workers {stuck} wait on a communication nobody completes "
                               "(do all workers yield the same collectives in the same order?)")
        return torch.stack([self.final[i] for i in range(self.n)])

    def _worker(self, i, x):
        gen = self.run.algorithm(replace(self.run.ctx, index=torch.tensor(i)), x, **self.run.params)
        handlers = {ops.Grad: self._grad, ops.Compute: self._compute, ops.AllReduce: self._allreduce,
                    ops.AllGather: self._allgather, ops.Gossip: self._gossip, ops.Rand: self._rand,
                    ops.Record: self._record}
        value = None
        while True:
            try:
                op = gen.send(value)
            except StopIteration as stop:
                self.final[i] = stop.value
                return
            value = yield from handlers[type(op)](i, op)

    def _hold(self, i, cost):
        dt = self.run.compute.sample(i, cost)
        self.stats.compute_s[i] += dt
        yield self.env.timeout(dt)
        self.stats.time[i] = self.env.now

    def _grad(self, i, op):
        out = self.run.task.loss_and_grad(op.x, self.run.sampler.worker(i, op.batches))
        yield from self._hold(i, op.batches)
        return out

    def _compute(self, i, op):
        yield from self._hold(i, op.cost)

    def _allreduce(self, i, op):
        nbytes = comm.payload_bytes(op.x, stacked=False)
        reduce = (lambda t: t.mean(0)) if op.op == "mean" else (lambda t: t.sum(0))
        return (yield from self._collective(i, op.x, reduce, comm.ring_allreduce(nbytes, self.n),
                                            self.run.network.ring_allreduce(nbytes, self.n)))

    def _allgather(self, i, op):
        nbytes = comm.payload_bytes(op.x, stacked=False)
        return (yield from self._collective(i, op.x, lambda t: t, comm.ring_allgather(nbytes, self.n),
                                            self.run.network.ring_allgather(nbytes, self.n)))

    def _collective(self, i, x, combine, traffic, cost):
        """A barrier keyed by the worker's collective count: the last arrival combines the
        stacked payloads; everybody leaves ``cost`` seconds after that arrival."""
        key = self.coll_count[i]
        self.coll_count[i] += 1
        c = self.collectives.setdefault(key, _Collective(self.env))
        c.payloads[i] = x
        arrived = self.env.now
        if len(c.payloads) == self.n:
            del self.collectives[key]
            result = combine(torch.stack([c.payloads[j] for j in range(self.n)]))
            self.env.process(self._succeed_later(c.done, cost, result))
        result = yield c.done
        self.stats.add_traffic(i, traffic)
        self.stats.finish_comm(i, arrived, self.env.now, cost)
        return result.clone()

    def _succeed_later(self, event, delay, value):
        yield self.env.timeout(delay)
        event.succeed(value)

    def _gossip(self, i, op):
        topo = self.topology()
        outs, ins = topo.out_neighbors(i, op.step), topo.in_neighbors(i, op.step)
        nbytes = comm.payload_bytes(op.x, stacked=False)
        link = self.run.network.p2p(nbytes)
        arrived = self.env.now
        for j in outs:
            self.env.process(self._deliver(j, (op.step, i), op.x, link))
        got = {i: op.x}
        for j in ins:
            msg = yield self.mailboxes[i].get(lambda m, j=j: m[0] == (op.step, j))
            got[j] = msg[1]
        w = topo.W(op.step)[i]
        mixed = sum(float(w[j]) * got[j] for j in sorted(got))
        self.stats.add_traffic(i, comm.gossip(nbytes, len(outs), len(ins)))
        self.stats.finish_comm(i, arrived, self.env.now, link if ins else 0.0)
        return mixed

    def _deliver(self, dst, tag, x, delay):
        yield self.env.timeout(delay)
        yield self.mailboxes[dst].put((tag, x))

    def _rand(self, i, op):
        return self.draw(i)
        yield  # a handler is a generator even when it never waits

    def _record(self, i, op):
        rec = self.run.recorder
        rec.worker(i, op.step, op.round, self.stats, op.loss, op.metrics)
        rec.offer(i, op.step, op.round, op.x, self.stats)
        return None
        yield  # a handler is a generator even when it never waits
