"""One rank of a real run: drive the algorithm generator on this rank's ``[d]`` model.

The same interpreter serves every real backend (MPI, torch.distributed, the in-process
loopback); a backend only supplies a :class:`Transport`. What each op computes comes
from the op (``combine``, ``Gossip.mix``, codecs) and what it costs from
:mod:`harness.cost`, exactly as in the simulators, so a run ends with the same parameters
and the same table (counters aside from time):

* ``Grad``      this worker's minibatch from ``harness.tasks.Sampler.draw`` (same seed, same
                per-worker stream; ``part=`` and ``members=`` as in the simulators).
* ``Compute``   ``time.sleep(cost * t_unit)``, ``t_unit`` = this rank's measured time of one
                minibatch gradient (median of 3 before the start barrier).
* collectives   all workers, no codec: the transport's native sum (``/ m`` for mean); with
                a codec or a member subset: the members' round-tripped payloads are
                exchanged and combined in worker order (:mod:`harness.backends.rank_comm`).
* ``Gossip``    sends to ``W(step)``'s out-neighbours and receives from its in-neighbours,
                tagged by per-edge sequence numbers, then ``Gossip.mix`` in ascending order.
* one-sided     ``Put``/``Get``/``Accumulate``/``Exchange`` on windows (MPI RMA, loopback).
* ``Rate``      compute units done / compute seconds so far (wall clock).
* ``Start/Wait`` the collective is completed at ``Start`` (same numbers, no overlap yet).
* ``Rand``      ``numpy.random.default_rng([seed, i, 17])``, the stream of
                ``simulators.base.Simulator.draw`` (the server uses ``i = n_workers``).
* ``Send/Recv`` buffered sends; receives from a rank or ``ANY`` source, any or one tag.
* ``Record``    keeps this worker's counters; they become rows after the run. At
                evaluation steps the workers' models (and ``eval_x``) and counters are
                gathered to rank 0 for the consensus row (not counted in bytes or time).
                With ``server=True`` the server's ``Record`` is the consensus row, or an
                ``update`` row when it carries ``staleness``.

Time is wall clock since a start barrier. ``compute_s`` = ``Grad``/``Compute`` plus the
algorithm's own maths between ops; ``comm_s`` = time inside communication ops; ``idle_s`` =
the part of a ``Recv`` spent waiting for a message to arrive. The clock is *paused*
during the evaluation gather, and test metrics of consensus rows are computed after the
run, so evaluation never shows up as training time.

Divergence: each worker checks its loss at every ``Record`` and its model at evaluation
steps; under ``stop`` the ranks agree there and stop together (:mod:`~harness.backends.rank_divergence`).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from harness import algorithms, ops, streams, tree
from harness.backends.launch import op_timeout_s
from harness.backends.rank_checkpoint import CheckpointMixin
from harness.backends.rank_comm import CommHandlers
from harness.backends.rank_divergence import DivergenceChecks, Stop
from harness.backends.rank_clock import COUNTER_VALUES, Clock, Counters, DeferredRecorder, Watchdog
from harness.backends.transport import Transport
from harness.assembly import assemble
from harness.cost import Traffic
from harness.keyed import DictStore
from harness.recording import COUNTERS, Stats
from harness.runinfo import meta_columns


KEYED_TAG = 32765  # keyed rows moving between ranks (lock-step, per-sender order): below the END tag


class RankDriver(CommHandlers, DivergenceChecks, CheckpointMixin):
    on_op = None  # optional callback(op) before each op's handler: op traces for harness.backends.loopback

    def __init__(self, cfg, tr: Transport, on_timeout):
        self.cfg, self.tr = cfg, tr
        self.alg = algorithms.get(cfg.algorithm["name"])
        self.n = cfg.n_workers
        self.server_alg = bool(getattr(self.alg, "has_server", False))
        self.off = 1 if self.server_alg else 0
        self.role = "server" if self.server_alg and tr.rank == 0 else "worker"
        self.i = tr.rank - self.off  # worker index (-1 on the server)
        self.k = 0 if self.role == "server" else self.i  # index into self.stats
        tr.setup(list(range(self.off, self.off + self.n)))
        run = assemble(cfg)  # the same assembly as a simulated run's (harness.assembly)
        self.params, self.task, self.sampler, self.topology, self.ctx0 = (run.params, run.task, run.sampler,
                                                                          run.topology, run.ctx)
        stream = self.n if self.role == "server" else self.i
        self.rng = streams.rng("rand", cfg.seed, stream)  # == simulators.base.Simulator.draw
        self.stats = Stats(1 if self.role == "server" else self.n)  # rows read counters from here
        self.ctr = Counters()  # ... which are kept here and copied over when rows are written
        self.logged: list[tuple] = []  # (step, round, counters, loss, metrics) per worker row, see _write_rows
        self._costs: dict = {}  # cached harness.cost results, see rank_comm
        self.rec = DeferredRecorder(meta_columns(cfg, cfg.backend), self.n, cfg.steps, self.task.evaluate,
                                    cfg.eval_every, cfg.log_every)
        self.clock = Clock()
        self.mark = 0.0  # clock time at which the current op began / the last timed op ended
        self.dog = Watchdog(op_timeout_s(), on_timeout)
        self.handlers = self.patterns()
        self.all_ids = tuple(range(self.n))
        # keyed state: the rows of the keys this rank hosts (key % n_workers == its worker index)
        self.store = DictStore(self.ctx0.n_clients)  # keyed rows this rank holds (keys: the clients)
        self.owner: dict = {}  # name -> {key: worker holding its row}, the same on every rank (see _state)
        self.seq: dict = {}  # (member set) -> collectives done over it; ("g", src, dst) -> gossip messages
        self.units, self.pending = 0.0, []  # compute units done (Rate); started collectives
        self.step_hint = 0  # last recorded step, for error messages
        self.div: dict | None = None  # this rank's first divergence; after an agreement, the run's
        self.sat_out = False  # the last Grad skipped this worker (members=): its NaN loss is by design
        self.playing = None  # the client this rank plays (Play)
        self.agree = cfg.on_divergence == "stop"  # lock-step: agree at evaluations; server methods: END messages
        self.tr = self._divergence_setup(cfg, tr)  # the loss rule; server methods: a transport that sees END
        self.last_x = None  # the model of the last Record: the final model when the run stops early
        from harness.calibration.slowdown import sleeper

        self.slow = sleeper(cfg, self.i)  # [issue 17] slowdown: injected sleep after each Grad, or None

    def patterns(self) -> dict:
        """One handler per op pattern (:data:`harness.ops.PATTERNS`)."""
        return {"compute": self._compute, "collective": self._collective, "gossip": self._gossip,
                "local": self._local, "send": self._send, "recv": self._recv, "record": self._record,
                "start": self._start, "wait": self._wait, "onesided": self._onesided, "state": self._state,
                "time": self._time, "checkpoint": self._checkpoint}

    @property
    def where(self) -> str:
        who = "server" if self.role == "server" else f"worker {self.i}"
        return f"{who}, after step {self.step_hint}"

    # -- the run -------------------------------------------------------------------------
    def run(self) -> torch.Tensor:
        x0 = self.task.init_params(self.cfg.seed)
        index = torch.tensor(max(self.i, 0))  # as SimPy: the server sees index 0
        resume = self.ck_restore()  # [issue 27] a saved carry (the driver's state restored), or None
        ctx = replace(self.ctx0, index=index, role=self.role, rank=self.tr.rank, resume=resume)
        if resume is None:
            self.t_unit = self._calibrate(x0)
            # step 0, as simulators.base.Simulator.start
            if self.role == "worker":
                self.rec.worker(self.i, 0, 0, self.stats)
            if self.tr.rank == 0:
                self.rec.consensus(0, 0, x0.expand(self.n, -1), Stats(self.n).counters())
        gen = self.alg(ctx, x0.clone() if resume is None else resume[1].x, **self.params)
        if "onesided" in algorithms.requirements(self.cfg.algorithm["name"], self.params):
            self._comm("creating the windows", self.tr.win_create, None, x0)  # collective: every rank
        self._comm("the start barrier", self.tr.barrier)
        self.clock.start()
        if resume is None:
            self.ctr, self.mark = Counters(), 0.0  # the barrier does not count
        else:  # counters and the clock continue from the saved moment
            self.clock.base -= self.resumed["clock"]
        value = None
        while True:
            try:
                op = gen.send(value)
            except StopIteration as stop:
                final = stop.value
                break
            except SystemExit as e:  # [issue 21] a rank's failure with a line, never a silent exit status
                from harness.experiment import exit_message

                raise RuntimeError(exit_message(e)) from None
            t = self.clock.now()
            self.ctr.compute_s += t - self.mark  # the algorithm's own maths
            self.mark = t
            if self.on_op is not None:
                self.on_op(op)
            op = ops.with_wire(op, self.task.wire_codec)
            handler = self.handlers.get(getattr(op, "pattern", None))
            if handler is None:
                raise TypeError(f"algorithm yielded {op!r}, which is not an op of harness.ops")
            try:
                value = handler(op)
            except Stop:
                gen.close()
                final = self.last_x
                break
        self.loop_s = self.clock.now()  # training time: wall since the start barrier, evaluation excluded
        self._end_run()  # server methods: END messages tell the others of a stop (rank_divergence)
        final = x0 if final is None else final  # stopped before its first Record
        self._comm("waiting for sent messages to leave", self.tr.finish)
        self.dog.stop()
        self._write_rows()
        return final

    def _write_rows(self):
        """Worker rows through ``Recorder.worker``, after the run: a ``Record`` only keeps the
        counters, so that building rows never runs on the clock or slows the loop."""
        st, k = self.stats, self.k
        self._cut_rows()
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

    def _member(self, op) -> tuple[tuple[int, ...], bool]:
        ids = self.all_ids if op.members is None else ops.member_ids(op.members, self.n)
        return ids, self.i in ids

    def _compute(self, op):
        if not isinstance(op, ops.Grad):  # work without data: sleep what it costs here
            if not self._member(op)[1]:
                return None
            time.sleep(max(0.0, float(op.cost)) * self.t_unit)
            self._hold_done()
            self.units += float(op.cost)
            return None
        if self.role == "server":
            raise ValueError("Grad: the server rank has no data shard; only workers compute gradients")
        self.sat_out = not self._member(op)[1]
        if self.sat_out:
            return ops.skipped(op, self.n)
        out = self.task.loss_and_grad(op.x, self.sampler.for_op(op, self.i, self.playing), self.i)
        if self.slow is not None:
            self.slow()
        self._hold_done()
        self.units += op.batches
        return out

    def _comm(self, desc, fn, traffic: Traffic | None = None, *args):
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

    # -- the local pattern: the env of ops.Local (this rank answers for itself only) --------
    def _local(self, op):
        return op.local(self, self.i)

    def play(self, w, client):
        if not 0 <= client < self.ctx0.n_clients:
            raise ValueError(f"Play.client: {client} is not a client 0..{self.ctx0.n_clients - 1} (n_clients)")
        self.playing = client  # data only: a real rank computes at its own speed

    def rate(self, w):
        busy = self.ctr.compute_s
        return torch.tensor(self.units / busy if busy > 0 else 0.0, dtype=torch.float64)

    def draw(self, w):
        return torch.tensor(self.rng.random(), dtype=torch.float64)

    def peers(self, w, step):
        return ops.Neighbors.peers(self._topology("Neighbors").W(step), self.i)

    def _state(self, op):
        """Keyed rows on real ranks: a row lives on the rank that saved it last. Every keyed op is
        lock-step over the workers, so one all-gather of the keys (bookkeeping: not counted as
        traffic) keeps the same directory on every rank; a rank loading a row held elsewhere gets
        it from its holder, a point-to-point transfer priced like any message."""
        if self.role == "server":
            return op.skip(self.n)
        member = self._member(op)[1]
        key = int(op.key) if member else -1
        got = self._comm(f"{type(op).__name__}({op.name!r}) keys", self.tr.allgather, None,
                         torch.tensor([key], dtype=torch.int64))
        keys = [int(k) for k in got.reshape(-1)]
        own = self.owner.setdefault(op.name, {})
        if isinstance(op, ops.SaveState):
            if member:
                self.store.save(op.name, key, op.value)
            own.update({k: w for w, k in enumerate(keys) if k >= 0})
            return None
        for w, k in enumerate(keys):  # rows others load from me
            if k >= 0 and w != self.i and own.get(k) == self.i:
                flat = torch.cat([torch.as_tensor(v).reshape(-1) for v in tree.leaves(self.store.rows[(op.name, k)])])
                nbytes = flat.numel() * flat.element_size()
                self._comm(f"sending keyed row {op.name}[{k}] to worker {w}",
                           lambda w=w, flat=flat, nbytes=nbytes: self.tr.send(w + self.off, flat, KEYED_TAG, nbytes),
                           self.cfg.network.gossip(nbytes, 1, 0))
        if not member:
            return op.skip(self.n)
        holder = own.get(key)
        if holder is None or holder == self.i:
            return self.store.load(op.name, key, op.default)
        _, _, flat, _, nbytes = self._comm(f"receiving keyed row {op.name}[{key}] from worker {holder}",
                                           lambda: self.tr.recv(holder + self.off, KEYED_TAG))
        self.ctr.add_traffic(self.cfg.network.gossip(0, 0, 0)._replace(recv=float(nbytes)))
        like = tree.leaves(op.default)
        sizes = [torch.as_tensor(v).numel() for v in like]
        parts = flat.split(sizes)
        return tree.unflatten(op.default, iter(p.reshape(torch.as_tensor(v).shape).to(torch.as_tensor(v).dtype)
                                               for p, v in zip(parts, like)))

    def _record(self, op):
        self._record_row(op)
        if op.x is not None:
            self.last_x = op.x  # also a server's update rows: its final model if it stops
        self._stop_if_diverged()  # server methods under stop: leave once the row is kept

    def _record_row(self, op):
        rec, step = self.rec, op.step
        self.ctr.time = self.mark
        self.step_hint = step
        if op.staleness is not None:  # a server's update row
            src = (op.src - self.off) if op.src is not None else self.i
            rec.update(src, step, op.staleness, self.ctr.into(self.stats, self.k), self.k)
            return None
        evaluate = rec.is_eval(step)
        self.last_x = op.x
        loss = None
        if self.role == "worker":
            loss = op.loss.item() if isinstance(op.loss, torch.Tensor) else op.loss
            if self.div is None and loss is not None and not self.sat_out:
                self._check_loss(step, loss)  # non-finite or blown up (divergence.loss_factor)
        if not evaluate and step % rec.log_every and step != rec.steps:
            return None  # no row at this step (log_every)
        ctr = self.ctr
        if self.role == "worker":
            self.logged.append((step, op.round, COUNTER_VALUES(ctr), loss, op.metrics))
        if not evaluate:
            return None
        x = op.x.detach()
        e = None if op.eval_x is None else op.eval_x.detach()
        if self.div is None:
            for m in (x, e):
                if m is not None and not bool(torch.isfinite(m).all()):
                    self._diverged(step, "params", m)
                    break
        self.clock.pause()
        try:
            if self.role == "server":
                rec.consensus(step, op.round, x.reshape(1, -1), ctr.into(self.stats, self.k).counters(),
                              None if e is None else e.reshape(1, -1))
                return None
            if not self.server_alg:
                self.dog.busy(f"the evaluation gather of step {step}")
                got = self.tr.gather_eval(x if e is None else torch.cat([x, e]), self.ctr.snapshot())
                self.dog.idle()
                if got is not None:
                    X, C = got
                    E = None if e is None else X[:, x.numel():]
                    rec.consensus(step, op.round, X[:, :x.numel()], dict(zip(COUNTERS, C.T)), E)
                if self.agree:
                    self._agree(step)
        finally:
            self.clock.resume()
        return None
