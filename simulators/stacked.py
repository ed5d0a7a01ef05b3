"""Stacked simulation: ONE algorithm generator holds all ``n`` workers as ``[n, d]`` tensors.

Valid for lock-step algorithms, whose timing does not depend on tensor values, so each
worker's clock follows a max-plus recurrence instead of events:

* compute:    ``T_i += c_i``
* all-reduce: ``T_i = max_j T_j + cost``
* gossip:     ``T_i = max(T_i, max_{j in N_in(i)} T_j + link)``

Gradients of all workers come from one autograd call on the batched model (or
``torch.func.vmap`` when the task has no batched form). The clocks equal the SimPy
backend's on the same scenario, to the last bit (a test pins this down).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from harness import comm, ops
from simulators.base import BackendError, Simulator


class StackedBackend(Simulator):
    name = "stacked"

    def execute(self, x0: torch.Tensor) -> torch.Tensor:
        if self.offset:
            raise BackendError(f"backend: {self.run.algorithm.algorithm_name!r} is asynchronous (server and worker "
                               "roles); the stacked backend runs lock-step algorithms only; use --backend simpy")
        self.start(x0)
        self._link_cache, self._handles = {}, []
        X = x0.expand(self.n, -1).clone()
        gen = self.run.algorithm(replace(self.run.ctx, index=torch.arange(self.n)), X, **self.run.params)
        handlers = {ops.Grad: self._grad, ops.Compute: self._compute, ops.AllReduce: self._allreduce,
                    ops.AllGather: self._allgather, ops.Gossip: self._gossip, ops.Rand: self._rand,
                    ops.Record: self._record, ops.Start: self._start, ops.Wait: self._wait}
        value = None
        while True:
            try:
                op = gen.send(value)
            except StopIteration as stop:
                return stop.value
            h = handlers.get(type(op))
            if h is None:
                raise BackendError(f"backend: the stacked backend cannot run {type(op).__name__} ops "
                                   f"(algorithm {self.run.algorithm.algorithm_name!r}); use --backend simpy")
            value = h(op)

    def _hold(self, cost):
        dt, down = np.array([self.compute_seconds(i, self.stats.time[i], cost) for i in range(self.n)]).T
        self.stats.compute_s += dt
        self.stats.idle_s += down  # down after a crash: neither computing nor communicating
        self.stats.time += dt + down

    def _grad(self, op):
        idx = torch.stack([self.run.sampler.worker(i, op.batches) for i in range(self.n)])
        out = self.run.task.loss_and_grad(op.x, idx)
        self._hold(op.batches)
        return out

    def _compute(self, op):
        self._hold(op.cost)

    def _allreduce(self, op):
        nbytes = comm.payload_bytes(op.x, stacked=True)
        cost = self.run.network.allreduce_time(nbytes, self.n)
        x = op.x
        if op.quorum and op.quorum < self.n:
            first = np.sort(np.argsort(self.stats.time, kind="stable")[: op.quorum])
            x = op.x[torch.as_tensor(first)]
            done = self.stats.time[first].max() + cost
            late = self.stats.time > done  # still computing when the result is out: cut short
            self.stats.compute_s[late] -= self.stats.time[late] - done
            self.stats.time[late] = done
        red = x.mean(0, keepdim=True) if op.op == "mean" else x.sum(0, keepdim=True)
        self._barrier(comm.ring_allreduce(nbytes, self.n), cost, op.quorum)
        return red.expand_as(op.x).clone()

    def _allgather(self, op):
        nbytes = comm.payload_bytes(op.x, stacked=True)
        self._barrier(comm.ring_allgather(nbytes, self.n), self.run.network.ring_allgather(nbytes, self.n))
        return op.x.unsqueeze(0).expand(self.n, *op.x.shape).clone()

    def _start(self, op):
        """Non-blocking collective: the result is ready at ``F = max_j T_j + cost``; the
        clocks move only at ``Wait``: ``T_i = max(T_i, F)``."""
        if op.op.__class__ is ops.AllReduce and op.op.quorum:
            raise BackendError("Start(AllReduce(quorum=...)): backup workers need a blocking AllReduce")
        saved = self.stats.time.copy(), self.stats.comm_s.copy(), self.stats.idle_s.copy()
        result = {ops.AllReduce: self._allreduce, ops.AllGather: self._allgather}[type(op.op)](op.op)
        done = self.stats.time.copy()
        self.stats.time[:], self.stats.comm_s[:], self.stats.idle_s[:] = saved  # undo the blocking clock
        cost = done - saved[0].max()  # done = max_j T_j + cost for every worker
        self._handles.append((result, done, cost))
        return ops.Handle(len(self._handles) - 1)

    def _wait(self, op):
        result, done, cost = self._handles[op.handle.id]
        arrived = self.stats.time.copy()
        self.stats.finish_comm(slice(None), arrived, np.maximum(arrived, done), cost)
        return result

    def _barrier(self, traffic, cost, quorum=None):
        """Max-plus clock of a collective: everybody leaves at ``T_(k) + cost``, the k-th
        smallest arrival (k = quorum, default n: the maximum)."""
        arrived = self.stats.time.copy()
        kth = np.sort(arrived)[(quorum or self.n) - 1]
        self.stats.add_traffic(slice(None), traffic)
        self.stats.finish_comm(slice(None), arrived, np.full(self.n, kth + cost), cost)

    def _rand(self, op):
        return torch.stack([self.draw(i) for i in range(self.n)])

    def _gossip(self, op):
        topo = self.topology()
        W = topo.W(op.step)
        nbytes = comm.payload_bytes(op.x, stacked=True)
        if nbytes not in self._link_cache:
            self._link_cache[nbytes] = self.run.network.link_matrix(nbytes, self.n)
        L = self._link_cache[nbytes]  # L[i, j]: seconds for j's message to reach i
        edges = (W > 0) & ~np.eye(self.n, dtype=bool)  # edges[i, j]: j's model reaches i
        arrived = self.stats.time.copy()
        via = np.where(edges, arrived[None, :] + L, -np.inf).max(1)
        finished = np.maximum(arrived, via)
        indeg, outdeg = edges.sum(1), edges.sum(0)
        for i in range(self.n):
            self.stats.add_traffic(i, comm.gossip(nbytes, int(outdeg[i]), int(indeg[i])))
        self.stats.finish_comm(slice(None), arrived, finished, np.where(edges, L, 0.0).max(1))
        return torch.as_tensor(W, dtype=op.x.dtype) @ op.x

    def _record(self, op):
        rec, loss = self.run.recorder, op.loss
        for i in range(self.n):
            li = loss[i] if loss is not None else None
            rec.worker(i, op.step, op.round, self.stats, li, {k: v[i] for k, v in op.metrics.items()})
        if rec.is_eval(op.step):
            rec.consensus(op.step, op.round, op.x, self.stats.counters())
