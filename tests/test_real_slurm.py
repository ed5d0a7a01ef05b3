"""The real backends under SLURM: one batch job, 4 tasks, ``srun --mpi=pmi2`` for MPI and a
plain ``srun`` for torch.distributed (rank, world size and master address from SLURM_*),
on the throw-away local cluster of tests/slurm_cluster.py. Both runs must end with SimPy's
parameters. Skips without slurm-wlm/munge/root (fails under CI=true), like the cluster tests.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import small
from tests.slurm_cluster import LocalSlurm, SlurmError, require_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.mpi]
ROOT = Path(__file__).resolve().parents[1]


def test_srun_mpi_and_torch_match_simpy(tmp_path):
    from harness.config import load
    from harness.experiment import simulate

    require_slurm()
    pytest.importorskip("mpi4py")
    raw = small("dpsgd").model_dump(mode="json")
    raw.pop("backend")
    config = tmp_path / "dpsgd.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "runs"
    script = tmp_path / "job.sh"
    script.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        #SBATCH --ntasks=4
        #SBATCH --output={tmp_path}/job-%j.out
        #SBATCH --time=3
        set -euo pipefail
        cd {ROOT}
        export OMP_NUM_THREADS=1 HARNESS_TIMEOUT_S=60
        srun --mpi=pmi2 -n 4 {sys.executable} -m harness.cli run {config} --backend mpi --out {out} --quiet --save-params
        srun -n 4 {sys.executable} -m harness.cli run {config} --backend torch --out {out} --quiet --save-params
        """))
    cluster_dir = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short path for sockets
    try:
        with LocalSlurm(cluster_dir, cpus=4) as cluster:
            job = cluster.sbatch(script)
            states = cluster.wait(job, timeout=150)
    except SlurmError as e:
        pytest.fail(f"local SLURM cluster failed:\n{e}", pytrace=False)
    finally:
        shutil.rmtree(cluster_dir, ignore_errors=True)  # only the directory this test made
    log = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("job-*.out"))
    assert states == {str(job): "COMPLETED"}, f"{states}\n{log}"
    _, sfinal = simulate(load(config, ["backend=simpy"])[0])
    for backend, launcher in (("mpi", "MPI"), ("torch", "launcher srun")):
        (cfg,) = load(config, [f"backend={backend}"])
        record = json.loads((out / cfg.run_id / "run.json").read_text())
        assert record["status"] == "finished" and record["world_size"] == 4, log
        assert launcher in record["transport"], record["transport"]
        params = torch.load(out / cfg.run_id / "final_params.pt")["workers"]
        assert (params - sfinal).abs().max().item() < 1e-10, backend
