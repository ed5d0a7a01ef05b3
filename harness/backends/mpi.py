"""MPI transport (mpi4py): ``mpiexec -n N harness run CONFIG --backend mpi``, or ``srun``.

Four duplicates of ``COMM_WORLD`` keep traffic kinds apart: ``world`` (barriers, object
gathers, the RMA window), ``gossip`` (neighbour and member exchanges, one tag per edge), ``hdr`` + ``data`` (point-to-point
messages: a small header with the user tag, dtype and shape, then the payload with the
same tag, so ``Recv(ANY)`` learns the sender and size by receiving the header first).
Collectives run on ``workers`` (all ranks, or ranks 1..n with a server). CPU tensors
travel as numpy views (no copies); CUDA tensors are handed to mpi4py directly (DLPack /
CUDA array interface), which needs a CUDA-aware MPI (not tested here). One-sided ops use a
passive-target RMA window (``MPI.Win``) of one model-shaped tensor per rank, locked
exclusively in ascending rank order; MPIs without an asynchronous progress engine may
complete them only when the target next enters MPI (MPICH: ``MPICH_ASYNC_PROGRESS=1``).

Waiting: MPICH's blocking calls poll in a tight loop, so while one rank is stopped the others
burnt a core each for the whole ``HARNESS_TIMEOUT_S`` (300 s by default). Every blocking
op here is a non-blocking one completed by :func:`wait`: ``Test`` in a tight loop for
:data:`SPIN_S` (an op that normally completes is as fast as before), then ``Test`` with
naps growing to :data:`NAP_S` (a wait that long is a straggler or a stopped peer; it costs
at most that much latency). Object gathers and broadcasts wait on an ``Ibarrier`` first.
"""
from __future__ import annotations

import sys
import time
import uuid

import numpy as np
import torch

from harness.backends.transport import HEADER_LEN, Transport, from_header, header

SPIN_S = 0.5  # poll without sleeping this long, then nap
NAP_S = 0.01  # the longest nap between polls


def wait(reqs, status=None) -> None:
    """Complete ``reqs`` (a request, whose ``status`` is filled, or a list): spin for
    :data:`SPIN_S`, then poll with naps doubling from 1 ms to :data:`NAP_S`: a long wait
    uses next to no CPU."""
    if isinstance(reqs, list):
        test = (lambda: type(reqs[0]).Testall(reqs)) if reqs else (lambda: True)
    else:
        test = (lambda: reqs.Test(status))
    if test():
        return
    t0, nap = time.monotonic(), 0.001
    while not test():
        if time.monotonic() - t0 > SPIN_S:
            time.sleep(nap)
            nap = min(2 * nap, NAP_S)


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ValueError(f"backend: --backend mpi needs mpi4py built against your MPI ({e}); "
                         "pip install mpi4py, or use --backend torch") from None
    return MPI


class MPITransport(Transport):
    name = "mpi"

    def __init__(self):
        MPI = self.MPI = _import_mpi()
        w = MPI.COMM_WORLD
        self.rank, self.size = w.Get_rank(), w.Get_size()
        self.world, self.gossip_comm, self.hdr, self.data = (w.Dup() for _ in range(4))
        self.job = self.world.bcast(uuid.uuid4().hex[:12] if self.rank == 0 else None, root=0)  # heartbeat dir
        self.workers = self.win = None
        self.pending: list = []  # (request, keep-alive buffers) of sends not known to be complete

    def describe(self) -> str:
        v = self.MPI.Get_version()
        return f"mpi4py, MPI {v[0]}.{v[1]}, {self.MPI.Get_library_version().splitlines()[0].strip()}"

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _buf(t: torch.Tensor):
        if t.is_cuda:
            return t  # mpi4py reads DLPack / __cuda_array_interface__ (CUDA-aware MPI)
        if t.dtype == torch.bfloat16:
            raise ValueError("backend mpi: bfloat16 has no MPI datatype; use float32 or --backend torch")
        return t.numpy()

    def _prune(self):
        if len(self.pending) > 64:
            self.pending = [(r, keep) for r, keep in self.pending if not r.Test()]

    # -- Transport ---------------------------------------------------------------------------
    def setup(self, workers):
        color = 0 if self.rank in workers else self.MPI.UNDEFINED
        self.workers = self.world.Split(color, key=self.rank)

    def barrier(self):
        wait(self.world.Ibarrier())

    def bcast_obj(self, obj):
        wait(self.world.Ibarrier())  # every rank is here: the pickled broadcast does not wait
        return self.world.bcast(obj, root=0)

    def gather_obj(self, obj):
        wait(self.world.Ibarrier())
        return self.world.gather(obj, root=0)

    def allreduce_sum(self, x):
        x = x.detach().contiguous()
        out = torch.empty_like(x)
        wait(self.workers.Iallreduce(self._buf(x), self._buf(out), op=self.MPI.SUM))
        return out

    def allgather(self, x):
        x = x.detach().contiguous()
        out = torch.empty((self.workers.Get_size(), *x.shape), dtype=x.dtype, device=x.device)
        wait(self.workers.Iallgather(self._buf(x), self._buf(out)))
        return out

    def exchange(self, x, outs, ins):
        x = x.detach().contiguous()
        sb = self._buf(x)
        reqs = [self.gossip_comm.Isend(sb, dest=j, tag=t) for j, t in outs.items()]
        got = {j: torch.empty_like(x) for j in ins}
        reqs += [self.gossip_comm.Irecv(self._buf(got[j]), source=j, tag=t) for j, t in ins.items()]
        wait(reqs)
        return got

    def win_create(self, x):
        self.win_buf = x.detach().clone().contiguous()
        self.win = self.MPI.Win.Create(self._buf(self.win_buf), disp_unit=self.win_buf.element_size(), comm=self.world)

    def win_update(self, ranks, fn):
        win, MPI = self.win, self.MPI
        for r in ranks:
            win.Lock(r, MPI.LOCK_EXCLUSIVE)
        try:
            vals = []
            for r in ranks:
                v = torch.empty_like(self.win_buf)
                win.Get(self._buf(v), r)
                win.Flush(r)
                vals.append(v)
            if fn is None:
                return vals
            new = [v.detach().to(self.win_buf.dtype).contiguous() for v in fn(vals)]
            for r, v in zip(ranks, new):
                win.Put(self._buf(v), r)
                win.Flush(r)
            return new
        finally:
            for r in reversed(ranks):
                win.Unlock(r)

    def send(self, dst, x, tag, nbytes=None):
        x = x.detach().contiguous()
        h = np.array(header(x, tag, nbytes), dtype=np.int64)
        self.pending.append((self.hdr.Isend(h, dest=dst, tag=tag), h))
        self.pending.append((self.data.Isend(self._buf(x), dest=dst, tag=tag), x))
        self._prune()

    def recv(self, src, tag):
        MPI = self.MPI
        status = MPI.Status()
        h = np.empty(HEADER_LEN, dtype=np.int64)
        t0 = time.perf_counter()
        req = self.hdr.Irecv(h, source=MPI.ANY_SOURCE if src < 0 else src, tag=MPI.ANY_TAG if tag is None else tag)
        wait(req, status)
        waited = time.perf_counter() - t0
        s, got_tag = status.Get_source(), status.Get_tag()
        _, dtype, shape, nbytes = from_header(h)
        x = torch.empty(shape, dtype=dtype)
        wait(self.data.Irecv(self._buf(x), source=s, tag=got_tag))
        return s, got_tag, x, waited, nbytes

    def recv_within(self, src, tag, seconds):
        """``recv``, or ``None`` when no header matched within ``seconds``: ``Iprobe`` the header
        plane (spin :data:`SPIN_S`, then naps up to :data:`NAP_S`), so nothing has to be cancelled."""
        MPI = self.MPI
        status, t0 = MPI.Status(), time.perf_counter()
        source, mtag = MPI.ANY_SOURCE if src < 0 else src, MPI.ANY_TAG if tag is None else tag
        nap = 0.001
        while not self.hdr.Iprobe(source=source, tag=mtag, status=status):
            left = seconds - (time.perf_counter() - t0)
            if left <= 0:
                return None
            if time.perf_counter() - t0 > SPIN_S:
                time.sleep(min(nap, left))
                nap = min(2 * nap, NAP_S)
        s, got_tag = status.Get_source(), status.Get_tag()
        got = self.recv(s, got_tag)  # the probed header (per-sender order: it is the first that matches)
        return got[0], got[1], got[2], time.perf_counter() - t0, got[4]

    def gather_eval(self, x, counters):
        x = x.contiguous()
        root = self.workers.Get_rank() == 0
        n = self.workers.Get_size()
        X = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device) if root else None
        C = np.empty((n, len(counters)), dtype=np.float64) if root else None
        c = np.ascontiguousarray(counters, dtype=np.float64)
        wait([self.workers.Igather(self._buf(x), self._buf(X) if root else None, root=0),
              self.workers.Igather(c, C, root=0)])
        return (X, C) if root else None

    def finish(self):
        if self.pending:
            wait([r for r, _ in self.pending])
            self.pending = []

    def close(self):
        if self.win is not None:
            self.win.Free()
            self.win = None
        for c in (self.workers, self.gossip_comm, self.hdr, self.data, self.world):
            if c is not None and c != self.MPI.COMM_NULL:
                c.Free()
        self.workers = None

    def abort(self, msg):
        sys.stderr.flush()
        sys.stdout.flush()
        self.MPI.COMM_WORLD.Abort(1)
