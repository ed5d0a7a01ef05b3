"""``harness sweep CONFIG --jobs K``: run a config's grid on this machine, K runs at a time.

Why a pool of warm workers: the sweep used to start one ``harness run CONFIG --only i``
process per grid point, and each paid the torch import (2-3 s of CPU) again; on 2 cores
``--jobs 2`` took 377 s where a serial ``harness run`` took 112 s. Now K long-lived worker
processes (``spawn``: no forked torch state) import torch once and call
:func:`harness.experiment.run_to_dir` for one config after another, with the config's
``threads`` torch threads each (default 1: K workers on K cores do not oversubscribe).

* Runs are claimed as in ``harness run`` (:mod:`harness.claims`): a run finished, diverged or
  being run by another process (another sweep, a ``harness run``, an array task) is skipped.
* A failed run is reported with its run id and the sweep goes on; a worker process that dies
  (killed, out of memory) fails the run it was running, and a fresh pool runs the rest. The
  exit status is 1 if any run failed or diverged.
* Ctrl-C (or SIGTERM) stops the workers: each marks its run ``failed`` (``Interrupted``) and
  releases its claim, so the next sweep runs it again; exit status 130.
* A sweep process that dies without a word (``kill -9``, the out-of-memory killer) left its
  workers running for minutes (each holds a torch import, ~0.5 GB) and, with them, the pool's
  semaphores in /dev/shm. Each worker now watches its parent (a thread polling ``getppid``
  every :data:`WATCH_S`; a death signal would be tied to the thread that spawned it) and, when
  it is gone, stops as for SIGTERM: its run is marked failed, naming the dead sweep, and the
  pool's resource tracker removes the semaphores once the last worker has gone.
* Progress: :mod:`harness.progress` (a bar on a terminal, a line every
  ``HARNESS_PROGRESS_EVERY`` s otherwise), fed by the workers' evaluation rows through a queue.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from queue import Empty

from harness import config as config_mod
from harness.config import ConfigError
from harness.capabilities import REAL
from harness.progress import Progress, every_s


def parser():
    from harness.cli import _examples, _Help, _Parser  # one-line usage errors, as for `harness run`
    from harness.slurm import _common

    p = _Parser(prog="harness sweep", formatter_class=_Help,
                description="run a config's grid locally, K runs at a time, on K warm worker processes",
                epilog=_examples("harness sweep presets/demo.yaml --jobs 2",
                                 "harness sweep presets/demo.yaml --list",
                                 "HARNESS_PROGRESS_EVERY=60 harness sweep presets/demo.yaml --jobs 2 > sweep.log"))
    _common(p)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    p.add_argument("--backend", choices=["simpy", "stacked", *REAL], help="override the config's backend (default: the config's; simpy or stacked)")
    p.add_argument("--list", action="store_true", help="list the expanded runs and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    return p


@dataclass
class Result:
    """What a worker says about one run (plain data: it crosses a process boundary)."""
    index: int
    run_id: str
    status: str  # done | diverged | skipped | failed
    said: str  # the words of the per-run line
    wall_s: float = 0.0
    sim_s: float | None = None
    pid: int = 0


# -- worker side ---------------------------------------------------------------------------
class Interrupted(BaseException):
    """Raised in a worker's run by SIGTERM (a BaseException, as KeyboardInterrupt, so that no
    ``except Exception`` swallows it): the run is marked failed and its claim released."""


_queue = None  # progress messages to the parent: (pid, index, step, steps, sim_s)
_runs: list = []  # this worker's expansion of the config (its imports: plugins registered here too)
_busy = False
_why = "sweep interrupted"
WATCH_S = 0.2


def _on_term(signum, frame):
    if _busy:
        raise Interrupted(_why)
    os._exit(130)


def _watch_parent(parent: int) -> None:
    """Worker: when the sweep process is gone, stop as for SIGTERM (see the module's doc)."""
    import threading

    def loop():
        global _why
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        _why = f"the sweep process {parent} died (killed?)"
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, daemon=True, name="harness-parent-watch").start()


def _init(queue, config: str, sets: list[str], parent: int) -> None:
    global _queue, _runs
    _queue = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    signal.signal(signal.SIGTERM, _on_term)
    _watch_parent(parent)
    _runs = config_mod.load(config, sets)  # runs the config's imports: (plugin algorithms, tasks) here
    import torch

    import harness.experiment  # noqa: F401  (the import this pool exists to pay once)

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def _work(i: int, out: Path) -> Result:
    return run_one(i, _runs[i], out)


def run_one(i: int, cfg, out: Path, force: bool = False, on_row=None) -> Result:
    """Run ``cfg`` into ``out`` (in a worker, or here for ``--jobs 1``); never raises for a
    failed run: the error is in the result."""
    global _busy
    from harness import claims
    from harness.experiment import run_to_dir

    sim = [None]

    def on_eval(row):
        sim[0] = float(row["time_s"])
        if _queue is not None:
            _queue.put((os.getpid(), i, int(row["step"]), cfg.steps, sim[0]))
        if on_row is not None:
            on_row(i, int(row["step"]), cfg.steps, sim[0])

    if _queue is not None:  # started: if this worker dies, the parent knows which run it was running
        _queue.put((os.getpid(), i, 0, cfg.steps, 0.0))
    t0, _busy = time.perf_counter(), True
    try:
        run_dir, ran = run_to_dir(cfg, out, on_eval=on_eval, force=force)
    except Interrupted:
        sys.stderr.flush()
        os._exit(130)  # run_to_dir has marked the run failed and released its claim
    except Exception as e:
        err = " ".join(f"{type(e).__name__}: {e}".split())
        return Result(i, cfg.run_id, "failed", f"FAILED: {err}", time.perf_counter() - t0, sim[0], os.getpid())
    finally:
        _busy = False
    wall, st = time.perf_counter() - t0, claims.status(run_dir)
    if ran:
        status = "diverged" if st == "diverged" else "done"
        return Result(i, cfg.run_id, status, status, wall, sim[0], os.getpid())
    said = {"finished": "already finished, skipped", "diverged": "diverged before, skipped"}.get(
        st, "being run by another process, skipped")
    return Result(i, cfg.run_id, "skipped", said, wall, None, os.getpid())


# -- parent side ---------------------------------------------------------------------------
def run_all(source: tuple[str, list[str]], runs, todo: list[int], out: Path, jobs: int, progress: Progress,
            report=lambda r: None) -> list[Result]:
    """Run ``runs[i]`` for ``i`` in ``todo``, ``jobs`` at a time; ``report(result)`` as each ends.
    ``source``: the config path (absolute) and --set list that ``runs`` came from: each worker
    loads them again (cheap), so that a config's ``imports`` are registered in it as here."""
    results: list[Result] = []

    def end(r: Result):
        progress.finish(r.index, r.sim_s, skipped=r.status == "skipped", failed=r.status == "failed")
        results.append(r)
        report(r)

    if jobs == 1:  # no pool to warm: this process is the worker
        for i in todo:
            end(run_one(i, runs[i], out, on_row=progress.update))
        return results
    left = list(todo)
    while left:  # a new pool only after a worker died
        left = _pool_round(source, runs, left, out, jobs, progress, end)
    return results


def _pool_round(source, runs, todo, out, jobs, progress, end) -> list[int]:
    """One pool over ``todo``; returns the runs left to do if a worker process died."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx, initializer=_init,
                               initargs=(queue, *source, os.getpid()))
    futs = {pool.submit(_work, i, out): i for i in todo}
    procs = dict(getattr(pool, "_processes", None) or {})  # pid -> Process (spawned on submit)
    running: dict[int, int] = {}  # worker pid -> index of the run it started last

    def drain():
        while True:
            try:
                pid, i, step, steps, sim = queue.get_nowait()
            except Empty:
                return
            running[pid] = i
            progress.update(i, step, steps, sim)

    broken: list[int] = []
    try:
        while futs:
            done, _ = wait(futs, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for f in done:
                i = futs.pop(f)
                try:
                    end(f.result())
                except BrokenProcessPool:
                    broken.append(i)
    except BaseException:
        _stop(pool, procs)
        raise
    pool.shutdown(wait=True)
    drain()
    queue.close()
    if not broken:
        return []
    # The pool stopped the other workers (their runs are marked failed: they run again in a
    # fresh pool); the run of a worker that died otherwise (SIGKILL, out of memory) failed.
    died = [p for p in procs.values() if p.exitcode not in (None, 0, 130)]
    dead = [running[p.pid] for p in died if running.get(p.pid) in broken] or broken
    for i in dead:
        _mark_failed(out / runs[i].run_id, "its sweep worker process died (killed, or out of memory?)")
        end(Result(i, runs[i].run_id, "failed", "FAILED: its worker process died (killed, or out of memory?)"))
    return [i for i in broken if i not in dead]


def _mark_failed(run_dir: Path, why: str) -> None:
    """``run.json`` of a run whose worker died says ``failed`` (it said ``running`` for ever)."""
    import json

    from results.store import RUN_JSON, write_json

    try:
        record = json.loads((run_dir / RUN_JSON).read_text())
        if record.get("status") == "running":
            write_json({**record, "status": "failed", "error": why}, run_dir / RUN_JSON)
    except (OSError, ValueError):
        pass


def _stop(pool: ProcessPoolExecutor, procs: dict) -> None:
    """Stop the workers now: SIGTERM makes each mark its run failed and release its claim."""
    procs = list({**procs, **(getattr(pool, "_processes", None) or {})}.values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 15
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def sweep(a) -> int:
    from harness.cli import _check_out, _print_summary
    from harness.runinfo import run_status
    from harness.slurm import pending

    if a.backend in REAL:
        raise ConfigError(f"--backend {a.backend}: a real backend runs one process per rank, not a local sweep; "
                          f"use `harness slurm submit CONFIG --backend {a.backend}` or `mpiexec -n N harness run "
                          f"CONFIG --backend {a.backend}`")
    if a.jobs < 1:
        raise ConfigError(f"--jobs {a.jobs}: expected a number of runs at a time >= 1, e.g. --jobs 2")
    if not a.quiet:
        every_s()  # a bad HARNESS_PROGRESS_EVERY is one line before anything runs
    source = (str(Path(a.config).resolve()), a.sets + ([f"backend={a.backend}"] if a.backend else []))
    runs = config_mod.load(*source)
    out = Path(a.out or Path("runs") / runs[0].name)
    _check_out(out, "--out" if a.out else "name")
    if a.list:
        for i, cfg in enumerate(runs, 1):  # numbered from 1, as `harness run --list` and --only
            print(f"{i:4d}  {cfg.run_id}")
        return 0
    todo = [i - 1 for i in pending(runs, out)]  # pending numbers runs from 1 (as --only); here: list positions
    jobs = min(a.jobs, max(len(todo), 1))
    print(f"{len(todo)} of {len(runs)} run(s) to do in {out}, {jobs} at a time", flush=True)
    t0, k = time.perf_counter(), [0]
    progress = Progress(len(todo), "sweep", quiet=a.quiet)

    def report(r: Result):
        k[0] += 1
        progress.write(f"[{k[0]}/{len(todo)}] {r.run_id}: {r.said} ({r.wall_s:.1f} s)")

    old = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _interrupt)  # scancel / a job's time limit: stop as for Ctrl-C
        results = run_all(source, runs, todo, out, jobs, progress, report)
    except KeyboardInterrupt:
        progress.close()
        print("harness: interrupted; the runs in progress are marked failed and run again by the next sweep",
              file=sys.stderr)
        return 130
    finally:
        progress.close()
        signal.signal(signal.SIGTERM, old)
    count = {s: [r for r in results if r.status == s] for s in ("done", "diverged", "skipped", "failed")}
    print(f"{len(runs)} run(s) in {out}: {len(count['done'])} done, {len(count['diverged'])} diverged, "
          f"{len(count['skipped'])} skipped, {len(count['failed'])} failed "
          f"({time.perf_counter() - t0:.0f} s, {jobs} at a time)")
    _print_summary(out, runs[0].target_acc)
    for r in count["failed"]:
        print(f"harness: error: run {r.run_id} failed: {r.said.removeprefix('FAILED: ')}", file=sys.stderr)
    diverged = [c.run_id for c in runs if run_status(out / c.run_id) == "diverged"]  # now or before, as run
    if count["failed"] or diverged:
        print(f"harness: error: of {len(runs)} run(s), {len(count['failed'])} failed and {len(diverged)} diverged: "
              f"{', '.join([r.run_id for r in count['failed']] + diverged)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    from results.errors import ResultsError

    try:
        return sweep(parser().parse_args(argv))
    except (ConfigError, ValueError, FileNotFoundError, ResultsError) as e:
        print(f"harness: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
