"""Claims (issue 14): two processes given the same output directory never run a run twice;
stale claims (owner gone on this host, an earlier attempt of this SLURM job, or untouched for
HARNESS_CLAIM_STALE_S) are taken over with a one-line note; live ones are skipped."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import claims
from harness.config import expand
from harness.experiment import run_to_dir

ROOT = Path(__file__).resolve().parents[1]
TASK = {"name": "quadratic", "dim": 4, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}
SWEEP = {"n_workers": 4, "steps": 300, "eval_every": 100, "task": TASK, "algorithm": {"name": "sync_sgd", "lr": 0.1},
         "grid": {"seed": [0, 1, 2, 3, 4, 5]}}


def test_two_processes_on_one_directory_run_each_run_exactly_once(tmp_path):
    conf = tmp_path / "sweep.yaml"
    conf.write_text(json.dumps(SWEEP))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.cli", "run", str(conf), "--out", str(out), "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    ran = [m for o, _ in outs for m in re.findall(r"\] (\S+): done \(", o)]
    ids = sorted(d.name for d in out.iterdir())
    assert len(ids) == 6 and sorted(ran) == ids, outs  # each run ran once, by one of the two
    for d in out.iterdir():
        rec = json.loads((d / "run.json").read_text())
        assert rec["status"] == "finished" and not (d / claims.CLAIM).exists()
    skipped = sum(o.count("skipped") for o, _ in outs)
    assert skipped == 6  # the other process skipped each one (claimed by, or finished by, the first)


def _claim(d: Path, **owner):
    d.mkdir(parents=True, exist_ok=True)
    info = {"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00+00:00", "token": "t0", **owner}
    (d / claims.CLAIM).write_text(json.dumps(info))
    return d / claims.CLAIM


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def cfg():
    return expand({**SWEEP, "steps": 4, "eval_every": 2, "grid": {}})[0]


def test_a_live_claim_is_skipped_and_a_dead_owners_is_taken_over(tmp_path, capsys):
    import socket

    c = cfg()
    d = tmp_path / c.run_id
    _claim(d, host=socket.gethostname(), pid=os.getppid())  # alive: our parent
    assert run_to_dir(c, tmp_path) == (d, False)
    assert not (d / "run.json").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"harness: note: run {c.run_id} is being run elsewhere (host ")
    pid = _dead_pid()
    _claim(d, host=socket.gethostname(), pid=pid)
    assert run_to_dir(c, tmp_path) == (d, True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"harness: note: run {c.run_id}: took over a stale claim (host {socket.gethostname()}, pid {pid}, "
                   "started 2026-01-01T00:00:00+00:00: its process is gone)"]
    assert json.loads((d / "run.json").read_text())["status"] == "finished" and not (d / claims.CLAIM).exists()


def test_other_hosts_claims_go_stale_by_age_and_requeued_slurm_jobs_take_theirs(tmp_path, monkeypatch):
    monkeypatch.setenv(claims.STALE_ENV, "60")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    notes = []
    path = _claim(tmp_path / "a")
    assert claims.acquire(tmp_path / "a", "a", notes.append) is None  # fresh, on another host: live
    old = time.time() - 120
    os.utime(path, (old, old))
    got = claims.acquire(tmp_path / "a", "a", notes.append)
    assert got is not None and "not touched for 120 s > HARNESS_CLAIM_STALE_S=60" in notes[-1]
    assert json.loads(path.read_text())["pid"] == os.getpid()
    got.release()
    assert not path.exists()

    _claim(tmp_path / "b", slurm_job="4242")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    got = claims.acquire(tmp_path / "b", "b", notes.append)
    assert got is not None and "earlier run of this SLURM job 4242 (requeued)" in notes[-1]
    assert got.info["slurm_job"] == "4242"
    got.release()


def test_release_never_removes_a_successors_claim_and_heartbeats_touch_it(tmp_path, monkeypatch):
    monkeypatch.setenv(claims.STALE_ENV, "0.4")  # a heartbeat every 0.1 s
    got = claims.acquire(tmp_path, "x", lambda line: None)
    path = tmp_path / claims.CLAIM
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 1  # the owner's heartbeat touched it
    path.write_text(json.dumps({**got.info, "token": "successor"}))
    got.release()
    assert path.exists()


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_stale_age_is_one_line(monkeypatch, tmp_path, value):
    monkeypatch.setenv(claims.STALE_ENV, value)
    with pytest.raises(ValueError) as e:
        claims.acquire(tmp_path, "x")
    assert str(e.value) == (f"HARNESS_CLAIM_STALE_S={value!r}: expected seconds (a number > 0), "
                            "e.g. HARNESS_CLAIM_STALE_S=900")
