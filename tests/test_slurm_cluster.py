"""Tests against a real single-node SLURM cluster started by tests/slurm_cluster.py.

Proves the capabilities the harness needs: job arrays with a throttle,
2-rank MPI through ``srun --mpi=pmi2`` (pip mpich + mpi4py), and
``scontrol requeue`` of a running job being visible to the job script
(SLURM_RESTART_COUNT).  Also checks that teardown stops only what it started.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

try:  # works with or without a tests/__init__.py
    from tests.slurm_cluster import LocalSlurm, SlurmError, slurm_cluster
    import tests.slurm_cluster as slurm_mod
except ImportError:  # pragma: no cover - rootdir not on sys.path
    from slurm_cluster import LocalSlurm, SlurmError, slurm_cluster  # type: ignore
    import slurm_cluster as slurm_mod  # type: ignore

__all__ = ["slurm_cluster"]  # the fixture is used by name below

pytestmark = pytest.mark.slurm


def _script(path: Path, body: str) -> Path:
    # set -e: a failing srun must fail the job (the batch job's state is the
    # exit status of the script, i.e. of its *last* command otherwise).
    body = textwrap.dedent(body).lstrip("\n")
    sbatch_lines = [ln for ln in body.splitlines() if ln.startswith("#SBATCH")]
    rest = [ln for ln in body.splitlines() if not ln.startswith("#SBATCH")]
    path.write_text("\n".join(["#!/bin/bash", *sbatch_lines, "set -euo pipefail", *rest]) + "\n")
    path.chmod(0o755)
    return path


def _slurm_out(directory: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}"
                     for p in sorted(directory.glob("*.out")))


def _cmdline(pid: int) -> str:
    try:
        return os.path.basename(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
    except OSError:
        return "?"


def test_cluster_is_up(slurm_cluster):
    assert slurm_cluster.node_state().rstrip("*") == "idle"
    assert all(slurm_cluster.alive().values()), slurm_cluster.alive()
    out = slurm_cluster.run(["scontrol", "show", "config"]).stdout
    assert str(slurm_cluster.munge_socket) in out      # our munged, not the system one
    assert "JobRequeue              = 1" in out
    assert slurm_cluster.partition == "debug"


def test_job_array_throttled(slurm_cluster, tmp_path):
    script = _script(tmp_path / "array.sh", """
        #SBATCH --array=0-3%2
        #SBATCH --ntasks=1
        #SBATCH --output=array-%A_%a.out
        start=$(date +%s.%N)
        sleep 1
        echo "task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID}" > "done-${SLURM_ARRAY_TASK_ID}.txt"
        echo "${start} $(date +%s.%N)" > "span-${SLURM_ARRAY_TASK_ID}.txt"
        """)
    job = slurm_cluster.sbatch(script)
    states = slurm_cluster.wait(job, timeout=60)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(4)}, \
        f"{states}\n{_slurm_out(tmp_path)}"
    for i in range(4):
        assert (tmp_path / f"done-{i}.txt").read_text() == f"task {i} of job {job}\n"
    # %2 throttle: at no task's start were more than 2 tasks running
    spans = [tuple(map(float, (tmp_path / f"span-{i}.txt").read_text().split())) for i in range(4)]
    assert max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans) <= 2, spans
    recs = slurm_cluster.jobcomp_records(job)
    assert sorted(r["ArrayTaskId"] for r in recs) == ["0", "1", "2", "3"]


def test_mpi_two_ranks_srun_pmi2(slurm_cluster, tmp_path):
    code = ("import json, os, sys; from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "total = c.allreduce(c.rank + 1); "
            "open(f'rank{c.rank}.json', 'w').write(json.dumps(dict(rank=c.rank, size=c.size, "
            "total=total, slurm_procid=os.environ.get('SLURM_PROCID'), "
            "lib=MPI.Get_library_version().splitlines()[0])))")
    script = _script(tmp_path / "mpi.sh", f"""
        #SBATCH --ntasks=2
        #SBATCH --output=mpi-%j.out
        #SBATCH --time=2
        srun --mpi=pmi2 -n 2 {sys.executable} -c "{code}"
        """)
    job = slurm_cluster.sbatch(script)
    states = slurm_cluster.wait(job, timeout=90)
    assert states == {str(job): "COMPLETED"}, f"{states}\n{_slurm_out(tmp_path)}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["size"] == 2 for r in ranks), ranks
    assert all(r["total"] == 3 for r in ranks), ranks          # allreduce really communicated
    assert [r["slurm_procid"] for r in ranks] == ["0", "1"]


def test_requeue_running_job_restarts(slurm_cluster, tmp_path):
    script = _script(tmp_path / "requeue.sh", """
        #SBATCH --requeue
        #SBATCH --output=requeue-%j.out
        #SBATCH --open-mode=append
        n="${SLURM_RESTART_COUNT:-0}"
        echo "run restart_count=${n}" >> runs.log
        if [ "$n" -ge 1 ]; then
            echo "restarted after requeue" > restarted.txt
            exit 0
        fi
        touch started.txt
        sleep 120
        """)
    job = slurm_cluster.sbatch(script)
    slurm_cluster.wait_for_state(job, {"RUNNING"}, timeout=30)
    deadline = time.monotonic() + 20
    while not (tmp_path / "started.txt").exists():
        assert time.monotonic() < deadline, _slurm_out(tmp_path)
        time.sleep(0.2)
    t0 = time.monotonic()
    slurm_cluster.requeue(job)
    states = slurm_cluster.wait(job, timeout=60)
    requeue_to_done = time.monotonic() - t0
    assert states == {str(job): "COMPLETED"}, f"{states}\n{_slurm_out(tmp_path)}"
    assert (tmp_path / "runs.log").read_text().splitlines() == [
        "run restart_count=0", "run restart_count=1"]
    assert (tmp_path / "restarted.txt").exists()
    rec = slurm_cluster.job_records(job)[0]
    assert rec["Restarts"] == "1", rec
    # jobcomp/filetxt logs the interrupted run too (with the state it had when
    # logged: PENDING), then the final one
    comp = slurm_cluster.jobcomp_records(job)
    assert len(comp) == 2 and comp[-1]["JobState"] == "COMPLETED", comp
    print(f"requeue -> COMPLETED took {requeue_to_done:.1f}s")


def test_stop_kills_only_what_it_started(slurm_cluster, tmp_path_factory):
    """A second private cluster with a running job is torn down completely,
    while the module's cluster keeps working."""
    root = tmp_path_factory.mktemp("slurm2")
    work = root / "work"
    work.mkdir()
    script = _script(work / "sleep.sh", """
        #SBATCH --output=sleep-%j.out
        srun sleep 300
        """)
    other = LocalSlurm(root)
    t_stop = None
    with other:
        assert other.ctld_port != slurm_cluster.ctld_port
        job = other.sbatch(script)
        other.wait_for_state(job, {"RUNNING"}, timeout=30)
        deadline = time.monotonic() + 20  # wait for the step (slurmstepd + sleep)
        while True:
            cmds = sorted(_cmdline(p) for p in other._marked_pids())
            if "sleep" in cmds or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        pids = {n: p.pid for n, p in other.procs.items()}
        marked_before = other._marked_pids()
        print("marked processes of the second cluster:", cmds)
        assert any(c.startswith("slurmstepd") for c in cmds) and "sleep" in cmds, cmds
        t_stop = time.monotonic()
    print(f"stop() with a running job took {time.monotonic() - t_stop:.1f}s")
    assert not any(other.alive().values()), other.alive()
    assert other._watchdog.poll() is not None
    assert other._marked_pids() == [], "leftover processes of the stopped cluster"
    for pid in marked_before + list(pids.values()):
        assert not Path(f"/proc/{pid}").exists() or \
            Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    # the fixture's cluster is untouched
    assert all(slurm_cluster.alive().values())
    assert slurm_cluster.node_state().rstrip("*") == "idle"


def test_missing_programs_skip_or_fail(monkeypatch):
    """Without slurm/munge: skip normally, pytest.fail with the reason under CI=true."""
    monkeypatch.setattr(slurm_mod, "_which", lambda name: None)
    reason = slurm_mod.missing_requirements()
    assert reason and "slurmctld" in reason and "munged" in reason
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="slurmctld"):
        slurm_mod.require_slurm()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="slurmctld"):
        slurm_mod.require_slurm()
    with pytest.raises(SlurmError, match="not found"):
        LocalSlurm("/tmp/never-started").start()
