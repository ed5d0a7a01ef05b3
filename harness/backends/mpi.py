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
"""
from __future__ import annotations

import sys
import uuid

import numpy as np
import torch

from harness.backends.supervisor import supervise
from harness.backends.transport import HEADER_LEN, Transport, from_header, header



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
        supervise()  # before MPI starts: the launcher's process stays behind to report signals
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
        self.world.Barrier()

    def bcast_obj(self, obj):
        return self.world.bcast(obj, root=0)

    def gather_obj(self, obj):
        return self.world.gather(obj, root=0)

    def allreduce_sum(self, x):
        x = x.detach().contiguous()
        out = torch.empty_like(x)
        self.workers.Allreduce(self._buf(x), self._buf(out), op=self.MPI.SUM)
        return out

    def allgather(self, x):
        x = x.detach().contiguous()
        out = torch.empty((self.workers.Get_size(), *x.shape), dtype=x.dtype, device=x.device)
        self.workers.Allgather(self._buf(x), self._buf(out))
        return out

    def exchange(self, x, outs, ins):
        x = x.detach().contiguous()
        sb = self._buf(x)
        reqs = [self.gossip_comm.Isend(sb, dest=j, tag=t) for j, t in outs.items()]
        got = {j: torch.empty_like(x) for j in ins}
        reqs += [self.gossip_comm.Irecv(self._buf(got[j]), source=j, tag=t) for j, t in ins.items()]
        self.MPI.Request.Waitall(reqs)
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
        import time

        MPI = self.MPI
        status = MPI.Status()
        h = np.empty(HEADER_LEN, dtype=np.int64)
        t0 = time.perf_counter()
        self.hdr.Recv(h, source=MPI.ANY_SOURCE if src < 0 else src, tag=MPI.ANY_TAG if tag is None else tag,
                      status=status)
        waited = time.perf_counter() - t0
        s, got_tag = status.Get_source(), status.Get_tag()
        _, dtype, shape, nbytes = from_header(h)
        x = torch.empty(shape, dtype=dtype)
        self.data.Recv(self._buf(x), source=s, tag=got_tag)
        return s, got_tag, x, waited, nbytes

    def gather_eval(self, x, counters):
        x = x.contiguous()
        root = self.workers.Get_rank() == 0
        n = self.workers.Get_size()
        X = torch.empty((n, *x.shape), dtype=x.dtype, device=x.device) if root else None
        C = np.empty((n, len(counters)), dtype=np.float64) if root else None
        self.workers.Gather(self._buf(x), self._buf(X) if root else None, root=0)
        self.workers.Gather(np.ascontiguousarray(counters, dtype=np.float64), C, root=0)
        return (X, C) if root else None

    def finish(self):
        if self.pending:
            self.MPI.Request.Waitall([r for r, _ in self.pending])
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
