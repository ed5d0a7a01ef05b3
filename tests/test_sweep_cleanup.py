"""Issue [21], ``harness sweep``: nothing of a sweep stays behind however it dies, every
``OSError`` is one line, and finished runs whose code changed are refused, re-run or kept as
``harness run`` does (issue [27]).

* A sweep used ``multiprocessing`` (spawn), whose queues and locks are named POSIX semaphores
  in /dev/shm: a sweep killed together with its resource tracker (``kill -9`` of its process
  group, a SLURM job's cgroup) left them there for good. Its workers now talk over pipes, so the
  test requires that no process of the sweep maps a /dev/shm file at all, and that after a
  kill of the whole group no process, file or ``running`` run is left.
* The sweep caught only ``FileNotFoundError``: ENOSPC, EROFS, EACCES, EDQUOT, ELOOP were a
  traceback or one failure per run; now one line naming the path, exit status 2.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest

from harness.cli import main
from tests import procs
from tests.test_code_identity import PLUGIN

ROOT = Path(__file__).resolve().parents[1]


def _maps_shm(pid: int) -> set[str]:
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return set()
    return {ln.split(None, 5)[5] for ln in lines if "/dev/shm/" in ln and len(ln.split(None, 5)) == 6}


def _at_work(job: procs.Job) -> dict[int, int]:
    """The workers' pids once both runs have their claim and their run.json (a run interrupted
    between the two has nothing to mark: its claim is released, no run.json written)."""
    workers = job.wait_running()
    deadline = time.monotonic() + 60
    while len(list(job.out.glob("*/run.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return workers


@pytest.mark.slow
def test_a_sweep_killed_with_its_whole_process_group_leaves_nothing(tmp_path):
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc (Linux) to see the sweep's processes and what they map")
    before = procs.shm_files()
    job = procs.Job("sweep", tmp_path, steps=20000)
    try:
        workers = _at_work(job)
        mapped = set().union(*(_maps_shm(p) for p in job.tagged()))
        assert not mapped, f"the sweep's processes map files in /dev/shm: {sorted(mapped)}"
        os.killpg(job.launcher.pid, signal.SIGKILL)  # the sweep and all of its process group at once
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(procs.state(p) not in "ZX" for p in workers.values()):
            time.sleep(0.1)
    finally:
        took, left = job.finish(30)
    assert not left, f"processes of the killed sweep still alive: {left}"
    runs = job.statuses()
    assert len(runs) == 2 and all(r["status"] == "failed" for r in runs.values()), runs
    assert all(f"the sweep process {job.launcher.pid} died" in r["error"] for r in runs.values()), runs
    assert not list(job.out.glob("*/claim.json"))  # released: the next sweep runs them at once
    new = procs.shm_files() - before
    assert not {f for f in new if "mp-" in f.name}, f"semaphores left in /dev/shm: {new}"


# -- OSError: one line, exit status 2 -------------------------------------------------------
def _conf(tmp: Path, **over) -> Path:
    raw = {"name": "q", "n_workers": 2, "steps": 4, "eval_every": 2, "task": procs.TASK, "backend": "stacked",
           "algorithm": {"name": "sync_sgd", "lr": 0.1}, "grid": {"seed": [0, 1]}, **over}
    path = tmp / "q.yaml"
    path.write_text(json.dumps(raw))
    return path


def _sweep(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["sweep", *map(str, args), "--quiet"])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO])
def test_an_os_error_making_the_output_is_one_line(tmp_path, capsys, monkeypatch, code):
    real_mkdir = os.mkdir

    def mkdir(path, *a, **kw):
        if str(path).startswith(str(tmp_path / "out")):
            raise OSError(code, os.strerror(code), str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    rc, out, err = _sweep(capsys, _conf(tmp_path), "--out", tmp_path / "out", "--jobs", "2")
    assert rc == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"harness: error: {tmp_path / 'out'}: {os.strerror(code)}; free space or fix that path"), line
    assert "run(s) to do" not in out  # said before anything runs


def test_an_unwritable_output_is_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    """A read-only file system lets ``mkdir`` of an existing directory pass; the first write fails."""
    (tmp_path / "out").mkdir()
    real_open = os.open

    def ro_open(path, flags, *a, **kw):
        if str(path).startswith(str(tmp_path / "out")) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", ro_open)
    rc, out, err = _sweep(capsys, _conf(tmp_path), "--out", tmp_path / "out", "--jobs", "1")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f": {os.strerror(errno.EROFS)}; free space or fix that path" in err and "run(s) to do" not in out, err


def test_a_symlink_loop_or_a_file_as_out_is_one_line(tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    rc, out, err = _sweep(capsys, _conf(tmp_path), "--out", tmp_path / "loop" / "sub", "--jobs", "2")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert os.strerror(errno.ELOOP) in err, err
    (tmp_path / "file").write_text("x")
    rc, out, err = _sweep(capsys, _conf(tmp_path), "--out", tmp_path / "file", "--jobs", "2")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "is a file, not a directory" in err, err


# -- code changed since a run finished (issue [27]) -------------------------------------------
def test_sweep_refuses_reruns_or_keeps_finished_runs_whose_code_changed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugin.py").write_text(PLUGIN.format(scale=1.0))
    c = _conf(tmp_path, imports=["plugin.py"], algorithm={"name": "t27_sgd", "lr": 0.1}, grid={"seed": [0]})
    out = tmp_path / "out"
    assert _sweep(capsys, c, "--out", out)[0] == 0
    (run_json,) = out.glob("*/run.json")
    before = json.loads(run_json.read_text())
    rc, stdout, err = _sweep(capsys, c, "--out", out)
    assert rc == 0 and "0 of 1 run(s) to do" in stdout, stdout
    (tmp_path / "plugin.py").write_text(PLUGIN.format(scale=0.25))  # the edit changes the numbers

    rc, stdout, err = _sweep(capsys, c, "--out", out)
    (line,) = err.strip().splitlines()
    assert rc == 2 and line.startswith("harness: error: 1 finished run(s) in ") and "(plugin.py)" in line, err
    assert "--rerun-changed" in line and "--keep-changed" in line and "run(s) to do" not in stdout
    assert json.loads(run_json.read_text()) == before  # nothing ran

    rc, stdout, err = _sweep(capsys, c, "--out", out, "--keep-changed")
    assert rc == 0 and "kept as they are" in err and "0 of 1 run(s) to do" in stdout, (stdout, err)
    assert json.loads(run_json.read_text()) == before

    rc, stdout, err = _sweep(capsys, c, "--out", out, "--rerun-changed")
    assert rc == 0 and "running them again" in err and "1 of 1 run(s) to do" in stdout, (stdout, err)
    after = json.loads(run_json.read_text())
    plugin = str(tmp_path / "plugin.py")
    assert after["status"] == "finished" and after["code"]["files"][plugin] != before["code"]["files"][plugin]
    assert _sweep(capsys, c, "--out", out)[0] == 0  # the new code is the recorded one now


@pytest.mark.slow
def test_a_worker_stopped_from_outside_fails_its_run_only_and_says_so(tmp_path):
    """A worker SIGTERMed by a person: its run is failed naming that (not "sweep interrupted"),
    the other worker's run finishes, the sweep ends with status 1 and leaves no process."""
    job = procs.Job("sweep", tmp_path, steps=3000)
    try:
        workers = _at_work(job)
        os.kill(workers[0], signal.SIGTERM)
    finally:
        took, left = job.finish(120)
    assert took is not None and not left and job.launcher.returncode == 1, job.stderr()
    runs = sorted(job.statuses().values(), key=lambda r: r["status"])
    assert [r["status"] for r in runs] == ["failed", "finished"], runs
    assert runs[0]["error"] == "Interrupted: its worker process got SIGTERM, not from the sweep (a person or the system?)"
