"""The measured job of ``harness calibrate``: every rank runs this (under mpiexec, torchrun, srun).

1. **Communication** on the run's own transport (:class:`harness.backends.transport.Transport`,
   so MPI and torch.distributed alike): all-reduce and all-gather over all ranks, and
   point-to-point ping-pong (``send`` then ``recv`` back, as a ``Send``/``Recv`` pays it:
   header and payload) on one pair of ranks per link class (same node, other node), for a
   few payload sizes. Every repetition starts after a barrier; a collective's time is the
   slowest rank's, a one-way message half a round trip.
2. **Compute**: the config's real job (its task, model and algorithm) for its ``steps``,
   through :func:`harness.backends.runner.run_rank` on the same transport, so each step's
   ``compute_s`` is measured under the job's own load (other ranks computing or polling on
   the same cores: contention is in the numbers, not in a separate term).

Rank 0 returns both tables; the other ranks return ``None``.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pandas as pd
import torch

SIZES = (64, 4096, 65536, 1 << 20)  # payload bytes (float32)
COMM_COLUMNS = ["op", "nbytes", "members", "nodes", "link", "rep", "seconds"]


def _reps(nbytes: int, reps: int) -> int:
    return max(3, reps // 4) if nbytes >= 1 << 20 else reps


def _time_collectives(tr, sizes, reps, nodes: int) -> list[tuple]:
    rows = []
    for op, fn in (("allreduce", tr.allreduce_sum), ("allgather", tr.allgather)):
        for b in sizes:
            x = torch.zeros(max(1, b // 4), dtype=torch.float32)
            fn(x)  # warm-up: connections, buffers
            for r in range(_reps(b, reps)):
                tr.barrier()
                t0 = time.perf_counter()
                fn(x)
                rows.append((op, x.numel() * 4, tr.size, nodes, "", r, time.perf_counter() - t0))
    return rows


def _time_p2p(tr, sizes, reps, pairs: dict[str, tuple[int, int]]) -> list[tuple]:
    rows, me = [], tr.rank
    for link, (a, b) in pairs.items():
        for nbytes in sizes:
            x = torch.zeros(max(1, nbytes // 4), dtype=torch.float32)
            for r in range(-1, _reps(nbytes, reps)):  # r = -1: warm-up
                tr.barrier()
                if me == a:
                    t0 = time.perf_counter()
                    tr.send(b, x, 7)
                    tr.recv(b, 7)
                    if r >= 0:
                        rows.append(("p2p", x.numel() * 4, 2, 1 + (link == "inter"), link, r,
                                     (time.perf_counter() - t0) / 2))
                elif me == b:
                    tr.recv(a, 7)
                    tr.send(a, x, 7)
            tr.finish()
    return rows


def link_pairs(hosts: list[str]) -> dict[str, tuple[int, int]]:
    """One pair of ranks per link class: two on one node (``intra``), two on different
    nodes (``inter``), whichever exist."""
    pairs = {}
    for j in range(1, len(hosts)):
        cls = "intra" if hosts[j] == hosts[0] else "inter"
        pairs.setdefault(cls, (0, j))
    return pairs


def measure_comm(tr, sizes=SIZES, reps: int = 20) -> pd.DataFrame | None:
    """Communication times on all ranks of ``tr`` (collective); the table on rank 0."""
    tr.setup(list(range(tr.size)))
    hosts = tr.gather_obj(socket.gethostname())
    hosts = tr.bcast_obj(hosts)
    nodes = len(set(hosts))
    rows = _time_collectives(tr, sizes, reps, nodes) + _time_p2p(tr, sizes, reps, link_pairs(hosts))
    parts = tr.gather_obj(rows)
    if tr.rank != 0:
        return None
    df = pd.DataFrame([r for p in parts for r in p], columns=COMM_COLUMNS)
    coll = df[df.op != "p2p"].groupby(["op", "nbytes", "members", "nodes", "link", "rep"], as_index=False).seconds.max()
    out = pd.concat([coll, df[df.op == "p2p"]], ignore_index=True)[COMM_COLUMNS]
    out.attrs["hosts"] = hosts
    return out


def step_compute(metrics: pd.DataFrame, warmup: int = 3) -> pd.DataFrame:
    """``worker, step, seconds``: each worker's compute time per step (the differences of
    its cumulative ``compute_s``), without the first ``warmup`` steps."""
    w = metrics[(metrics.worker >= 0) & (metrics.event == "step")].sort_values(["worker", "step"])
    w = w.assign(seconds=w.groupby("worker").compute_s.diff(), dsteps=w.groupby("worker").step.diff())
    w = w[(w.step > warmup) & (w.dsteps == 1)]
    return w[["worker", "step", "seconds"]].reset_index(drop=True)


def measure(cfg, out: Path, transport_cls, sizes=SIZES, reps: int = 20):
    """Both measurements on every rank; ``(comm table, metrics of the job, hosts)`` on rank 0."""
    from harness.backends.runner import run_rank
    from results.store import METRICS

    from harness.config import ConfigError

    from harness.backends.supervisor import supervise

    supervise()  # as harness.backends.runner.run_rank: before the transport starts MPI or a process group
    tr = transport_cls()
    if tr.size != cfg.n_workers:  # before timing anything: every rank sees it, rank 0 says it
        launch = {"mpi": f"mpiexec -n {cfg.n_workers}", "torch": f"torchrun --nproc-per-node {cfg.n_workers}"}
        raise ConfigError(f"n_workers: the calibration job has {cfg.n_workers} workers but {tr.size} rank(s) were "
                          f"started; launch with `{launch[cfg.backend]} harness calibrate ...` or --set n_workers={tr.size}")
    comm = measure_comm(tr, sizes, reps)
    run_dir, _ = run_rank(cfg, out, lambda: tr, force=True)  # closes tr
    if comm is None:
        return None
    return comm, pd.read_parquet(run_dir / METRICS), comm.attrs["hosts"]
