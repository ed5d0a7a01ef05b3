"""A rank that dies, freezes or hangs ends a 4-rank job with one line naming *that* rank.

Under ``mpiexec`` and ``torchrun``, a plugin algorithm makes worker 2 send itself SIGKILL or
SIGSTOP (or sleep for an hour) at step 3, after writing the time to a file. Each test checks
that the job ends soon after (killed: at once; stopped or hung: after ``HARNESS_TIMEOUT_S``),
that exactly one ``harness: error:`` line names rank 2 with the cause, that ``run.json``
says ``failed`` with rank 2, and that no process of the job is left. Without mpiexec/mpi4py
(or torch.distributed) the tests skip with the reason, except under CI=true (they fail).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import small
from tests.test_real_backends import RANKS, ROOT, _dump, _mpiexec, _torchrun

TIMEOUT_S = 6  # HARNESS_TIMEOUT_S of the launched jobs
PLUGIN = '''
import os, signal, time
from harness.algorithms import register
from harness.ops import AllReduce, Grad, Record


@register("signal_sgd")
def signal_sgd(ctx, x, *, lr: float = 0.1, worker: int = 2, step: int = 3, sig: int = 9, mark: str = ""):
    """Synchronous SGD; at ``step`` worker ``worker`` gets signal ``sig`` (0: sleeps an hour)."""
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        if t + 1 == step:
            time.sleep(0.3)  # every rank's heartbeat shows "after step 2"
            if int(ctx.index) == worker:
                with open(mark, "w") as f:
                    f.write(repr(time.time()))
                if sig:
                    os.kill(os.getpid(), sig)
                else:
                    time.sleep(3600)
        g = yield AllReduce(g)
        x = x - lr * g
        yield Record(step=t + 1, x=x, loss=loss)
    return x
'''


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: the launcher and what it started."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(f[3]) == sid and f[0] not in "ZX":
                pids.append(int(d.name))
    return pids


def _shm() -> set[Path]:
    return set(Path("/dev/shm").glob("mpich_shm_*"))


def _remove_dead_shm(new: set[Path]) -> None:
    """MPICH ranks killed by a signal leave their shared-memory segment behind; remove the
    ones this launch made that no process holds any more (4 MB each, and a later job with
    the same name, e.g. job 1 of a fresh SLURM test cluster, would attach to it and hang)."""
    held = set()
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            held.add(os.readlink(fd))
        except OSError:
            pass
    for f in new:
        if str(f) not in held:
            f.unlink(missing_ok=True)


def _launch(backend: str, tmp: Path, sig: int):
    """Run the plugin on 4 ranks; returns (finished process, seconds from the signal to the
    launcher's exit, run directory, processes of the job still alive 3 s after the exit)."""
    from harness.config import import_plugin, load

    shared = tmp.parent  # one plugin file for the session: registering it again from the same file is allowed
    (shared / "sig_plugin.py").write_text(textwrap.dedent(PLUGIN))
    import_plugin("sig_plugin.py", shared)
    mark = tmp / "signalled"
    cfg = small("sync_sgd", steps=10, algorithm={"name": "signal_sgd", "sig": sig, "mark": str(mark)})
    config = tmp / "sig.yaml"
    config.write_text(yaml.safe_dump({"imports": ["../sig_plugin.py"], "cases": [_dump(cfg)]}))
    args = ["-m", "harness.cli", "run", str(config), "--backend", backend, "--out", str(tmp / "runs"), "--quiet"]
    cmd = [_mpiexec(), "-n", str(RANKS), sys.executable, *args] if backend == "mpi" else [*_torchrun(), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_TIMEOUT_S": str(TIMEOUT_S),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    shm = _shm()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
        ended = time.time()
        left = _session(proc.pid)
        while left and time.time() < ended + 3:  # a moment for what the launcher killed to go
            time.sleep(0.1)
            left = _session(proc.pid)
    finally:
        for pid in _session(proc.pid):  # whatever is left of this job (by pid, never by name)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        proc.wait()
        _remove_dead_shm(_shm() - shm)
    assert mark.exists(), f"worker 2 never reached step 3:\n{out}\n{err}"
    (run,) = load(config, [f"backend={backend}"])
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    return done, ended - float(mark.read_text()), tmp / "runs" / run.run_id, left


BACKENDS = [pytest.param("mpi", marks=pytest.mark.mpi), "torch"]
CASES = {  # signal -> (what the line says about rank 2, longest time from the signal to the end)
    signal.SIGKILL: ("was killed by signal 9 (SIGKILL)", 15),
    signal.SIGSTOP: ("stopped making progress: its process", TIMEOUT_S + 15),
    0: ("stopped making progress: none for", TIMEOUT_S + 15),
}


def _check(backend, tmp_path, sig):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc (Linux) to see the job's processes")
    proc, took, run_dir, left = _launch(backend, tmp_path, int(sig))
    said, limit = CASES[sig]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("harness: error:")]
    assert len(lines) == 1, f"expected one error line:\n{proc.stdout}\n{proc.stderr}"
    assert lines[0].startswith(f"harness: error: rank 2 (worker 2, after step 2) {said}"), lines[0]
    assert proc.returncode != 0
    assert took < limit, f"the job ended {took:.1f} s after the signal (limit {limit} s)"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "failed", record
    assert record["error"].startswith(f"rank 2 (worker 2, after step 2) {said}"), record["error"]
    assert not left, f"processes of the job still alive after it ended: {left}"
    print(f"{backend} signal {int(sig)}: ended {took:.1f} s after it")
    return took


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_rank_is_named_by_the_survivors(backend, tmp_path):
    """SIGKILL: the rank's supervisor (the launcher's process) reports it at once."""
    _check(backend, tmp_path, signal.SIGKILL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stopped_rank_ends_the_job_after_the_timeout(backend, tmp_path):
    """SIGSTOP: no heartbeat for HARNESS_TIMEOUT_S; the peers name the frozen rank."""
    took = _check(backend, tmp_path, signal.SIGSTOP)
    assert took > TIMEOUT_S - 1, f"ended {took:.1f} s after the stop, before the timeout"


def test_hung_rank_is_named_by_the_watchdog(tmp_path):
    """A rank that computes for ever (alive, heartbeat fine): the peers' watchdog fires in
    their AllReduce and names the rank that is in no op and made no progress (torch)."""
    took = _check("torch", tmp_path, 0)
    assert took > TIMEOUT_S - 1
