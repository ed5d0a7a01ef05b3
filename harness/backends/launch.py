"""What a launcher tells a rank: rank, world size, local rank, rendezvous address.

Launchers and the variables read (first match wins):

=============  ====================================================================
torchrun       ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
srun (SLURM)   ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; ``MASTER_ADDR``
               defaults to the first host of ``scontrol show hostnames $SLURM_JOB_NODELIST``,
               ``MASTER_PORT`` to ``20000 + SLURM_JOB_ID % 20000``
mpiexec        ``PMI_RANK`` (MPICH/Hydra), ``PMIX_RANK``, ``OMPI_COMM_WORLD_RANK`` (only for
               "print on rank 0"; the MPI backend asks MPI itself)
=============  ====================================================================
"""
from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

RANK_VARS = ("RANK", "PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID")
DEFAULT_TIMEOUT_S = 300.0


def env_rank() -> int:
    for var in RANK_VARS:
        v = os.environ.get(var)
        if v not in (None, ""):
            try:
                return int(v)
            except ValueError:
                continue
    return 0


def op_timeout_s() -> float:
    """Seconds one communication op may block, or a rank may send no heartbeat, before the
    run is aborted as hung (``HARNESS_TIMEOUT_S``, default 300; 0 disables both checks)."""
    from harness import envvars  # [issue 21] 'abc', -5, nan: one line naming the variable, not the default

    return envvars.get("HARNESS_TIMEOUT_S")


@dataclass(frozen=True)
class TorchEnv:
    rank: int
    world: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str


def torch_env() -> TorchEnv:
    """Rank layout for ``torch.distributed`` from torchrun's or SLURM's variables; sets
    ``MASTER_ADDR``/``MASTER_PORT`` in ``os.environ`` when it chose them."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        launcher = "torchrun"
    elif "SLURM_PROCID" in env:
        rank = int(env["SLURM_PROCID"])
        world = int(env.get("SLURM_NTASKS") or env.get("SLURM_STEP_NUM_TASKS") or 1)
        local = int(env.get("SLURM_LOCALID", 0))
        launcher = "srun"
        if not env.get("MASTER_ADDR"):
            env["MASTER_ADDR"] = first_slurm_host()
        if not env.get("MASTER_PORT"):
            env["MASTER_PORT"] = str(20000 + int(env.get("SLURM_JOB_ID", 0) or 0) % 20000)
    else:  # a plain `harness run` (one rank)
        rank, world, local, launcher = 0, 1, 0, "none"
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(free_port()))
    addr = env.get("MASTER_ADDR")
    port = env.get("MASTER_PORT")
    if not addr or not port:
        raise RuntimeError(f"torch backend: MASTER_ADDR/MASTER_PORT unset (launcher: {launcher}); "
                           "launch with torchrun or srun, or export them")
    return TorchEnv(rank, world, local, addr, int(port), launcher)


def first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"torch backend: cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol ({e}); "
                           "export MASTER_ADDR") from None
    return out[0] if out else "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_params(path, workers, server=None) -> Path:
    """``torch.save({"workers": [n, d], "server": [d] | None})`` to ``path``, atomically."""
    import torch

    from results.store import atomic_write

    return atomic_write(path, lambda tmp: torch.save({"workers": workers, "server": server}, tmp))
