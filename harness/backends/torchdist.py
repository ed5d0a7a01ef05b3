"""torch.distributed transport: gloo on CPU, NCCL on GPUs (one GPU per local rank).

``torchrun --nproc-per-node N --no-python harness run CONFIG --backend torch`` (or
``srun``, which this module reads from ``SLURM_*``; see :mod:`harness.backends.launch`).

Two planes:

* **data** (the default group: NCCL with CUDA, else gloo) carries every payload:
  collectives, gossip (``batch_isend_irecv``, grouped so NCCL cannot deadlock) and
  point-to-point payloads. Payloads are moved to ``cuda:<local rank>`` for NCCL and the
  results back to the algorithm's device.
* **control** (a gloo group over all ranks, CPU) carries small things: barriers, object
  gathers and the *header* of every point-to-point message (sender, user tag, dtype,
  shape). NCCL cannot receive from an unknown source, so ``Recv(ANY)`` first receives a
  header from any source on gloo, then the payload from that sender on the data plane.
  Messages whose tag did not match the ``Recv`` wait in a local queue (MPI-like matching:
  per-sender order is kept). On CPU both planes are gloo: one code path everywhere.

``HARNESS_TORCH_BACKEND=gloo`` forces gloo even when CUDA is available.
"""
from __future__ import annotations

import atexit
import datetime
import os
import sys
import time
import uuid

import numpy as np
import torch

from harness.backends.launch import DEFAULT_TIMEOUT_S, op_timeout_s, torch_env
from harness.backends.transport import HEADER_LEN, Transport, from_header, header

_STATE: dict = {}  # one process group per process, kept across runs
HDR_TAG, PAYLOAD_TAG, GOSSIP_TAG0 = 0, 1, 2


def _init():
    import torch.distributed as dist

    if _STATE:
        return _STATE
    if not dist.is_available():
        raise ValueError("backend: this torch build has no torch.distributed; use --backend mpi")
    env = torch_env()
    # longer than the watchdog's limit, so that the watchdog (which names the op and blames
    # the peer through the heartbeats) speaks first; gloo's own timeout is the backstop
    op = op_timeout_s()
    timeout = datetime.timedelta(seconds=op + 30 if op > 0 else 2 * DEFAULT_TIMEOUT_S)
    from harness import envvars  # [issue 21] auto | gloo | nccl, checked

    choice = envvars.get("HARNESS_TORCH_BACKEND")
    if choice == "nccl" and not torch.cuda.is_available():
        raise ValueError("HARNESS_TORCH_BACKEND='nccl': NCCL needs CUDA and torch sees no GPU here; use auto or gloo")
    cuda = torch.cuda.is_available() and choice != "gloo"
    if cuda:
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world, timeout=timeout)
    ctrl = dist.new_group(backend="gloo", timeout=timeout)
    _STATE.update(dist=dist, ctrl=ctrl, device=device, backend=backend, groups={}, env=env)
    atexit.register(_shutdown)
    return _STATE


def _shutdown():
    dist = _STATE.get("dist")
    try:
        if dist is not None and dist.is_initialized():
            dist.barrier(group=_STATE["ctrl"])
            dist.destroy_process_group(_STATE["ctrl"])
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass


class TorchTransport(Transport):
    name = "torch"

    def __init__(self):
        st = _init()
        self.dist, self.ctrl, self.device = st["dist"], st["ctrl"], st["device"]
        self.rank, self.size = self.dist.get_rank(), self.dist.get_world_size()
        self.job = self.bcast_obj(uuid.uuid4().hex[:12] if self.rank == 0 else None)  # heartbeat dir
        self.workers, self.worker_ranks = None, list(range(self.size))
        self.works: list = []  # (work, keep-alive tensors) of pending sends
        self.queue: list = []  # received messages no Recv has asked for yet

    def describe(self) -> str:
        st = _STATE
        return f"torch.distributed {st['backend']} (data) + gloo (control), device {self.device}, launcher {st['env'].launcher}"

    def _dev(self, x):
        return x.detach().to(self.device).contiguous()

    def _prune(self):
        if len(self.works) > 64:
            self.works = [(w, keep) for w, keep in self.works if not w.is_completed()]

    # -- Transport ---------------------------------------------------------------------------
    def setup(self, workers):
        self.worker_ranks = list(workers)
        if len(workers) == self.size:
            self.workers = None  # the default group
        else:
            key = tuple(workers)
            groups = _STATE["groups"]
            if key not in groups:  # new_group is collective over all ranks: every rank calls setup
                groups[key] = self.dist.new_group(ranks=list(workers))
            self.workers = groups[key]

    def barrier(self):
        self.dist.barrier(group=self.ctrl)

    def bcast_obj(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, group=self.ctrl)
        return box[0]

    def gather_obj(self, obj):
        out = [None] * self.size if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0, group=self.ctrl)
        return out

    def allreduce_sum(self, x):
        buf = x.detach().to(self.device, copy=True).contiguous()  # all_reduce works in place
        self.dist.all_reduce(buf, op=self.dist.ReduceOp.SUM, group=self.workers)
        return buf.to(x.device)

    def allgather(self, x):
        src = self._dev(x)
        n = len(self.worker_ranks)
        out = torch.empty((n * src.numel(),), dtype=src.dtype, device=self.device)
        gather = getattr(self.dist, "all_gather_single", None) or self.dist.all_gather_into_tensor
        gather(out, src.reshape(-1), group=self.workers)
        return out.reshape(n, *x.shape).to(x.device)

    def exchange(self, x, outs, ins):
        dist = self.dist
        src = self._dev(x)
        got = {j: torch.empty_like(src) for j in ins}
        p2p = [dist.P2POp(dist.isend, src, j, tag=GOSSIP_TAG0 + t) for j, t in outs.items()]
        p2p += [dist.P2POp(dist.irecv, got[j], j, tag=GOSSIP_TAG0 + t) for j, t in ins.items()]
        if p2p:
            for w in dist.batch_isend_irecv(p2p):
                w.wait()
        return {j: t.to(x.device) for j, t in got.items()}

    def send(self, dst, x, tag, nbytes=None):
        h = torch.tensor(header(x, tag, nbytes), dtype=torch.int64)
        buf = self._dev(x)
        self.works.append((self.dist.isend(h, dst, group=self.ctrl, tag=HDR_TAG), h))
        self.works.append((self.dist.isend(buf, dst, tag=PAYLOAD_TAG), buf))
        self._prune()

    def recv(self, src, tag):
        def match(m):
            return (src < 0 or m[0] == src) and (tag is None or m[1] == tag)

        for k, m in enumerate(self.queue):
            if match(m):
                s, t, x, nbytes = self.queue.pop(k)
                return s, t, x, 0.0, nbytes
        waited = 0.0
        while True:
            h = torch.empty(HEADER_LEN, dtype=torch.int64)
            t0 = time.perf_counter()
            s = self.dist.recv(h, src=None if src < 0 else src, group=self.ctrl, tag=HDR_TAG)
            waited += time.perf_counter() - t0
            got_tag, dtype, shape, nbytes = from_header(h.tolist())
            x = torch.empty(shape, dtype=dtype, device=self.device)
            self.dist.recv(x, src=s, tag=PAYLOAD_TAG)
            m = (s, got_tag, x.cpu(), nbytes)
            if match(m):
                return m[0], m[1], m[2], waited, m[3]
            self.queue.append(m)

    def gather_eval(self, x, counters):
        dist = self.dist
        root = self.worker_ranks[0]
        n = len(self.worker_ranks)
        buf = self._dev(x)
        c = torch.as_tensor(np.asarray(counters, dtype=np.float64), device=self.device)
        mine = self.rank == root
        xs = [torch.empty_like(buf) for _ in range(n)] if mine else None
        cs = [torch.empty_like(c) for _ in range(n)] if mine else None
        dist.gather(buf, xs, dst=root, group=self.workers)
        dist.gather(c, cs, dst=root, group=self.workers)
        if not mine:
            return None
        return torch.stack(xs).to(x.device), torch.stack(cs).cpu().numpy()

    def finish(self):
        for w, _ in self.works:
            w.wait()
        self.works = []

    def close(self):
        self.queue = []

    def abort(self, msg):
        from harness.backends.liveness import end_culprit

        sys.stderr.flush()
        sys.stdout.flush()
        end_culprit()  # a stopped peer would keep torchrun waiting 30 s, and be missed as the root cause
        os._exit(1)  # torchrun (or srun --kill-on-bad-exit) stops the other ranks
