"""One rank of a real run: drive the algorithm generator on this rank's ``[d]`` model.

The same interpreter serves every real backend; a backend only supplies a
:class:`Transport`. Semantics mirror ``simulators/simpy_backend.py`` op by op, so that a
run ends with the same parameters and the same table (counters aside from time):

* ``Grad``      this worker's minibatch from ``harness.tasks.Sampler`` (same seed, same
                per-worker stream) and ``task.loss_and_grad`` on ``[d]``.
* ``Compute``   ``time.sleep(cost * t_unit)``, ``t_unit`` = this rank's measured time of one
                minibatch gradient (median of 3 before the start barrier). Sleeping keeps the
                abstract cost honest without competing for cores with other ranks.
* ``AllReduce`` native sum over the workers, then ``/ n`` for ``mean``.
* ``AllGather`` native all-gather into ``[n, *x]``.
* ``Gossip``    non-blocking sends to ``W(step)``'s out-neighbours and receives from its
                in-neighbours, then ``sum_j W[i, j] x_j`` over ``j`` in ascending order (the
                SimPy expression, so float results are bit-identical).
* ``Rate``      compute units done / compute seconds so far (wall clock).
* ``Start/Wait`` the collective is completed at ``Start`` (same numbers as the simulators;
                real overlap with computation is not implemented yet), ``Wait`` returns it.
* ``Rand``      ``numpy.random.default_rng([seed, i, 17])``, the stream of
                ``simulators.base.Simulator.draw`` (the server uses ``i = n_workers``).
* ``Send/Recv`` buffered sends; receives from a rank or ``ANY`` source, any or one tag.
* ``Record``    saves this worker's counters; they become rows through
                ``Recorder.worker`` after the run. At evaluation steps the workers' models
                and counters are gathered to rank 0 for the consensus row
                (``Recorder.consensus``; not counted in bytes or time). With
                ``server=True`` algorithms the server's ``Record`` is the consensus row
                (its own model and counters) and workers gather nothing.

Time is wall clock since a start barrier. ``compute_s`` = ``Grad``/``Compute`` plus the
algorithm's own maths between ops; ``comm_s`` = time inside communication ops; ``idle_s`` =
the part of a ``Recv`` spent waiting for a message to arrive (collectives: 0). The clock
is *paused* during the evaluation gather of ``Record``, and test metrics of consensus rows
are computed after the run, so evaluation never shows up as training time. Bytes come from ``harness.comm`` on the actual payloads, like the simulators.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from harness import algorithms, comm, ops
from harness.algorithms import Ctx
from harness.backends.launch import op_timeout_s
from harness.recording import COUNTERS, Recorder, Stats
from harness.tasks import Sampler, build_task

from harness.backends.transport import COUNTER_VALUES, Transport, Clock, Watchdog, Counters, DeferredRecorder


class RankDriver:
    on_op = None  # optional callback(op) before each op's handler: op traces for harness.backends.loopback

    def __init__(self, cfg, tr: Transport, on_timeout):
        import topologies
        from harness.experiment import meta_columns

        self.cfg, self.tr = cfg, tr
        self.alg = algorithms.get(cfg.algorithm["name"])
        self.params = {k: v for k, v in cfg.algorithm.items() if k != "name"}
        self.n = cfg.n_workers
        self.server_alg = bool(getattr(self.alg, "has_server", False))
        self.off = 1 if self.server_alg else 0
        self.role = "server" if self.server_alg and tr.rank == 0 else "worker"
        self.i = tr.rank - self.off  # worker index (-1 on the server)
        self.k = 0 if self.role == "server" else self.i  # index into self.stats
        tr.setup(list(range(self.off, self.off + self.n)))
        torch.set_num_threads(cfg.threads)
        self.task = build_task(cfg.task, self.n, cfg.seed)
        self.sampler = Sampler(self.task.shards, self.task.batch_size, cfg.seed)
        self.topology = topologies.build(cfg.topology, self.n, cfg.seed) if cfg.topology else None
        stream = self.n if self.role == "server" else self.i
        self.rng = np.random.default_rng([cfg.seed, stream, 17])  # == simulators.base.Simulator.draw
        self.stats = Stats(1 if self.role == "server" else self.n)  # rows read counters from here
        self.ctr = Counters()  # ... which are kept here and copied over when rows are written
        self.logged: list[tuple] = []  # (step, round, counters, loss, metrics) per worker row, see _write_rows
        self._traffic: dict = {}  # (kind, nbytes) -> comm.Traffic
        self.rec = DeferredRecorder(meta_columns(cfg, cfg.backend), self.n, cfg.steps, self.task.evaluate,
                                    cfg.eval_every, cfg.log_every)
        self.clock = Clock()
        self.mark = 0.0  # clock time at which the current op began / the last timed op ended
        self.dog = Watchdog(op_timeout_s(), on_timeout)
        self.handlers = {ops.Grad: self._grad, ops.Compute: self._compute, ops.AllReduce: self._allreduce,
                         ops.AllGather: self._allgather, ops.Gossip: self._gossip, ops.Rand: self._rand,
                         ops.Send: self._send, ops.Recv: self._recv, ops.Record: self._record,
                         ops.Rate: self._rate, ops.Start: self._start, ops.Wait: self._wait}
        self.units, self.pending = 0.0, []  # compute units done (Rate); started collectives
        self.step_hint = 0  # last recorded step, for error messages

    @property
    def where(self) -> str:
        who = "server" if self.role == "server" else f"worker {self.i}"
        return f"{who}, after step {self.step_hint}"

    # -- the run -------------------------------------------------------------------------
    def run(self) -> torch.Tensor:
        x0 = self.task.init_params(self.cfg.seed)
        index = torch.tensor(max(self.i, 0))  # as SimPy: the server sees index 0
        ctx = Ctx(self.n, self.cfg.steps, self.cfg.seed, index=index, segments=tuple(self.task.segments),
                  role=self.role, rank=self.tr.rank)
        self.t_unit = self._calibrate(x0)
        # step 0, as simulators.base.Simulator.start
        if self.role == "worker":
            self.rec.worker(self.i, 0, 0, self.stats)
        if self.tr.rank == 0:
            self.rec.consensus(0, 0, x0.expand(self.n, -1), Stats(self.n).counters())
        gen = self.alg(ctx, x0.clone(), **self.params)
        self._comm("the start barrier", self.tr.barrier)
        self.ctr = Counters()  # the barrier does not count
        self.clock.start()
        value, self.mark = None, 0.0
        while True:
            try:
                op = gen.send(value)
            except StopIteration as stop:
                final = stop.value
                break
            t = self.clock.now()
            self.ctr.compute_s += t - self.mark  # the algorithm's own maths
            self.mark = t
            if self.on_op is not None:
                self.on_op(op)
            handler = self.handlers.get(type(op))
            if handler is None:
                raise TypeError(f"algorithm yielded {op!r}, which is not an op of harness.ops")
            value = handler(op)
        self.loop_s = self.clock.now()  # training time: wall since the start barrier, evaluation excluded
        self._comm("waiting for sent messages to leave", self.tr.finish)
        self.dog.stop()
        self._write_rows()
        return final

    def _write_rows(self):
        """Worker rows through ``Recorder.worker``, after the run: a ``Record`` only keeps the
        counters, so that building rows never runs on the clock or slows the loop."""
        st, k = self.stats, self.k
        for step, rnd, values, loss, metrics in self.logged:
            for c, v in zip(COUNTERS, values):
                getattr(st, c)[k] = v
            self.rec.worker(self.i, step, rnd, st, loss, metrics)
        self.logged = []

    def _calibrate(self, x0) -> float:
        idx = self.sampler.shards[max(self.i, 0)][: self.task.batch_size]  # fixed batch: streams untouched
        times = []
        for _ in range(3):
            t = time.perf_counter()
            self.task.loss_and_grad(x0, idx)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    # -- op handlers -------------------------------------------------------------------------
    def _hold_done(self):
        t1 = self.clock.now()
        self.ctr.compute_s += t1 - self.mark
        self.ctr.time = self.mark = t1

    def _grad(self, op):
        if self.role == "server":
            raise ValueError("Grad: the server rank has no data shard; only workers compute gradients")
        out = self.task.loss_and_grad(op.x, self.sampler.worker(self.i, op.batches))
        self._hold_done()
        self.units += op.batches
        return out

    def _compute(self, op):
        time.sleep(max(0.0, float(op.cost)) * self.t_unit)
        self._hold_done()
        self.units += float(op.cost)

    def _comm(self, desc, fn, traffic: comm.Traffic | None = None, *args):
        """``fn(*args)`` timed as communication, under the watchdog."""
        self.dog.busy(desc)
        try:
            out = fn(*args)
        finally:
            self.dog.idle()
        t1 = self.clock.now()
        ctr = self.ctr
        ctr.comm_s += t1 - self.mark
        ctr.time = self.mark = t1
        if traffic is not None:
            ctr.bytes_sent += traffic.sent
            ctr.bytes_recv += traffic.recv
            ctr.messages += traffic.messages
        return out

    def traffic(self, kind: str, nbytes: int, *args) -> comm.Traffic:
        key = (kind, nbytes, args)
        t = self._traffic.get(key)
        if t is None:
            t = self._traffic[key] = getattr(comm, kind)(nbytes, *args)
        return t

    def _allreduce(self, op):
        if getattr(op, "quorum", None) and op.quorum < self.n:
            raise ValueError(f"AllReduce.quorum={op.quorum}: backup workers (reduce the first k arrivals) are "
                             f"simulated only; use --backend simpy or stacked, or backup: 0")
        nbytes = comm.payload_bytes(op.x, stacked=False)
        out = self._comm("AllReduce", self.tr.allreduce_sum, self.traffic("ring_allreduce", nbytes, self.n), op.x)
        return out / self.n if op.op == "mean" else out

    def _allgather(self, op):
        nbytes = comm.payload_bytes(op.x, stacked=False)
        return self._comm("AllGather", self.tr.allgather, self.traffic("ring_allgather", nbytes, self.n), op.x)

    def _gossip(self, op):
        if self.topology is None:
            raise ValueError(f"topology: algorithm {self.cfg.algorithm['name']!r} yields Gossip; "
                             "set topology: {name: ring} in the config")
        if self.role == "server":
            raise ValueError("Gossip: the server rank is not a node of the topology")
        i, topo = self.i, self.topology
        outs, ins = topo.out_neighbors(i, op.step), topo.in_neighbors(i, op.step)
        nbytes = comm.payload_bytes(op.x, stacked=False)
        got = self._comm(f"Gossip step {op.step}",
                         lambda: self.tr.exchange(op.x, [j + self.off for j in outs], [j + self.off for j in ins],
                                                  op.step),
                         self.traffic("gossip", nbytes, len(outs), len(ins)))
        got = {j: got[j + self.off] for j in ins}
        got[i] = op.x
        w = topo.W(op.step)[i]
        return sum(float(w[j]) * got[j] for j in sorted(got))

    def _rate(self, op):
        busy = self.ctr.compute_s
        return torch.tensor(self.units / busy if busy > 0 else 0.0, dtype=torch.float64)

    def _start(self, op):
        # The real backends complete the collective here (same numbers as the simulators,
        # no overlap yet); Wait hands the result back.
        self.pending.append({ops.AllReduce: self._allreduce, ops.AllGather: self._allgather}[type(op.op)](op.op))
        return ops.Handle(len(self.pending) - 1)

    def _wait(self, op):
        return self.pending[op.handle.id]

    def _rand(self, op):
        return torch.tensor(self.rng.random(), dtype=torch.float64)

    def _send(self, op):
        if not 0 <= op.dst < self.tr.size or op.dst == self.tr.rank:
            raise ValueError(f"Send: dst={op.dst} is not another rank in 0..{self.tr.size - 1}")
        nbytes = comm.payload_bytes(op.x, stacked=False)
        self._comm("Send", lambda: self.tr.send(op.dst, op.x, op.tag), self.traffic("gossip", nbytes, 1, 0))

    def _recv(self, op):
        src = -1 if op.src == ops.ANY else op.src
        s, tag, x, waited = self._comm(f"Recv from {'any rank' if src < 0 else f'rank {src}'}",
                                       lambda: self.tr.recv(src, op.tag))
        waited = min(waited, self.ctr.comm_s)
        self.ctr.comm_s -= waited
        self.ctr.idle_s += waited
        self.ctr.add_traffic(self.traffic("gossip", comm.payload_bytes(x, stacked=False), 0, 1))
        return ops.Message(s, tag, x)

    def _record(self, op):
        rec, step = self.rec, op.step
        self.ctr.time = self.mark
        self.step_hint = step
        evaluate = rec.is_eval(step)
        if not evaluate and step % rec.log_every and step != rec.steps:
            return None  # no row at this step (log_every)
        ctr = self.ctr
        if self.role == "worker":
            loss = op.loss.item() if isinstance(op.loss, torch.Tensor) else op.loss
            self.logged.append((step, op.round, COUNTER_VALUES(ctr), loss, op.metrics))
        if not evaluate:
            return None
        self.clock.pause()
        try:
            if self.role == "server":
                rec.consensus(step, op.round, op.x.detach().reshape(1, -1), ctr.into(self.stats, self.k).counters())
                return None
            if not self.server_alg:
                self.dog.busy(f"the evaluation gather of step {step}")
                got = self.tr.gather_eval(op.x.detach(), self.ctr.snapshot())
                self.dog.idle()
                if got is not None:
                    X, C = got
                    rec.consensus(step, op.round, X, dict(zip(COUNTERS, C.T)))
        finally:
            self.clock.resume()
        return None
