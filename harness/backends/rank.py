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

import operator
import os
import socket
import statistics
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from harness import algorithms, comm, ops
from harness.algorithms import Ctx
from harness.backends.launch import op_timeout_s
from harness.recording import COUNTERS, Recorder, Stats
from harness.tasks import Sampler, build_task

# dtype codes in point-to-point message headers
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
MAX_DIMS = 8
HEADER_LEN = 3 + MAX_DIMS  # tag, dtype code, ndim, shape...


def header(x: torch.Tensor, tag: int) -> list[int]:
    if x.dim() > MAX_DIMS:
        raise ValueError(f"Send: tensors of at most {MAX_DIMS} dimensions, got {x.dim()}")
    if x.dtype not in DTYPES:
        raise ValueError(f"Send: unsupported dtype {x.dtype}")
    return [int(tag), DTYPES.index(x.dtype), x.dim(), *x.shape, *[0] * (MAX_DIMS - x.dim())]


def from_header(h) -> tuple[int, torch.dtype, tuple[int, ...]]:
    h = [int(v) for v in h]
    return h[0], DTYPES[h[1]], tuple(h[3:3 + h[2]])


class Transport:
    """What a real backend provides. Ranks are world ranks; collectives and ``gather_eval``
    span the *workers* (ranks ``setup`` was given; the root of ``gather_eval`` is the first
    worker). Every method may block; ``abort`` never returns."""

    name = "?"
    rank = 0
    size = 1
    device = torch.device("cpu")

    def setup(self, workers: list[int]) -> None: ...
    def barrier(self) -> None: ...
    def bcast_obj(self, obj): ...
    def gather_obj(self, obj) -> list | None: ...
    def allreduce_sum(self, x: torch.Tensor) -> torch.Tensor: ...
    def allgather(self, x: torch.Tensor) -> torch.Tensor: ...
    def exchange(self, x: torch.Tensor, outs: list[int], ins: list[int], tag: int) -> dict[int, torch.Tensor]: ...
    def send(self, dst: int, x: torch.Tensor, tag: int) -> None: ...
    def recv(self, src: int, tag: int | None) -> tuple[int, int, torch.Tensor, float]: ...
    def gather_eval(self, x: torch.Tensor, counters: np.ndarray): ...
    def finish(self) -> None: ...
    def close(self) -> None: ...
    def abort(self, msg: str) -> None: ...


class Clock:
    """Wall seconds since ``start``, minus the time spent between ``pause()`` and ``resume()``."""

    def __init__(self):
        self.start()

    def start(self):
        self.t0 = self.base = time.perf_counter()  # base = t0 + paused time so far
        self._frozen = None

    def now(self) -> float:
        return (self._frozen or time.perf_counter()) - self.base

    def pause(self):
        self._frozen = time.perf_counter()

    def resume(self):
        self.base += time.perf_counter() - self._frozen
        self._frozen = None

    @contextmanager
    def paused(self):
        self.pause()
        try:
            yield
        finally:
            self.resume()


class Watchdog:
    """Aborts the job when one communication op blocks longer than ``timeout`` seconds,
    so that a lost peer or mismatched collectives end the run instead of hanging it."""

    def __init__(self, timeout: float, on_timeout):
        self.timeout, self.on_timeout = timeout, on_timeout
        self.current: tuple[str, float] | None = None
        self._stop = threading.Event()
        if timeout > 0:
            threading.Thread(target=self._loop, daemon=True, name="harness-watchdog").start()

    def busy(self, desc: str):
        self.current = (desc, time.monotonic())

    def idle(self):
        self.current = None

    def stop(self):
        self._stop.set()

    def _loop(self):
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            cur = self.current
            if cur and time.monotonic() - cur[1] > self.timeout:
                self.on_timeout(f"no progress for {self.timeout:.0f} s in {cur[0]} (HARNESS_TIMEOUT_S)")
                return


_COUNTER_VALUES = operator.attrgetter(*COUNTERS)


class Counters:
    """This rank's cumulative counters as Python numbers (cheap to update on every op);
    copied into a :class:`harness.recording.Stats` only when a row is written."""

    __slots__ = COUNTERS

    def __init__(self):
        for c in COUNTERS:
            setattr(self, c, 0 if c == "messages" else 0.0)

    def add_traffic(self, t: comm.Traffic):
        self.bytes_sent += t.sent
        self.bytes_recv += t.recv
        self.messages += t.messages

    def into(self, stats: Stats, k: int) -> Stats:
        for c in COUNTERS:
            getattr(stats, c)[k] = getattr(self, c)
        return stats

    def snapshot(self) -> np.ndarray:
        return np.array([getattr(self, c) for c in COUNTERS], dtype=np.float64)


class DeferredRecorder(Recorder):
    """A Recorder whose consensus rows get their test metrics after the run: the averaged
    model is kept (``d`` numbers per evaluation step, rank 0 only) and evaluated in
    :meth:`finish`. The rows are otherwise exactly :class:`Recorder`'s."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._later: list[tuple[dict, torch.Tensor]] = []
        self._evaluate = self.evaluate

    def consensus(self, step, rnd, X, counters):
        self.evaluate = lambda xbar: {}
        try:
            super().consensus(step, rnd, X, counters)
        finally:
            self.evaluate = self._evaluate
        self._later.append((self.rows[-1], X.mean(0)))

    def finish(self):
        for row, xbar in self._later:
            tail = {k: row.pop(k) for k in ("consensus_dist", "valley_width")}
            row.update(self._evaluate(xbar))
            row.update(tail)
        self._later = []


class RankDriver:
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
                         ops.Send: self._send, ops.Recv: self._recv, ops.Record: self._record}
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
        return out

    def _compute(self, op):
        time.sleep(max(0.0, float(op.cost)) * self.t_unit)
        self._hold_done()

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
            self.logged.append((step, op.round, _COUNTER_VALUES(ctr), loss, op.metrics))
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


def add_worker_counters(rows: list[dict]) -> None:
    """Server algorithms: the server's consensus rows hold the server's own counters; add
    each worker's counters as of that moment (its latest row with ``time_s`` not after the
    server's), so that the row sums over all ranks like SimPy's. Resolution: ``log_every``."""
    import bisect

    per: dict[int, list[dict]] = {}
    for r in rows:
        if r["worker"] >= 0:
            per.setdefault(r["worker"], []).append(r)
    for w in per.values():
        w.sort(key=lambda r: r["time_s"])
    times = {k: [r["time_s"] for r in w] for k, w in per.items()}
    for row in rows:
        if row["worker"] != -1 or row["step"] == 0:
            continue
        for k, w in per.items():
            j = bisect.bisect_right(times[k], row["time_s"]) - 1
            if j >= 0:
                for c in COUNTERS[1:]:
                    row[c] += w[j][c]


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_rank(cfg, out: Path, transport_cls, force: bool = False, save_params: bool = False) -> tuple[Path, bool]:
    """Every rank calls this; rank 0 writes ``run.json`` and ``metrics.parquet``."""
    from harness.backends import PARAMS_FILE
    from harness.backends.launch import save_params as write_params
    from harness.config import ConfigError
    from harness.experiment import run_status, versions
    from results.store import METRICS, RUN_JSON, write_json, write_table

    run_dir = Path(out) / cfg.run_id
    tr = transport_cls()
    root = tr.rank == 0
    done = bool(not force and run_status(run_dir) == "finished" and (run_dir / METRICS).exists()) if root else None
    if tr.bcast_obj(done):
        tr.close()
        return run_dir, False
    alg = algorithms.get(cfg.algorithm["name"])
    server = bool(getattr(alg, "has_server", False))
    needed = cfg.n_workers + server
    msg = None
    if getattr(cfg, "faults", None):
        msg = (f"faults: crash injection is simulated (backend simpy or stacked); a {cfg.backend} run has real "
               "failures only; remove faults: from the config")
    elif tr.size != needed:
        launch = {"mpi": f"mpiexec -n {needed}", "torch": f"torchrun --nproc-per-node {needed}"}[cfg.backend]
        what = f"1 server + {cfg.n_workers} workers" if server else "one per worker"
        msg = (f"n_workers: {cfg.algorithm['name']} with n_workers={cfg.n_workers} needs {needed} ranks ({what}), "
               f"but {tr.size} {'was' if tr.size == 1 else 'were'} started; "
               f"launch with `{launch} ...` or --set n_workers={tr.size - server}")
    if msg:  # every rank sees the same mistake; rank 0 says it
        if root:
            raise ConfigError(msg)
        raise SystemExit(2)

    record = {"run_id": cfg.run_id, "status": "running", "error": None, "config": cfg.model_dump(),
              "versions": versions(), "started": _now(), "finished": None, "world_size": tr.size,
              "transport": tr.describe() if hasattr(tr, "describe") else tr.name}
    if root:
        write_json(record, run_dir / RUN_JSON)
    t0 = time.perf_counter()
    state = {"driver": None}

    def fail(cause: str, tb: str = ""):
        drv = state["driver"]
        where = f" ({drv.where})" if drv is not None else ""
        msg = f"rank {tr.rank}{where} failed: {cause}"
        # The first failure is the cause; ranks that fail because a peer died (connection
        # closed, ...) must not overwrite it. The failing rank writes before it exits, so
        # its peers notice only afterwards.
        first = run_status(run_dir) != "failed"
        if tb and first:
            sys.stderr.write(tb)
        note = "" if first else "; another rank failed first, its cause is in run.json"
        sys.stderr.write(f"harness: error: {msg} [run {cfg.run_id}, {tr.size} ranks{note}]\n")
        sys.stderr.flush()
        if first:
            try:
                write_json({**record, "status": "failed", "error": msg, "finished": _now()}, run_dir / RUN_JSON)
            except Exception:
                pass
        tr.abort(msg)
        os._exit(1)  # abort() does not return; this is a last resort

    try:
        drv = state["driver"] = RankDriver(cfg, tr, on_timeout=lambda why: fail(why))
        final = drv.run()
        if root:
            drv.rec.finish()  # test metrics of the consensus rows, off the clock
        mine = {"rank": tr.rank, "role": drv.role, "index": drv.i, "rows": drv.rec.rows, "host": socket.gethostname(),
                "final": final.detach().cpu() if save_params else None}
        parts = tr.gather_obj(mine)
        if root:
            parts.sort(key=lambda p: p["rank"])
            import pandas as pd

            rows = [r for p in parts for r in p["rows"]]
            if drv.server_alg:
                add_worker_counters(rows)
            df = pd.DataFrame(rows).sort_values(["step", "worker"], kind="stable").reset_index(drop=True)
            write_table(df, run_dir / METRICS)
            if save_params:
                workers = torch.stack([p["final"] for p in parts if p["role"] == "worker"])
                server_x = next((p["final"] for p in parts if p["role"] == "server"), None)
                write_params(run_dir / PARAMS_FILE, workers, server_x)
            record.update(status="finished", finished=_now(), wall_s=time.perf_counter() - t0,
                          hosts=sorted({p["host"] for p in parts}))
            write_json(record, run_dir / RUN_JSON)
        tr.barrier()
        tr.close()
    except BaseException as e:  # noqa: BLE001 - every failure must end the whole job
        fail(f"{type(e).__name__}: {e}", traceback.format_exc())
    return run_dir, True
