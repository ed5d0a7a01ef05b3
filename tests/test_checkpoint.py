"""Checkpoints (issue [27]): a run stopped by a signal or killed resumes with the table of a run
that was never interrupted, on the simulators bit for bit and on real ranks (time aside)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from harness import checkpoint
from harness.config import expand
from harness.experiment import _execute

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").lower() == "true"


def _cfg(backend, alg, **kw):
    raw = {"algorithm": {"name": alg}, "n_workers": 4, "steps": 40, "eval_every": 10, "backend": backend,
           "task": {"name": "digits", "hidden": [16]}, "compute": {"model": "lognormal", "sigma": 0.5},
           "checkpoint": {"every_steps": 0, "every_s": 0}, **kw}
    return expand(raw)[0]


def _stop_at_eval(step):
    """An on_eval callback that asks for a stop (as SIGTERM does) at evaluation step ``step``."""
    def on_eval(row):
        if row["step"] == step:
            checkpoint._requested.set()
    return on_eval


CASES = [("stacked", "local_sgd", {}), ("stacked", "diloco", {}), ("stacked", "dpsgd", {"topology": {"name": "ring"}}),
         ("stacked", "fedavg", {"n_clients": 10}), ("stacked", "scaffold", {"n_clients": 10}),
         ("simpy", "local_sgd", {}), ("simpy", "sync_sgd", {}), ("simpy", "easgd", {}),
         ("simpy", "fedavg", {"n_clients": 10}), ("simpy", "scaffold", {"n_clients": 10})]


@pytest.mark.parametrize("backend,alg,kw", CASES, ids=[f"{b}-{a}" for b, a, _ in CASES])
def test_a_stopped_run_resumes_to_the_uninterrupted_table(tmp_path, backend, alg, kw):
    cfg = _cfg(backend, alg, **kw)
    ref, x_ref, _ = _execute(cfg)  # no checkpoints at all
    ck = tmp_path / checkpoint.FILE
    with pytest.raises(checkpoint.Preempted) as stop:
        _execute(cfg, on_eval=_stop_at_eval(10), ckpt=ck)
    checkpoint.clear_request()
    assert stop.value.step is not None and 10 <= stop.value.step < cfg.steps and ck.exists()
    times = {}
    got, x, _ = _execute(cfg, ckpt=ck, times=times)
    assert times["resumed_from"] == stop.value.step
    pd.testing.assert_frame_equal(ref, got)
    assert torch.equal(x_ref, x)


def test_periodic_checkpoints_change_no_number_and_a_kill_resumes_from_the_last(tmp_path):
    cfg = _cfg("simpy", "local_sgd", checkpoint={"every_steps": 8, "every_s": 0})
    ref, _, _ = _execute(cfg)
    ck = tmp_path / checkpoint.FILE
    saved = []

    class Killed(Exception):
        pass

    def on_eval(row):  # a SIGKILL at step 30: nothing runs after it, the last checkpoint stays
        if ck.exists():
            saved.append(checkpoint.read(ck)["step"])
        if row["step"] == 30:
            raise Killed
    with pytest.raises(Killed):
        _execute(cfg, on_eval=on_eval, ckpt=ck)
    assert checkpoint.read(ck)["step"] == 24  # every 8 steps, at quiescent steps (local_sgd averages every 8)
    got, _, _ = _execute(cfg, ckpt=ck)
    pd.testing.assert_frame_equal(ref, got)


def test_a_method_without_quiescent_steps_on_simpy_stops_unsaved_after_the_grace(tmp_path):
    cfg = _cfg("simpy", "diloco", checkpoint={"every_steps": 0, "every_s": 0, "grace_s": 0})
    with pytest.raises(checkpoint.Preempted) as stop:
        _execute(cfg, on_eval=_stop_at_eval(10), ckpt=tmp_path / checkpoint.FILE)
    checkpoint.clear_request()
    assert stop.value.step is None and "quiescent" in stop.value.why
    assert not (tmp_path / checkpoint.FILE).exists()


def test_a_checkpoint_of_other_code_is_not_used(tmp_path, capsys):
    cfg = _cfg("stacked", "local_sgd")
    ref, _, _ = _execute(cfg)
    ck = tmp_path / checkpoint.FILE
    with pytest.raises(checkpoint.Preempted):
        _execute(cfg, on_eval=_stop_at_eval(20), ckpt=ck)
    checkpoint.clear_request()
    payload = checkpoint.read(ck)
    payload["files"] = {**payload["files"], "harness/algorithms/local_sgd.py": "0" * 16}  # as after an edit
    checkpoint.write(ck, payload)
    times = {}
    got, _, _ = _execute(cfg, ckpt=ck, times=times)
    assert "resumed_from" not in times
    assert "the code changed since it was saved (harness/algorithms/local_sgd.py)" in capsys.readouterr().err
    pd.testing.assert_frame_equal(ref, got)


def test_a_damaged_checkpoint_is_named_and_the_run_starts_over(tmp_path, capsys):
    cfg = _cfg("stacked", "sync_sgd", steps=10)
    ref, _, _ = _execute(cfg)
    ck = tmp_path / checkpoint.FILE
    ck.write_bytes(b"\x80\x05 not a pickle")
    got, _, _ = _execute(cfg, ckpt=ck)
    assert "cannot be read" in capsys.readouterr().err
    pd.testing.assert_frame_equal(ref, got)


def test_checkpoint_settings_are_not_part_of_the_run_id():
    a = _cfg("simpy", "local_sgd")
    b = _cfg("simpy", "local_sgd", checkpoint={"every_steps": 5, "every_s": 60})
    assert a.run_id == b.run_id


def test_a_signal_to_a_process_with_no_savable_run_does_what_it_did_before():
    code = ("import os, signal, time\nfrom harness import checkpoint\ncheckpoint.install_signals()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)\nprint('survived')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and "survived" not in proc.stdout


# -- the command line: SIGTERM and SIGKILL of `harness run` ------------------------------------------
def _config(tmp_path: Path, backend: str = "simpy", steps: int = 300) -> Path:
    path = tmp_path / "ck.yaml"
    path.write_text(yaml.safe_dump({
        "name": "ck", "algorithm": {"name": "local_sgd", "period": 4}, "n_workers": 2, "steps": steps,
        "eval_every": 100, "backend": backend, "task": {"name": "digits", "hidden": [8], "dtype": "float64"},
        "checkpoint": {"every_steps": 20, "every_s": 0}}))
    return path


def _harness(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _wait_for(path_glob, root: Path, proc, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if list(root.glob(path_glob)):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first checkpoint:\n{proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint within the timeout")


def _table(out: Path) -> pd.DataFrame:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return pd.read_parquet(run / "metrics.parquet")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The CLI config and the table of its run, never interrupted."""
    tmp = tmp_path_factory.mktemp("ck-ref")
    cfg = _config(tmp)
    ref = _harness("run", str(cfg), "--out", str(tmp / "ref"), "--quiet")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    return cfg, _table(tmp / "ref")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_harness_run_killed_midway_resumes_to_the_same_table(tmp_path, uninterrupted, sig):
    cfg, ref = uninterrupted
    out = tmp_path / "out"
    proc = _harness("run", str(cfg), "--out", str(out), "--quiet")
    _wait_for(f"*/{checkpoint.FILE}", out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    if sig == signal.SIGTERM:
        assert proc.returncode == checkpoint.PREEMPTED_EXIT, err
        assert "harness: preempted: run" in err and "run the same command again to resume" in err
        assert yaml.safe_load((run / "run.json").read_text())["status"] == "preempted"
    else:
        assert proc.returncode == -signal.SIGKILL
    again = _harness("run", str(cfg), "--out", str(out), "--quiet")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resumed from its checkpoint at step" in err
    pd.testing.assert_frame_equal(ref, _table(out))
    assert not (run / checkpoint.FILE).exists()  # finished: the checkpoint is gone


@pytest.mark.mpi
def test_mpi_ranks_stopped_by_sigterm_resume_to_the_same_table(tmp_path):
    import shutil

    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        (pytest.fail if CI else pytest.skip)(f"mpi4py is not installed ({e})")
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if mpiexec is None:
        (pytest.fail if CI else pytest.skip)("no mpiexec next to the interpreter or on PATH")
    from harness.backends import loopback_run
    from harness.config import load

    cfg_path = _config(tmp_path, backend="mpi", steps=400)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HARNESS_TIMEOUT_S": "60"}
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "harness.cli", "run", str(cfg_path), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for("*/checkpoint/latest.json", out, proc)
    ranks = subprocess.run(["pgrep", "-f", f"harness.cli run {cfg_path}"], capture_output=True, text=True).stdout.split()
    for pid in ranks:  # as srun and SLURM signal every task
        if int(pid) != proc.pid:
            os.kill(int(pid), signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == checkpoint.PREEMPTED_EXIT, err
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "resumed from its checkpoint at step" in again.stderr, again.stderr
    (cfg,) = load(cfg_path, ["backend=simpy"])
    want = loopback_run.run(cfg).rows  # the same ranks' table, never interrupted, in this process
    got = _table(out)
    timed = ["time_s", "compute_s", "comm_s", "idle_s"]
    keys = ["step", "worker"]
    cols = [c for c in got.columns if c in want.columns and c not in timed + ["backend", "run_id"]]
    assert len(cols) > 20 and len(got) == len(want)
    a = want[cols].sort_values(keys).reset_index(drop=True)
    b = got[cols].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-12, atol=1e-12)
