"""``harness sweep`` and overall progress (issue 15): warm worker processes (each runs many
runs), --list/--backend/closing summary, a failed or diverged run reported by id while the
sweep goes on, a killed worker, Ctrl-C, concurrent sweeps on one directory, and progress
lines with ETA (periodic without a terminal) for ``harness sweep`` and ``harness run``."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import claims, cli, progress, sweep
from harness.config import load
from tests.test_divergence import PLUGIN, TASK

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^(sweep|run): (\d+)/(\d+) runs done, \d+ s elapsed, ETA (\d+ s|\?), simulated \d+\.\d s", re.M)


def conf(tmp_path, steps=40, seeds=(0, 1, 2, 3), **over) -> Path:
    raw = {"name": "q", "n_workers": 2, "steps": steps, "eval_every": max(steps // 4, 1), "task": TASK,
           "algorithm": {"name": "sync_sgd", "lr": 0.1}, "grid": {"seed": list(seeds)}, **over}
    path = tmp_path / "q.yaml"
    path.write_text(json.dumps(raw))
    return path


def _ctrl_c_reaches_it():
    # A shell's background job (`make test &`, nohup) ignores SIGINT, and a child inherits that
    # (then Python installs no KeyboardInterrupt handler): give the sweep Ctrl-C as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def harness(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                            preexec_fn=_ctrl_c_reaches_it, **kw)


# -- progress ------------------------------------------------------------------------------
def test_progress_line_counts_runs_steps_and_simulated_time():
    now = [100.0]
    p = progress.Progress(5, "sweep", tty=False, every=3600, clock=lambda: now[0])
    assert p.line() == "sweep: 0/5 runs done, 0 s elapsed, ETA ?, simulated 0.0 s"
    now[0] = 110.0
    p.finish("a", 2.0)
    p.finish("b", skipped=True)  # skipped: neither work done nor work left
    p.update("c", 50, 100, 1.5)
    # work: 4 runs; done 1 + 0.5 -> 10 s * 2.5 / 1.5
    assert p.line() == "sweep: 2/5 runs done, 10 s elapsed, ETA 17 s, simulated 3.5 s"
    p.finish("c", None, failed=True)  # its last reported simulated time counts
    assert p.line().endswith("simulated 3.5 s, 1 failed")
    p.close()
    assert progress.duration(59) == "59 s" and progress.duration(750) == "12.5 min" and progress.duration(9000) == "2.5 h"


def test_progress_prints_lines_periodically_without_a_terminal(capsys):
    p = progress.Progress(3, "sweep", tty=False, every=0.02)
    p.update(0, 1, 4, 0.5)
    time.sleep(0.3)
    p.close()
    time.sleep(0.05)
    out = capsys.readouterr().out
    lines = LINE.findall(out)
    assert len(lines) >= 3 and "simulated 0.5 s" in out  # a line every 0.02 s while nothing ended
    time.sleep(0.1)
    assert capsys.readouterr().out == ""  # closed: silent


def test_progress_bar_on_a_terminal(monkeypatch):
    class TTY(io.StringIO):
        def isatty(self):
            return True

    tty = TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    p = progress.Progress(4, "sweep", every=0.01)  # a bar: no timer lines on a terminal
    p.finish(0, 1.25)
    p.update(1, 5, 10, 0.5)
    p.close()
    assert "1/4 runs, simulated 1.8 s" in tty.getvalue() and "38%" in tty.getvalue()
    assert progress.Progress(4, quiet=True)._bar is None


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf"])
def test_a_bad_progress_interval_is_one_line(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv(progress.EVERY_ENV, value)
    for cmd in ("run", "sweep"):
        assert cli.main([cmd, str(conf(tmp_path)), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"harness: error: HARNESS_PROGRESS_EVERY={value!r}: expected seconds between progress "
                       "lines (a number > 0), e.g. HARNESS_PROGRESS_EVERY=30"]
    assert not any((tmp_path / "o").glob("*/metrics.parquet"))


def test_harness_run_prints_overall_progress_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(progress.EVERY_ENV, "0.02")
    assert cli.main(["run", str(conf(tmp_path, steps=200, seeds=(0, 1, 2))), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    lines = LINE.findall(out)
    assert lines and {lab for lab, *_ in lines} == {"run"} and {t for _, _, t, _ in lines} == {"3"}
    assert any(eta != "?" for *_, eta in lines) and "[3/3]" in out and "Summary" in out


# -- CLI -------------------------------------------------------------------------------------
def test_list_backend_and_bad_options(tmp_path, capsys):
    c = str(conf(tmp_path))
    assert cli.main(["run", c, "--list", "--backend", "stacked"]) == 0
    listed = capsys.readouterr().out
    assert cli.main(["sweep", c, "--list", "--backend", "stacked"]) == 0
    assert capsys.readouterr().out == listed and listed.count("-stacked-") == 4
    for args, words in ((["--backend", "mpi"], "--backend mpi: a real backend runs one process per rank"),
                        (["--backend", "torch"], "use `harness slurm submit CONFIG --backend torch`"),
                        (["--jobs", "0"], "--jobs 0: expected a number of runs at a time >= 1"),
                        (["--bogus"], "unrecognized arguments: --bogus")):
        assert cli.main(["sweep", c, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("harness: error: ") and words in err[0], err


@pytest.mark.slow
def test_failed_and_diverged_runs_are_reported_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    c = conf(tmp_path, steps=20, seeds=(0, 1, 2), imports=["plugin.py"],  # a plugin: registered in the workers
             algorithm={"name": "_div_inject", "even_seeds": True, "at": 5, "worker": 1})  # seeds 0 and 2 diverge
    runs = load(c)
    out = tmp_path / "out"
    out.mkdir()
    (out / runs[1].run_id).write_text("in the way")  # run 1 fails: its directory cannot be made
    p = harness("sweep", c, "--out", out, "--jobs", "2", env={progress.EVERY_ENV: "0.1"})
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == 1, stderr
    assert f"] {runs[1].run_id}: FAILED: FileExistsError" in stdout
    for i in (0, 2):
        assert f"] {runs[i].run_id}: diverged (" in stdout
        assert f"harness: error: run {runs[i].run_id} diverged at step 5" in stderr
    assert "3 run(s) in " + str(out) + ": 0 done, 2 diverged, 0 skipped, 1 failed" in stdout
    assert "Summary (target accuracy" in stdout and "diverged" in stdout.split("Summary")[1]
    assert f"harness: error: run {runs[1].run_id} failed: FileExistsError" in stderr
    assert stderr.strip().splitlines()[-1] == (f"harness: error: of 3 run(s), 1 failed and 2 diverged: {runs[1].run_id}, "
                                              f"{runs[0].run_id}, {runs[2].run_id}")
    (out / runs[1].run_id).unlink()  # fixed: the next sweep runs only that one (here, --jobs 1)
    assert cli.main(["sweep", str(c), "--out", str(out), "--quiet"]) == 1  # 2 diverged before: still 1
    assert claims.status(out / runs[1].run_id) == "finished"


@pytest.mark.slow
def test_a_killed_worker_fails_its_run_only_and_ctrl_c_stops_cleanly(tmp_path):
    c = conf(tmp_path, steps=20000, seeds=(0, 1, 2, 3))
    runs, out = load(c), tmp_path / "out"
    p = harness("sweep", c, "--out", out, "--jobs", "2", "--quiet")

    def owners(n, exclude=()):
        deadline = time.time() + 120
        while time.time() < deadline:
            # a run is under way once it has its claim and its run.json (written just after the claim: code
            # fingerprints make that gap tens of ms, and a run interrupted inside it has nothing to mark)
            got = {d.name: claims.read(d / claims.CLAIM) for d in out.glob("*")
                   if (d / claims.CLAIM).exists() and (d / "run.json").exists()}
            got = {k: v for k, v in got.items() if v and k not in exclude and v.get("pid") not in exclude}
            if len(got) >= n:
                return got
            time.sleep(0.1)
        raise AssertionError(f"no {n} claims: {p.poll()}")

    first = owners(2)
    victim, info = sorted(first.items())[0]
    os.kill(info["pid"], signal.SIGKILL)  # as the out-of-memory killer would
    again = owners(2, exclude={victim, info["pid"]})  # the other worker goes on, a fresh one takes the next run
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert f"] {victim}: FAILED: its worker process died (killed, or out of memory?)" in stdout
    assert "harness: interrupted; the runs in progress are marked failed" in stderr
    for run_id, owner in again.items():  # stopped: marked failed, claim released, process gone
        rec = json.loads((out / run_id / "run.json").read_text())
        assert rec["status"] == "failed" and rec["error"] == "Interrupted: sweep interrupted", rec
        assert not (out / run_id / claims.CLAIM).exists()
        with pytest.raises(ProcessLookupError):
            os.kill(owner["pid"], 0)
    rec = json.loads((out / victim / "run.json").read_text())  # killed: the sweep marks it (issue 21), the next
    assert rec["status"] == "failed" and "its sweep worker process died" in rec["error"], rec
    assert (out / victim / claims.CLAIM).exists() and len(runs) == 4  # sweep takes its stale claim over


@pytest.mark.slow
def test_warm_workers_share_a_directory_with_a_harness_run(tmp_path):
    """Two worker processes (not this one) take all 6 runs, each run by one process only, while
    a `harness run` works on the same directory: claims as in `harness run`."""
    c = conf(tmp_path, steps=300, seeds=range(6))
    runs, out, seen = load(c), tmp_path / "out", []
    other = harness("run", c, "--out", out, "--quiet")
    res = sweep.run_all((str(c), []), runs, list(range(6)), out, 2, progress.Progress(6, quiet=True), seen.append)
    stdout, stderr = other.communicate(timeout=240)
    assert other.returncode == 0, stderr
    assert sorted(r.index for r in res) == list(range(6)) and seen == res
    pids = {r.pid for r in res}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids  # 6 runs, at most 2 imports of torch
    ran = [r.run_id for r in res if r.status == "done"] + re.findall(r"\] (\S+): done \(", stdout)
    assert sorted(ran) == sorted(r.run_id for r in runs), (res, stdout)  # each ran once, by one of the two
    assert all(r.sim_s > 0 for r in res if r.status == "done")
    assert all(claims.status(out / r) == "finished" and not (out / r / claims.CLAIM).exists() for r in ran)


def _mapped_shm() -> set[str]:
    """/dev/shm files some live process maps (POSIX semaphores are mapped, not held open)."""
    held = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            held.update(ln.split(None, 5)[5] for ln in maps.read_text().splitlines()
                        if "/dev/shm/" in ln and len(ln.split(None, 5)) == 6)
        except OSError:
            pass
    return held


@pytest.mark.slow
def test_kill_9_of_the_sweep_ends_its_workers_and_frees_its_semaphores(tmp_path):
    """Issue [21] item 5: a sweep killed without a word used to leave its workers running for
    minutes (a torch import each) and their semaphores in /dev/shm."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc (Linux) to see the workers and what they map")
    c = conf(tmp_path, steps=20000, seeds=(0, 1))
    out = tmp_path / "out"
    before = set(Path("/dev/shm").glob("sem.*"))
    p = harness("sweep", c, "--out", out, "--jobs", "2", "--quiet")
    deadline = time.time() + 120
    owners = {}
    while len(owners) < 2 and time.time() < deadline:
        owners = {d.name: claims.read(d / claims.CLAIM) for d in out.glob("*")
                  if (d / claims.CLAIM).exists() and (d / "run.json").exists()}  # under way (see owners above)
        owners = {k: v for k, v in owners.items() if v}
        time.sleep(0.1)
    assert len(owners) == 2, p.poll()
    workers = {o["pid"] for o in owners.values()}
    p.kill()
    p.wait(timeout=30)  # not communicate(): live orphans would hold its pipes open
    killed = time.time()
    alive = set(workers)
    while alive and time.time() < killed + 15:
        time.sleep(0.1)
        alive = {w for w in alive if Path(f"/proc/{w}").exists()
                 and (Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX")}
    try:
        assert not alive, f"workers of the killed sweep still alive {time.time() - killed:.0f} s later: {alive}"
    finally:
        for w in alive:
            os.kill(w, signal.SIGKILL)
    for run_id in owners:  # each worker marked its run failed, naming the dead sweep, and released it
        rec = json.loads((out / run_id / "run.json").read_text())
        assert rec["status"] == "failed" and f"the sweep process {p.pid} died" in rec["error"], rec
        assert not (out / run_id / claims.CLAIM).exists()
    left = set()
    while time.time() < killed + 20:  # the pool's resource tracker unlinks them once the workers are gone
        left = {str(f) for f in set(Path("/dev/shm").glob("sem.*")) - before} - _mapped_shm()
        if not left:
            break
        time.sleep(0.2)
    assert not left, f"semaphores left in /dev/shm by the killed sweep: {left}"


def test_a_closed_stdout_does_not_stop_the_runs(tmp_path):
    """``harness run ... | head -1``: the progress line after the pipe closed used to end the
    run with a BrokenPipeError traceback; now one line on stderr and the runs go on."""
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(conf(tmp_path, steps=3000, seeds=(0, 1))),
                          "--out", str(tmp_path / "o")], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, progress.EVERY_ENV: "0.05"})
    p.stdout.readline()
    p.stdout.close()  # as `| head -1` does
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "harness: stdout was closed; the runs go on" in err, err
    assert all(claims.status(d) == "finished" for d in (tmp_path / "o").iterdir())
