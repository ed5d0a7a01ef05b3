"""Issue [27], SLURM: the sbatch scripts ``harness slurm submit`` writes, checked without a cluster.

The scripts run here under bash with stand-ins on PATH (``scontrol`` that logs its arguments,
``srun`` that runs its command) and a stand-in for ``harness`` that follows the preemption
contract (USR1 or TERM: checkpoint, exit status 75), so each test takes about a second;
tests/test_slurm_submit.py runs them on the local SLURM cluster. Checked: progress in the log
(no ``--quiet``), runs independent of each other's failure, USR1 asked for before the time limit,
passed on to the run and a requeue when the run checkpointed, arrays split at MaxArraySize,
changed code refused at submit time as by ``harness run``, and ``harness slurm status``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main

CONFIG = """name: scripts
algorithm: {{name: sync_sgd, lr: 0.1}}
n_workers: 2
steps: 2
task: {{name: quadratic}}
backend: stacked
grid: {{seed: {seeds}}}
"""
HARNESS = f"{shlex.quote(sys.executable)} -m harness.cli"

# follows the contract of harness run: USR1 or TERM -> checkpoint, exit 75; resumes on a restart
STAND_IN = r"""#!/bin/bash
while [ $# -gt 0 ]; do [ "$1" = --only ] && n=$2; shift; done
echo "started $n" >> "$WORK/runs.log"
if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then echo "resumed $n" >> "$WORK/runs.log"; exit 0; fi
case " $FAIL " in *" $n "*) echo "run $n fails"; exit 3;; esac
case " $WAIT " in *" $n "*)
  trap 'echo "checkpoint $n" >> "$WORK/runs.log"; exit 75' USR1 TERM
  touch "$WORK/waiting-$n"
  while :; do sleep 0.05; done;;
esac
echo "progress line of run $n"
echo "done $n" >> "$WORK/runs.log"
"""
FAKES = {
    "scontrol": '#!/bin/bash\necho "$@" >> "$WORK/scontrol.log"\n'
                '[ "$1 $2" = "show config" ] && echo "MaxArraySize            = ${MAX_ARRAY:-1001}"\nexit 0\n',
    "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',  # srun forwards signals: exec
}


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A directory with the stand-ins on PATH (and in ``WORK``); returns it."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in {**FAKES, "harness-stand-in": STAND_IN}.items():
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setenv("WORK", str(tmp_path))
    return tmp_path


def config(tmp_path: Path, seeds: int) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(seeds=list(range(seeds))))
    return path


def submit(capsys, *args):
    capsys.readouterr()
    rc = main(["slurm", "submit", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def script_file(work: Path, text: str, name: str = "job.sh") -> Path:
    """The script with the stand-in for harness (what the job would run)."""
    assert HARNESS in text
    path = work / name
    path.write_text(text.replace(HARNESS, str(work / "bin" / "harness-stand-in")))
    return path


def start(path: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(path)], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)


def lines(work: Path, name: str = "runs.log") -> list[str]:
    return (work / name).read_text().splitlines() if (work / name).exists() else []


def requeues(work: Path) -> list[str]:
    return [line for line in lines(work, "scontrol.log") if line.startswith("requeue")]


# -- what the scripts ask of SLURM ---------------------------------------------------------------------------
def test_scripts_show_progress_ask_for_usr1_and_requeue(capsys, work):
    cfg = config(work, 2)
    for backend in ("stacked", "mpi", "torch"):
        rc, out, err = submit(capsys, cfg, "--out", work / "o", "--backend", backend, "--dry-run")
        assert rc == 0, err
        assert "--quiet" not in out and not re.search(r"^set -e", out, re.M) and "\nset -uo pipefail\n" in out
        for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --open-mode=append"):
            assert re.search(f"^{line}$", out, re.M), (backend, line)
    rc, out, err = submit(capsys, cfg, "--out", work / "o", "--time", "00:05:00", "--dry-run")
    assert rc == 0 and "#SBATCH --signal=B:USR1@30\n" in out  # a tenth of a short time limit
    rc, out, err = submit(capsys, cfg, "--out", work / "o", "--time", "00:05:00", "--grace", "300", "--dry-run")
    assert rc == 2 and err == ("harness: error: --grace 300: the signal would come before the job starts (--time "
                               "00:05:00 is 300 s); give a --grace shorter than --time\n")


def test_a_grid_above_max_array_size_becomes_arrays_with_offsets(capsys, work, monkeypatch):
    monkeypatch.setenv("MAX_ARRAY", "5")  # task ids 0..4: arrays of at most 4 runs
    rc, out, err = submit(capsys, config(work, 10), "--out", work / "o", "--dry-run")
    assert rc == 0, err
    arrays = re.findall(r"^#SBATCH --array=(\S+)$", out, re.M)
    offsets = re.findall(r"^run=\$\(\(SLURM_ARRAY_TASK_ID \+ (\d+)\)\)$", out, re.M)
    assert arrays == ["1-4%16", "1-4%16", "1-2%16"] and offsets == ["0", "4", "8"], out
    assert err.count("\n") == 1 and "above this cluster's MaxArraySize 5" in err and "3 arrays" in err, err
    monkeypatch.setenv("MAX_ARRAY", "1001")
    rc, out, err = submit(capsys, config(work, 10), "--out", work / "o", "--dry-run")
    assert re.findall(r"^#SBATCH --array=(\S+)$", out, re.M) == ["1-10%16"] and err == ""


def test_submit_refuses_reruns_or_keeps_runs_whose_code_changed(capsys, work):
    from harness import codeid
    from harness.config import load

    cfg = config(work, 3)
    first = load(cfg)[0]
    files = {**codeid.fingerprint(first), "harness/ops.py": "0" * 16}  # made by other code
    (work / "o" / first.run_id).mkdir(parents=True)
    (work / "o" / first.run_id / "run.json").write_text(json.dumps({"status": "finished", "code": {"files": files}}))
    rc, out, err = submit(capsys, cfg, "--out", work / "o", "--dry-run")
    assert rc == 2 and err.count("\n") == 1 and "changed since (harness/ops.py)" in err and "--rerun-changed" in err
    rc, out, err = submit(capsys, cfg, "--out", work / "o", "--dry-run", "--rerun-changed")
    assert rc == 0 and "#SBATCH --array=1-3%16" in out and '--only "$run" --rerun-changed' in out
    rc, out, err = submit(capsys, cfg, "--out", work / "o", "--dry-run", "--keep-changed")
    assert rc == 0 and "#SBATCH --array=2-3%16" in out and '--only "$run" --keep-changed' in out


# -- what the scripts do (bash, stand-ins) -----------------------------------------------------------------
def test_array_task_passes_usr1_on_and_requeues_itself_when_the_run_checkpointed(capsys, work, monkeypatch):
    monkeypatch.setenv("WAIT", "3")
    rc, out, err = submit(capsys, config(work, 3), "--out", work / "o", "--dry-run")
    path = script_file(work, out)
    proc = start(path, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3")
    wait_for(work / "waiting-3", proc)
    proc.send_signal(signal.SIGUSR1)  # what #SBATCH --signal=B:USR1@grace does
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, (stdout, stderr)
    assert lines(work) == ["started 3", "checkpoint 3"] and requeues(work) == ["requeue 77_3"]
    assert "got SIGUSR1" in stdout and "requeueing job 77_3" in stdout
    # TERM (scancel, the time limit): passed on, the run checkpoints, no requeue of our own
    (work / "waiting-3").unlink()
    proc = start(path, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3")
    wait_for(work / "waiting-3", proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 75 and requeues(work) == ["requeue 77_3"], (stdout, stderr)
    assert "not requeued" in stdout
    # the requeued task: the same script, SLURM_RESTART_COUNT=1, resumes
    proc = start(path, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3", SLURM_RESTART_COUNT="1")
    assert proc.wait(timeout=20) == 0 and lines(work)[-1] == "resumed 3"


@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_a_failed_run_does_not_stop_the_others_of_a_real_job(capsys, work, monkeypatch, backend):
    monkeypatch.setenv("FAIL", "1 3")
    rc, out, err = submit(capsys, config(work, 4), "--out", work / "o", "--backend", backend, "--nodes", "1",
                          "--dry-run")
    assert rc == 0, err
    proc = start(script_file(work, out), SLURM_JOB_ID="80", SLURM_JOB_NODELIST="localhost")
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1, (stdout, stderr)
    assert lines(work) == ["started 1", "started 2", "done 2", "started 3", "started 4", "done 4"]
    assert "progress line of run 2" in stdout  # the run's own output reaches the log
    assert stderr.strip().splitlines()[-1].startswith("harness-slurm: 2 of 4 run(s) failed: 1 3"), stderr


def test_a_real_job_passes_usr1_through_srun_and_requeues(capsys, work, monkeypatch):
    monkeypatch.setenv("WAIT", "2")
    rc, out, err = submit(capsys, config(work, 3), "--out", work / "o", "--backend", "mpi", "--dry-run")
    proc = start(script_file(work, out), SLURM_JOB_ID="80")
    wait_for(work / "waiting-2", proc)
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, (stdout, stderr)
    assert lines(work) == ["started 1", "done 1", "started 2", "checkpoint 2"]  # run 3 waits for the requeue
    assert requeues(work) == ["requeue 80"]


# -- harness slurm status ---------------------------------------------------------------------------------------
def test_status_joins_run_json_and_the_queue(capsys, work):
    squeue = work / "bin" / "squeue"
    squeue.write_text('#!/bin/bash\nprintf "90_2|RUNNING\\n90_3|PENDING\\n91|RUNNING\\n"\n')
    squeue.chmod(0o755)
    out = work / "o"
    states = {"r1": "finished", "r2": "running", "r4": "failed", "r5": "running", "r6": "diverged"}
    for run_id, st in states.items():
        (out / run_id).mkdir(parents=True)
        (out / run_id / "run.json").write_text(json.dumps({"status": st}))
    first = {"jobs": [{"id": "90", "kind": "array", "offset": 0, "runs": {str(i): f"r{i}" for i in range(1, 6)}}]}
    second = {"jobs": [{"id": "91", "kind": "mpi", "offset": None, "runs": {"6": "r6", "7": "r7"}}]}
    (out / "slurm-submissions.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    capsys.readouterr()
    assert main(["slurm", "status", str(out)]) == 0
    text, err = capsys.readouterr()
    head, *table = text.splitlines()
    assert head == (f"7 run(s) submitted to {out} in job(s) 90, 91: 1 done, 1 diverged, 2 running, 1 pending, "
                    "1 failed, 1 stopped")
    rows = {r.split()[1]: r.split()[2:4] for r in table[1:]}
    assert rows == {"r2": ["running", "90_2"], "r3": ["pending", "90_3"], "r4": ["failed", "90_4"],
                    "r5": ["stopped", "90_5"], "r6": ["diverged", "91"], "r7": ["running", "91"]}, text
    assert main(["slurm", "status", str(work)]) == 2
    assert "has no slurm-submissions.jsonl" in capsys.readouterr().err
