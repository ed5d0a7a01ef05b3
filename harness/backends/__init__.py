"""Real backends: one OS process per rank, wall-clock time.

* ``mpi``   (mpi4py): ``mpiexec -n 4 harness run CONFIG --backend mpi`` or ``srun harness run ...``
* ``torch`` (torch.distributed; gloo on CPU, NCCL + a gloo control plane on GPUs):
  ``torchrun --nproc-per-node 4 --no-python harness run CONFIG --backend torch`` or ``srun ...``

Both share the per-rank interpreter in :mod:`harness.backends.rank`; a backend only
provides a *transport* (collectives, neighbour exchange, point-to-point messages,
gathers to rank 0, abort). Nothing here is imported until a real run starts, so the
simulators never need mpi4py or a process group. Launch commands: ``docs/real-backends.md``.
"""
from __future__ import annotations

from pathlib import Path

from harness.capabilities import BACKENDS, REAL as REAL_BACKENDS

PARAMS_FILE = "final_params.pt"


def run_to_dir(cfg, out, force: bool = False, save_params: bool = False) -> tuple[Path, bool]:
    """Run ``cfg`` on this process's rank into ``out/<run_id>/``; every rank calls this.
    Returns ``(run_dir, ran)`` on every rank; only rank 0 writes files."""
    from harness.backends.runner import run_rank

    if cfg.backend not in REAL_BACKENDS:
        raise ValueError(f"backend: {cfg.backend!r} is not a real backend; choose one of {REAL_BACKENDS}")
    transport = BACKENDS[cfg.backend].load()
    return run_rank(cfg, Path(out), transport, force=force, save_params=save_params)


def env_rank() -> int:
    """This process's rank as the launcher announces it (0 when not launched in parallel).
    Read from the environment only, so the CLI can print on rank 0 alone without MPI."""
    from harness.backends.launch import env_rank as _env_rank

    return _env_rank()


def save_params(path, workers, server=None) -> Path:
    """Write ``{"workers": [n, d], "server": [d] or None}`` to ``path`` atomically
    (``--save-params``; the same file from every backend)."""
    from harness.backends.launch import save_params as _save

    return _save(path, workers, server)


__all__ = ["PARAMS_FILE", "REAL_BACKENDS", "env_rank", "run_to_dir", "save_params"]
