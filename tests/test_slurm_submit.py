"""Issue [7] on a real single-node SLURM cluster: array sweeps, requeue, MPI through srun."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import results
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm

SWEEP = """name: sw
algorithm: {{name: local_sgd, period: 4}}
n_workers: 4
steps: {steps}
eval_every: {eval_every}
task: {{hidden: [8]}}
grid: {{seed: {seeds}}}
"""


def _harness(cluster, *args, cwd=None, **extra):
    env = {**os.environ, **cluster.env, **extra}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def _job(stdout: str) -> int:
    m = re.search(r"submitted job (\d+)", stdout)
    assert m, stdout
    return int(m.group(1))


def _logs(out: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted((out / "slurm-logs").glob("*")))


def _no_duplicates(df):
    key = ["run_id", "worker", "event", "step"]
    assert not df[df.event != "failed"].duplicated(key).any()


def test_array_sweep_then_resubmit_skips_finished(slurm_cluster, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(SWEEP.format(steps=20, eval_every=10, seeds="[0, 1, 2, 3]"))
    out = tmp_path / "out"
    r = _harness(slurm_cluster, "slurm", "submit", str(cfg), "--out", str(out), "--partition", "debug",
                 "--max-concurrent", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    states = slurm_cluster.wait(_job(r.stdout), timeout=180)
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(out))
    df = results.load(out)
    assert df.run_id.nunique() == 4 and set(df.status) == {"finished"} and set(df.seed) == {0, 1, 2, 3}
    _no_duplicates(df)
    st = _harness(slurm_cluster, "slurm", "status", str(out))
    assert st.returncode == 0 and st.stdout.splitlines()[0].endswith(": 4 done"), (st.stdout, st.stderr)
    again = _harness(slurm_cluster, "slurm", "submit", str(cfg), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0 and "nothing to submit: all 4 run(s) already finished" in again.stdout


def _requeue_and_release(cluster, job, timeout=90):
    """Requeue and wait until the task is queued again. SLURM itself restarts it once the old
    job credential expired (``cred_expire``, 10 s in the test cluster): forcing an earlier
    start (``StartTime=now``) races with the revoked credential and fails the relaunch."""
    cluster.run(["scontrol", "requeue", str(job)])
    deadline = time.time() + timeout
    while time.time() < deadline:
        recs = cluster.job_records(job)
        if recs and all(int(r.get("Restarts", "0")) >= 1 and r.get("JobState") in ("PENDING", "RUNNING", "COMPLETED")
                        for r in recs):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not come back after requeue: {cluster.job_records(job)}")


def test_requeue_of_a_running_task_ends_complete_and_duplicate_free(slurm_cluster, tmp_path):
    cfg = tmp_path / "long.yaml"
    cfg.write_text(SWEEP.format(steps=3000, eval_every=500, seeds="[7]"))
    out = tmp_path / "out"
    r = _harness(slurm_cluster, "slurm", "submit", str(cfg), "--out", str(out), cwd=tmp_path,
                 HARNESS_PROGRESS_EVERY="0.5")  # sbatch passes the environment on to the job
    assert r.returncode == 0, r.stderr
    job = _job(r.stdout)
    slurm_cluster.wait_for_state(job, {"RUNNING"}, timeout=60)
    run_json = next(iter(out.glob("*/run.json")), None)
    deadline = time.time() + 30
    while run_json is None and time.time() < deadline:  # the task has really started the run
        time.sleep(0.2)
        run_json = next(iter(out.glob("*/run.json")), None)
    assert run_json is not None and json.loads(run_json.read_text())["status"] == "running"
    st = _harness(slurm_cluster, "slurm", "status", str(out))
    assert st.returncode == 0 and re.search(rf"^\s+1\s+\S+\s+running\s+{job}_1\s*$", st.stdout, re.M), st.stdout
    _requeue_and_release(slurm_cluster, job)
    states = slurm_cluster.wait(job, timeout=240)
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(out))
    assert "Restarts=1" in slurm_cluster.run(["scontrol", "show", "job", str(job)], check=False).stdout or \
        any(rec.get("Restarts") == "1" for rec in slurm_cluster.job_records(job))
    df = results.load(out)
    assert df.run_id.nunique() == 1 and set(df.status) == {"finished"}
    _no_duplicates(df)
    assert sorted(df[df.worker == -1].step) == [0, 500, 1000, 1500, 2000, 2500, 3000]
    assert (df[df.worker >= 0].groupby("worker").step.max() == 3000).all()
    assert re.search(r"^run: 0/1 runs done, .* elapsed, ETA", _logs(out), re.M), _logs(out)  # [issue 27] progress


def test_usr1_before_the_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    """The real thing (issue [27]): the USR1 that ``--signal=B:USR1@grace`` sends before a time limit
    reaches ``harness run``, which saves a checkpoint and exits 75; the task requeues itself, its
    second attempt resumes from the checkpoint, and the table equals an uninterrupted run's."""
    import pandas as pd

    from harness.config import load
    from harness.experiment import simulate

    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP.format(steps=1000, eval_every=500, seeds="[3]") + "checkpoint: {every_steps: 20, every_s: 0}\n")
    out = tmp_path / "out"
    r = _harness(slurm_cluster, "slurm", "submit", str(cfg), "--out", str(out), cwd=tmp_path,
                 HARNESS_PROGRESS_EVERY="0.5")
    assert r.returncode == 0, r.stderr
    job = _job(r.stdout)
    deadline = time.time() + 120
    while not list(out.glob("*/checkpoint.pt")):  # the run has saved once: a signal now resumes mid-way
        assert time.time() < deadline, (slurm_cluster.job_states(job), _logs(out))
        time.sleep(0.1)
    slurm_cluster.run(["scancel", "--batch", "--signal=USR1", f"{job}_1"])
    deadline = time.time() + 120
    while not slurm_cluster.job_records(job) or slurm_cluster.job_records(job)[0].get("Restarts") != "1":
        assert time.time() < deadline, (slurm_cluster.job_records(job), _logs(out))
        time.sleep(0.2)
    states = slurm_cluster.wait(job, timeout=240)
    log = _logs(out)
    assert states == {f"{job}_1": "COMPLETED"}, (states, log)
    assert "harness: preempted: run" in log and f"requeueing job {job}_1" in log, log
    saved = re.search(r"harness: preempted: run \S+: saved at step (\d+);", log)
    assert saved and f"resumed from its checkpoint at step {saved.group(1)}" in log, log
    (run,) = [p for p in out.iterdir() if p.is_dir() and p.name != "slurm-logs"]
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    from results.store import write_table

    (one,) = load(cfg)
    write_table(simulate(one)[0], tmp_path / "want.parquet")  # the uninterrupted table, as a run writes it
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "want.parquet"), pd.read_parquet(run / "metrics.parquet"))


def test_errors_without_a_cluster_or_partition(slurm_cluster, tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(SWEEP.format(steps=5, eval_every=5, seeds="[0]"))
    r = _harness(slurm_cluster, "slurm", "submit", str(cfg), "--out", str(tmp_path / "o"), "--partition", "gpu-nope")
    assert r.returncode == 2 and "--partition gpu-nope: no such partition; available: debug" in r.stderr
    env = {k: v for k, v in os.environ.items()}
    env["PATH"] = str(Path(sys.executable).parent)  # no sbatch on PATH
    r = subprocess.run([sys.executable, "-m", "harness.cli", "slurm", "submit", str(cfg), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "sbatch not found" in r.stderr and "harness sweep" in r.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_real_two_rank_run_through_our_template(slurm_cluster, tmp_path, backend):
    """`harness slurm submit --backend mpi|torch`: srun (--mpi=pmi2 for MPI) launches 2 ranks;
    the merged table matches the SimPy run of the same config."""
    pytest.importorskip("mpi4py")
    from harness.config import load
    from harness.experiment import simulate

    cfg = tmp_path / "real.yaml"
    cfg.write_text("name: real\nalgorithm: {name: local_sgd, period: 2, lr: 0.1}\nn_workers: 2\nsteps: 8\n"
                   "eval_every: 4\nseed: 3\ntask: {hidden: [8], dtype: float64}\n")
    out = tmp_path / "out"
    r = _harness(slurm_cluster, "slurm", "submit", str(cfg), "--out", str(out), "--backend", backend,
                 "--nodes", "1", "--ntasks-per-node", "2", "--time", "00:05:00", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    states = slurm_cluster.wait(_job(r.stdout), timeout=180)
    assert set(states.values()) == {"COMPLETED"}, (states, _logs(out))
    df = results.load(out)
    assert set(df.backend) == {backend} and set(df.status) == {"finished"}
    (scfg,) = load(cfg, ["backend=simpy"])
    sdf, _ = simulate(scfg)
    ours = df[df.worker == -1].sort_values("step")
    ref = sdf[sdf.worker == -1].sort_values("step")
    assert list(ours.step) == list(ref.step) == [0, 4, 8]
    assert abs(ours.test_loss.to_numpy() - ref.test_loss.to_numpy()).max() < 1e-10
    assert (ours.bytes_sent.to_numpy() == ref.bytes_sent.to_numpy()).all()
