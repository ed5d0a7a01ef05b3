"""Issue [21]: kill and stop every process of a job, many times, and count what is left.

For each case (who x signal) it starts a fresh job, waits until every rank (or both sweep
workers) is at work, sends the signal and checks how the job ended:

* who: ``launcher`` (mpiexec, torchrun, or the ``harness sweep`` process), ``supervisor``
  (the launcher's process of a rank, :mod:`harness.backends.supervisor`), ``rank`` (the
  rank itself) for ``--backends mpi torch`` (2-rank sync SGD, 10 ms per step); ``worker``
  (a warm worker of ``harness sweep --jobs 2``, SimPy) for ``sweep``;
* signal: SIGKILL, SIGTERM, or SIGSTOP followed by SIGCONT after ``HARNESS_TIMEOUT_S + 4`` s.

Columns: ``finished`` / ``failed`` runs (a failed one must name its cause), ``running``
(what must be 0), ``orphans`` (processes carrying the launch's tag 3 s after the launcher
ended: 0), ``hung`` (launcher not ended after 120 s), ``shm`` (the job's /dev/shm files no
process holds after its end: removed after counting), ``max s`` (signal to launcher exit).

    .venv/bin/python benchmarks/kill_soak.py [--trials 20] [--backends mpi torch sweep] [--steps 600 --sweep-steps 3000]

``--parallel K`` runs K trials at a time, each its own tagged job and directory; ``shm left``
counts the /dev/shm files the job's processes mapped when the signal was sent that no process
maps or holds once the job has ended (only its own: parallel trials never count each other's).
``--steps`` / ``--sweep-steps``: steps of the real job (10 ms each) and of each sweep run (SimPy):
short enough that a stopped launcher's job ends soon after SIGCONT, long enough that every
signal lands while the runs are at work (the soak waits for that before it signals).
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import procs  # noqa: E402

SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "STOP": signal.SIGSTOP}
TIMEOUT_S = 6


def victim(job: procs.Job, who: str, pids: dict[int, int], k: int) -> int:
    if who == "launcher":
        return job.launcher.pid
    pid = pids[k % len(pids)]
    return procs.ppid(pid) if who == "supervisor" else pid


def mapped(pid: int) -> set[Path]:
    """The /dev/shm files (still named) that ``pid`` maps."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return set()
    return {Path(ln.split(None, 5)[5]) for ln in lines
            if "/dev/shm/" in ln and len(ln.split(None, 5)) == 6 and not ln.endswith("(deleted)")}


def trial(backend: str, who: str, sig: str, k: int, steps: tuple[int, int]) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        job = procs.Job(backend, Path(tmp), ranks=2, timeout_s=TIMEOUT_S, steps=steps[backend == "sweep"])
        try:
            pids = job.wait_running()
        except RuntimeError as e:
            job.finish(5)
            return {"error": str(e)}
        pid = victim(job, who, pids, k)
        mine = set().union(*(mapped(p) for p in job.tagged()))  # this job's /dev/shm files (trials run in parallel)
        t0 = time.monotonic()
        os.kill(pid, SIGNALS[sig])
        if sig == "STOP":
            time.sleep(TIMEOUT_S + 4)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        took, left = job.finish(120)
        took = None if took is None else time.monotonic() - t0
        runs = job.statuses()
        left_shm = procs.unused_shm(mine)
        for f in left_shm:
            f.unlink(missing_ok=True)
        st = [r.get("status") for r in runs.values()]
        return {"finished": st.count("finished"), "failed": st.count("failed"),
                "preempted": st.count("preempted"),  # [issue 27] SIGTERM: saved, exit 75, the same command resumes
                "unnamed": sum(1 for r in runs.values() if r.get("status") == "failed" and not r.get("error")),
                "running": sum(s not in ("finished", "failed", "diverged", "preempted") for s in st),
                "orphans": len(left), "hung": took is None, "shm": len(left_shm), "took": took or 0.0,
                "error": next((r.get("error") for r in runs.values() if r.get("error")), "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", "--times", dest="times", type=int, default=20, help="trials per case (default 20)")
    ap.add_argument("--steps", type=int, default=600, help="steps of a real job, 10 ms each (default 600)")
    ap.add_argument("--sweep-steps", type=int, default=3000, help="steps of a sweep run, SimPy (default 3000)")
    ap.add_argument("--parallel", type=int, default=1, help="trials at a time (default 1; a stopped job mostly "
                    "waits, so 2-3 fit on 2 cores)")
    ap.add_argument("--backends", nargs="+", default=["mpi", "torch", "sweep"], choices=["mpi", "torch", "sweep"])
    ap.add_argument("--signals", nargs="+", default=list(SIGNALS), choices=list(SIGNALS))
    a = ap.parse_args()
    if "mpi" in a.backends and procs.mpiexec() is None:
        sys.exit("kill_soak: no mpiexec next to the interpreter or on PATH; drop mpi from --backends")
    print(f"# {platform.node()}: {os.cpu_count()} cores, {platform.python_version()}, load {os.getloadavg()[0]:.1f}; "
          f"--trials {a.times} --parallel {a.parallel} --steps {a.steps} --sweep-steps {a.sweep_steps}, HARNESS_TIMEOUT_S={TIMEOUT_S}", flush=True)
    print("| case | trials | finished | preempted | failed (named) | running | orphans | hung | shm left | max s | a cause |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    totals = {"running": 0, "orphans": 0, "hung": 0, "shm": 0, "unnamed": 0}
    t_start = time.monotonic()
    for backend in a.backends:
        whos = ("launcher", "worker") if backend == "sweep" else ("launcher", "supervisor", "rank")
        for who in whos:
            for sig in a.signals:
                with ThreadPoolExecutor(a.parallel) as ex:
                    rs = list(ex.map(lambda k: trial(backend, who, sig, k, (a.steps, a.sweep_steps)), range(a.times)))
                bad = [r["error"] for r in rs if "finished" not in r]
                rs = [r for r in rs if "finished" in r]
                s = {c: sum(r[c] for r in rs) for c in ("finished", "preempted", "failed", "unnamed", "running",
                                                         "orphans", "hung", "shm")}
                for c in totals:
                    totals[c] += s[c]
                cause = next((r["error"] for r in rs if r["error"]), "").replace("|", "/")[:90]
                print(f"| {backend} {who} SIG{sig} | {len(rs)}{f' ({len(bad)} never started)' if bad else ''} | "
                      f"{s['finished']} | {s['preempted']} | {s['failed']} ({s['failed'] - s['unnamed']}) | {s['running']} | "
                      f"{s['orphans']} | {s['hung']} | {s['shm']} | {max((r['took'] for r in rs), default=0):.1f} | "
                      f"{cause} |", flush=True)
    print(f"\ntotal: {totals['running']} running, {totals['orphans']} orphans, {totals['hung']} hung, "
          f"{totals['shm']} /dev/shm files left, {totals['unnamed']} failed without a cause ({time.monotonic() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
