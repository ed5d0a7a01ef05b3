"""Overhead of the real backends: synchronous SGD through the harness vs hand-written loops.

    .venv/bin/python benchmarks/mpi_overhead.py              # re-launches itself: mpiexec -n 4
    .venv/bin/python benchmarks/mpi_overhead.py -n 1 --reps 15
    mpiexec -n 4 .venv/bin/python benchmarks/mpi_overhead.py

Same model, data, batches and maths in five variants, float32, 1 thread per rank:

* **harness mpi**: ``sync_sgd`` (momentum 0.9) interpreted by ``harness.backends.rank.RankDriver``
  over ``MPITransport``: generator, op dispatch, clocks, byte counters, one table row per
  worker and step (log_every=1).
* **mpi4py loop**: the same ``task.loss_and_grad`` + ``Allreduce`` (numpy views) + the same
  ``harness.transforms.sgd`` update, written as a plain loop.
* **harness torch** / **gloo loop**: the same two over torch.distributed (gloo).
* **DDP (gloo)**: ``torch.nn.parallel.DistributedDataParallel`` on the same MLP built from
  ``nn.Linear`` layers, ``torch.optim.SGD``, same batches.

Step time = wall time from a barrier to the end of the last step, divided by steps, max over
ranks. For the harness this is its own clock, which leaves out the evaluation gathers of
``Record`` (the loops do not evaluate either). Reported: median and best of ``--reps``
repetitions, with the variant order rotated each time. Overhead = ``harness / loop - 1``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# model -> (hidden sizes, steps per repetition)
MODELS = {"digits MLP 64-64-10": ([64, 64], 150), "MLP 64-1024-1024-10": ([1024, 1024], 30)}


def _cfg(hidden, steps, n, backend="mpi"):
    from harness.config import expand

    return expand({"n_workers": n, "steps": steps, "eval_every": steps, "seed": 0, "backend": backend,
                   "task": {"name": "digits", "hidden": hidden, "batch_size": 32},
                   "algorithm": {"name": "sync_sgd", "lr": 0.05, "momentum": 0.9}})[0]


def run_harness(MPI, comm, cfg):
    from harness.backends.mpi import MPITransport
    from harness.backends.rank import RankDriver

    drv = RankDriver(cfg, MPITransport(), on_timeout=lambda why: comm.Abort(1))
    drv.run()
    return drv.loop_s  # wall time from the start barrier to the last op, evaluation gathers excluded


def run_harness_torch(MPI, comm, cfg):
    from harness.backends.rank import RankDriver
    from harness.backends.torchdist import TorchTransport

    drv = RankDriver(cfg.model_copy(update={"backend": "torch"}), TorchTransport(), on_timeout=lambda why: comm.Abort(1))
    drv.run()
    return drv.loop_s


def _plain_loop(comm, cfg, allreduce_sum):
    """Sync SGD without the harness: gradient, ``allreduce_sum(g)``, momentum step."""
    from harness.tasks import Sampler, build_task
    from harness.transforms import sgd

    task = build_task(cfg.task, cfg.n_workers, cfg.seed)
    sampler = Sampler(task.shards, task.batch_size, cfg.seed)
    i, n = comm.rank, comm.size
    x = task.init_params(cfg.seed)
    opt = sgd(cfg.algorithm["lr"], cfg.algorithm["momentum"])
    state = opt.init(x)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        loss, g = task.loss_and_grad(x, sampler.worker(i))
        u, state = opt.update(allreduce_sum(g) / n, state, x)
        x = x + u
    return time.perf_counter() - t0


def run_plain(MPI, comm, cfg):
    import torch

    def allreduce_sum(g):
        out = torch.empty_like(g)
        comm.Allreduce(g.numpy(), out.numpy(), op=MPI.SUM)
        return out

    return _plain_loop(comm, cfg, allreduce_sum)


def run_gloo(MPI, comm, cfg):
    import torch.distributed as dist

    def allreduce_sum(g):
        dist.all_reduce(g)
        return g

    return _plain_loop(comm, cfg, allreduce_sum)


def run_ddp(MPI, comm, cfg):
    import torch
    from torch import nn

    from harness.tasks import Sampler, build_task

    task = build_task(cfg.task, cfg.n_workers, cfg.seed)
    sampler = Sampler(task.shards, task.batch_size, cfg.seed)
    sizes = [64, *cfg.task["hidden"], 10]
    layers = []
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.parallel.DistributedDataParallel(nn.Sequential(*layers))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.algorithm["lr"], momentum=cfg.algorithm["momentum"])
    i = comm.rank
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        idx = sampler.worker(i)
        loss = nn.functional.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def in_ranks(args):
    import torch
    import torch.distributed as dist
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        from harness.backends.launch import free_port

        os.environ["MASTER_PORT"] = str(comm.bcast(free_port() if comm.rank == 0 else None, root=0))
    dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size)
    variants = {"harness (mpi backend)": run_harness, "mpi4py loop": run_plain,
                "harness (torch backend)": run_harness_torch, "torch.distributed loop": run_gloo, "DDP (gloo)": run_ddp}
    table = []
    for name, (hidden, steps) in MODELS.items():
        steps = args.steps or steps
        cfg = _cfg(hidden, steps, comm.size)
        for fn in variants.values():  # warm-up
            fn(MPI, comm, _cfg(hidden, 20, comm.size))
        times = {v: [] for v in variants}
        names = list(variants)
        for r in range(args.reps):
            for v in names[r % len(names):] + names[: r % len(names)]:  # rotate the order: no position bias
                t = variants[v](MPI, comm, cfg)
                times[v].append(comm.allreduce(t, op=MPI.MAX) / steps * 1e3)
        from harness.tasks import build_task

        d = build_task(cfg.task, comm.size, 0).dim
        table.append((name, d, steps, times))
    dist.destroy_process_group()
    if comm.rank == 0:
        for label, stat in (("median", statistics.median), ("best", min)):
            _table(table, stat, f"sync SGD step time (ms/step), {comm.size} ranks on {os.cpu_count()} cores, "
                                f"float32, {label} of {args.reps} repetitions")


def _table(table, stat, title):
    print(f"\n{title}\n")
    print("| model | params | harness mpi | mpi4py loop | overhead | harness torch | gloo loop | overhead "
          "| DDP (gloo) | harness mpi vs DDP |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, d, steps, times in table:
        t = {v: stat(ts) for v, ts in times.items()}
        h, p = t["harness (mpi backend)"], t["mpi4py loop"]
        ht, g, q = t["harness (torch backend)"], t["torch.distributed loop"], t["DDP (gloo)"]
        print(f"| {name} ({steps} steps) | {d:,} | {h:.3f} | {p:.3f} | {100 * (h / p - 1):+.1f} % "
              f"| {ht:.3f} | {g:.3f} | {100 * (ht / g - 1):+.1f} % | {q:.3f} | {100 * (h / q - 1):+.1f} % |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="steps per repetition (default: per model)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("-n", type=int, default=4, help="ranks when re-launching under mpiexec")
    args = ap.parse_args()
    launched = any(v in os.environ for v in ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK"))
    if launched:
        return in_ranks(args)
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if mpiexec is None:
        sys.exit("mpi_overhead: no mpiexec found (pip install mpich mpi4py, or use your cluster's MPI)")
    cmd = [mpiexec, "-n", str(args.n), sys.executable, __file__, "--steps", str(args.steps), "--reps", str(args.reps)]
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
