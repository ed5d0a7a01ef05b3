"""Stacked simulation: ONE algorithm generator holds all ``n`` workers as ``[n, d]`` tensors.

Valid for lock-step algorithms, whose timing does not depend on tensor values, so each
worker's clock follows a max-plus recurrence instead of events:

* compute:    ``T_i += c_i``                                  (members only)
* collective: ``T_i = max_{j in S} T_j + cost`` for ``i in S`` (``S``: the members)
* gossip:     ``T_i = max(T_i, max_{j in N_in(i)} T_j + link_ji)``

What an op computes comes from the op itself, applied to the same per-worker rows in the
same order as on SimPy (``combine`` over member rows, ``Gossip.mix`` over neighbour
slots, codecs row by row), so the two simulators agree to the last bit, also in float32.
Gradients of the active rows come from one autograd call on the batched model (or
``torch.func.vmap`` when the task has no batched form): sampling 20 of 1,000 workers
costs 20 gradients.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from harness import ops
from harness.keyed import RowStore
from simulators.base import BackendError, Simulator


class StackedBackend(Simulator):
    name = "stacked"

    def execute(self, x0: torch.Tensor) -> torch.Tensor:
        if self.offset:
            raise BackendError(f"backend: {self.run.algorithm.algorithm_name!r} is asynchronous (server and worker "
                               "roles); the stacked backend runs lock-step algorithms only; use --backend simpy")
        if self.resumed is None:
            self.start(x0)
            self._link_cache, self._handles, self._slot_cache, self._sat_out = {}, [], {}, set()
            self._exact: dict = {}  # (batch shape, dtype) -> does one batched call equal per-worker calls
            self.all_ids = tuple(range(self.n))
            self.store = RowStore(self.run.ctx.n_clients)
            X = x0.expand(self.n, -1).clone()
        else:  # a checkpoint's state is in place (Simulator.restore): continue from its carry
            X = self.resumed[1].x
        ctx = replace(self.run.ctx, index=torch.arange(self.n), resume=self.resumed)
        gen = self.run.algorithm(ctx, X, **self.run.params)
        handlers = self.patterns()
        value = None
        while True:
            try:
                op = gen.send(value)
            except StopIteration as stop:
                return stop.value
            op = ops.with_wire(op, self.run.task.wire_codec)
            h = handlers.get(getattr(op, "pattern", None))
            if h is None:
                raise BackendError(f"backend: the stacked backend cannot run {type(op).__name__} ops "
                                   f"(algorithm {self.run.algorithm.algorithm_name!r}); use --backend simpy")
            value = h(op)

    def patterns(self) -> dict:
        """One handler per op pattern (:data:`harness.ops.PATTERNS`)."""
        return {"compute": self._compute, "collective": self._collective, "gossip": self._gossip,
                "local": self._local, "record": self._record, "start": self._start, "wait": self._wait,
                "state": self._state, "checkpoint": self._checkpoint}

    def _ids(self, op) -> tuple[int, ...]:
        return self.all_ids if op.members is None else ops.member_ids(op.members, self.n)

    # -- compute ---------------------------------------------------------------------------
    def _hold(self, cost, ids):
        for i in ids:
            self.units[i] += cost
            dt, down = self.compute_seconds(i, self.stats.time[i], cost)
            self.stats.compute_s[i] += dt
            self.stats.idle_s[i] += down  # down after a crash: neither computing nor communicating
            self.stats.time[i] += dt + down

    def _compute(self, op):
        if not isinstance(op, ops.Grad):  # work without data
            self._hold(op.cost, self._ids(op))
            return None
        ids = self._ids(op)
        # workers that sit out: their NaN loss is no divergence (Recorder.check_loss)
        self._sat_out = () if op.members is None else set(self.all_ids) - set(ids)
        got = self.batches(op, ids)
        sizes = {len(b) for b in got}
        if ids == self.all_ids and len(sizes) == 1:
            out = self._grads(op.x, torch.stack(got), torch.arange(self.n))
        else:  # only the active rows are computed, one call per batch size (ragged last batches of an epoch)
            loss_all = torch.full((self.n,), float("nan"), dtype=op.x.dtype)
            grad_all = torch.zeros_like(op.x)
            for size in sorted(sizes):
                sel = [p for p, b in enumerate(got) if len(b) == size]
                rows = torch.tensor([ids[p] for p in sel])
                loss, g = self._grads(op.x[rows], torch.stack([got[p] for p in sel]), rows)
                loss_all, grad_all = loss_all.to(loss.dtype).index_copy(0, rows, loss), grad_all.index_copy(0, rows, g)
            out = (loss_all, grad_all)
        self._hold(op.batches, ids)
        return out

    def _grads(self, X, batches, rows):
        """Losses ``[k]`` and gradients ``[k, d]`` of rows ``X`` on their ``batches``: one batched call
        where it gives each worker's numbers to the last bit, else one call per worker exactly as
        SimPy makes it. A batched matmul reduces in another order for batch lengths that are not
        multiples of 8 (float32 bits differ, and for some lengths only for some values: found with a
        64-wide MLP on this machine's kernels), so those lengths (but 1) are always computed per worker; a
        multiple of 8 (or 1) is checked against the per-worker result at its first call (and computed per
        worker from then on if it differs). So stacked = SimPy holds by construction, not by luck."""
        key = (tuple(batches.shape), X.dtype)
        exact = self._exact.get(key, None if batches.shape[-1] % 8 == 0 or batches.shape[-1] == 1 else False)
        if exact is False:
            return self._one_by_one(X, batches, rows)
        out = self.run.task.loss_and_grad(X, batches, rows)
        if exact is None:
            ref = self._one_by_one(X, batches, rows)
            exact = self._exact[key] = bool(torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]))
            if not exact:
                return ref
        return out

    def _one_by_one(self, X, batches, rows):
        # a fresh [d] tensor per worker, as SimPy holds it (a row view's alignment can change float32 bits)
        got = [self.run.task.loss_and_grad(X[j].clone(), batches[j], int(rows[j])) for j in range(len(rows))]
        return torch.stack([loss.reshape(()) for loss, _ in got]), torch.stack([g for _, g in got])

    # -- collectives -----------------------------------------------------------------------
    def _collective(self, op, pending=False):
        ids = self._ids(op)
        wired = [ops.wire(op.x[j], op.codec) for j in ids]
        sizes = [s for _, s in wired]
        cost = op.cost(self.run.network, sizes, ids)
        use = list(range(len(ids)))
        quorum = getattr(op, "quorum", None)
        if quorum and quorum < len(ids) and not pending:
            t = self.stats.time[list(ids)]
            use = sorted(np.argsort(t, kind="stable")[:quorum].tolist())  # ties: lower index first
            done = t[use].max() + cost.seconds
            for i in ids:  # still computing when the result is out: cut short
                if self.stats.time[i] > done:
                    self.stats.compute_s[i] -= self.stats.time[i] - done
                    self.stats.time[i] = done
        value = op.combine([wired[p][0] for p in use], [ids[p] for p in use])
        if ids == self.all_ids:
            out = value.expand(self.n, *value.shape).clone()
        elif type(op).skip is ops.Collective.skip:  # a non-member keeps its input
            out = op.x.clone()
            out[list(ids)] = value
        else:
            inside = set(ids)
            out = torch.stack([value if i in inside else replace(op, x=op.x[i]).skip(self.n) for i in range(self.n)])
        if quorum:
            arrived = torch.zeros(self.n, dtype=torch.bool)
            arrived[[ids[p] for p in use]] = True
            out = ops.Quorum(out, arrived.expand(self.n, -1).clone())
        if pending:
            return out, ids, cost
        self._barrier(ids, cost, quorum)
        return out

    def _barrier(self, ids, cost, quorum=None):
        """Max-plus clock of a collective: every member leaves at ``T_(k) + cost``, the k-th
        smallest member arrival (k = quorum, default all members: the maximum)."""
        sel = list(ids)
        arrived = self.stats.time[sel].copy()
        kth = np.sort(arrived)[(quorum or len(ids)) - 1]
        for p, i in enumerate(ids):
            self.stats.add_traffic(i, cost.traffic[p])
        self.stats.finish_comm(sel, arrived, np.full(len(ids), kth + cost.seconds), cost.seconds)

    def _start(self, op):
        """Non-blocking collective: the result is ready at ``F = max_{j in S} T_j + cost``;
        the clocks move (and the traffic is counted) at ``Wait``: ``T_i = max(T_i, F)``."""
        if getattr(op.op, "pattern", None) != "collective":
            raise BackendError(f"Start: only AllReduce/AllGather can be started, got {type(op.op).__name__}")
        if getattr(op.op, "quorum", None):
            raise BackendError("Start(AllReduce(quorum=...)): backup workers need a blocking AllReduce")
        result, ids, cost = self._collective(op.op, pending=True)
        done = self.stats.time[list(ids)].max() + cost.seconds
        self._handles.append((result, ids, cost, done))
        return ops.Handle(len(self._handles) - 1)

    def _wait(self, op):
        result, ids, cost, done = self._handles[op.handle.id]
        sel = list(ids)
        arrived = self.stats.time[sel].copy()
        for p, i in enumerate(ids):
            self.stats.add_traffic(i, cost.traffic[p])
        self.stats.finish_comm(sel, arrived, np.maximum(arrived, done), cost.seconds)
        return result

    # -- gossip ----------------------------------------------------------------------------
    def _slots(self, W):
        """For every worker, itself and its in-neighbours by ascending index, as K slots
        (padded): indices, coefficients, validity, is-self. Cached per mixing matrix."""
        key = id(W)
        hit = self._slot_cache.get(key)
        if hit is not None and hit[0] is W:
            return hit[1]
        n = self.n
        edges = (W > 0) & ~np.eye(n, dtype=bool)  # edges[i, j]: j's model reaches i
        rows = [sorted({i, *np.flatnonzero(edges[i]).tolist()}) for i in range(n)]
        K = max(len(r) for r in rows)
        J = np.array([r + [i] * (K - len(r)) for i, r in enumerate(rows)])
        valid = torch.tensor([[k < len(r) for k in range(K)] for r in rows])
        coef = W[np.arange(n)[:, None], J]
        out = (edges, [torch.as_tensor(J[:, k]) for k in range(K)],
               [None if valid[:, k].all() else valid[:, k][:, None] for k in range(K)],
               [torch.as_tensor(J[:, k] == np.arange(n))[:, None] for k in range(K)], coef)
        if len(self._slot_cache) > 64:
            self._slot_cache.clear()
        self._slot_cache[key] = (W, out)
        return out

    def _gossip(self, op):
        topo, n, X = self.topology(), self.n, op.x
        W = topo.W(op.step)
        edges, J, valid, is_self, coef = self._slots(W)
        if op.codec is None:
            Xr, sizes = X, np.full(n, X[0].numel() * X.element_size())
        else:
            wired = [ops.wire(X[j], op.codec) for j in range(n)]
            Xr, sizes = torch.stack([p for p, _ in wired]), np.array([s for _, s in wired])
        # own model uncoded, neighbours' as received; Gossip.mix in the canonical order
        terms = [torch.where(is_self[k], X, Xr[J[k]]) if op.codec is not None else X.index_select(0, J[k]) for k in range(len(J))]
        coefs = [torch.tensor(coef[:, k], dtype=X.dtype)[:, None] for k in range(len(J))]
        mixed = op.mix(coefs, terms, valid)
        # clocks: worker i waits for its slowest in-neighbour's message
        if (sizes == sizes[0]).all():
            link = self._links(int(sizes[0]))  # L[i, j]: seconds for j's message to reach i
        else:
            link = np.zeros((n, n))
            for s in np.unique(sizes):
                cols = sizes == s
                link[:, cols] = self._links(int(s))[:, cols]  # each sender's message at its own size
        arrived = self.stats.time.copy()
        via = np.where(edges, arrived[None, :] + link, -np.inf).max(1)
        finished = np.maximum(arrived, via)
        indeg, outdeg = edges.sum(1), edges.sum(0)
        net = self.run.network
        for i in range(n):
            t = net.gossip(int(sizes[i]), int(outdeg[i]), int(indeg[i]))
            self.stats.add_traffic(i, t._replace(recv=float(sizes[edges[i]].sum())))
        self.stats.finish_comm(slice(None), arrived, finished, np.where(edges, link, 0.0).max(1))
        return mixed

    def _links(self, nbytes):
        if nbytes not in self._link_cache:
            self._link_cache[nbytes] = self.run.network.link_matrix(nbytes, self.n)
        return self._link_cache[nbytes]

    # -- the rest --------------------------------------------------------------------------
    def _local(self, op):
        """Every worker's answer, stacked (a tensor, or a NamedTuple of tensors)."""
        got = [op.local(self, i) for i in range(self.n)]
        if got[0] is None:  # an op that only tells the backend something (Play)
            return None
        if isinstance(got[0], tuple):
            return type(got[0])(*(torch.stack(f) for f in zip(*got)))
        return torch.stack(got)

    def _checkpoint(self, op):
        """One generator holds every worker: each step boundary is quiescent."""
        p = self.policy
        if p is not None and p.due(op.step, quiescent=True):
            self.save_checkpoint(op.step, op.carry, float(self.stats.time.max()))

    def _state(self, op):
        rows = list(self._ids(op))
        if isinstance(op, ops.LoadState):
            return self.store.load(op.name, op.key, op.default, rows)
        self.store.save(op.name, op.key, op.value, rows)
        return None

    def _record(self, op):
        rec, loss = self.run.recorder, op.loss
        for i in range(self.n):
            li = loss[i] if loss is not None else None
            rec.worker(i, op.step, op.round, self.stats, li, {k: v[i] for k, v in op.metrics.items()})
        rec.check_loss(self.all_ids, op.step, loss, self.stats, skip=self._sat_out)  # may raise Diverged: stop here
        rec.spread(op.step, op.x)  # every logged step: each worker's ||x_i - x_bar||^2 (issue [15])
        if rec.is_eval(op.step):
            rec.consensus(op.step, op.round, op.x, self.stats.counters(), op.eval_x)
