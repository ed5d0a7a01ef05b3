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
  (killed, out of memory) fails the run it was running, and a fresh worker takes its place.
  The exit status is 1 if any run failed or diverged.
* Ctrl-C (or SIGTERM) stops the workers: each marks its run ``failed`` (``Interrupted``) and
  releases its claim, so the next sweep runs it again; exit status 130.
* A sweep process that dies without a word (``kill -9``, the out-of-memory killer) used to
  leave its workers running for minutes (each holds a torch import, ~0.5 GB) and the pool's
  semaphores in /dev/shm. The workers are now plain subprocesses fed through pipes
  (:mod:`harness.sweep_pool`): the end of a worker's stdin tells it its sweep is gone, it
  stops as for SIGTERM (its run marked failed, naming the dead sweep), and no file of the
  sweep exists in /dev/shm to be left behind.
* Finished runs whose code changed since are refused, re-run or kept as by ``harness run``
  (:func:`harness.codeid.check_runs`, ``--rerun-changed`` / ``--keep-changed``).
* Any ``OSError`` (full disk, read-only file system, permissions, a symlink loop, a file as
  ``--out``) is one line naming the path (``harness.cli.main``: :func:`harness.cli.os_error_line`)
  and exit status 2, before any worker starts: :func:`_writable` makes ``--out`` and writes in it.
* Progress: :mod:`harness.progress` (a bar on a terminal, a line every
  ``HARNESS_PROGRESS_EVERY`` s otherwise), fed by the workers' evaluation rows through a queue.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import config as config_mod
from harness.config import ConfigError
from harness.capabilities import REAL
from harness.progress import Progress, every_s


def parser():
    from harness.cli import _examples, _Help, _Parser  # one-line usage errors, as for `harness run`

    p = _Parser(prog="harness sweep", formatter_class=_Help,
                description="run a config's grid locally, K runs at a time, on K warm worker processes",
                epilog=_examples("harness sweep presets/demo.yaml --jobs 2",
                                 "harness sweep presets/demo.yaml --list",
                                 "HARNESS_PROGRESS_EVERY=60 harness sweep presets/demo.yaml --jobs 2 > sweep.log"))
    add_arguments(p)
    return p


def add_arguments(p) -> None:
    """The options of ``harness sweep`` (the command tree mounts them from :func:`parser`);
    :func:`sweep` runs it and raises one-line errors (``ValueError``, ``OSError``) for the caller."""
    from harness.slurm import _common

    _common(p)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    p.add_argument("--backend", choices=["simpy", "stacked", *REAL], help="override the config's backend (default: the config's; simpy or stacked)")
    p.add_argument("--list", action="store_true", help="list the expanded runs and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    changed = p.add_mutually_exclusive_group()  # as `harness run` (harness/codeid.py)
    changed.add_argument("--rerun-changed", action="store_true",
                         help="re-run finished runs whose code (algorithm, task, plugin, op or backend files) changed "
                         "since; without it or --keep-changed such runs stop the command with one line")
    changed.add_argument("--keep-changed", action="store_true",
                         help="keep finished runs whose code changed since, as they are")


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


_busy = False  # a worker: inside run_to_dir (SIGTERM interrupts the run) or not (it just exits)
_why = "sweep interrupted"
_stopping = False  # a worker: SIGTERM came (an import that wraps Interrupted must not hide it)


def _on_term(signum, frame):
    global _stopping
    if _stopping:  # a second SIGTERM must not interrupt the first one's cleanup (marking the run failed)
        return
    _stopping = True
    if _busy:
        raise Interrupted(_why)
    os._exit(130)


def run_one(i: int, cfg, out: Path, force: bool = False, on_row=None) -> Result:
    """Run ``cfg`` into ``out`` (in a worker, or here for ``--jobs 1``); never raises for a
    failed run: the error is in the result."""
    global _busy
    from harness import claims
    from harness.cli import os_error_line
    from harness.experiment import run_to_dir

    sim = [None]

    def on_eval(row):
        sim[0] = float(row["time_s"])
        if on_row is not None:
            on_row(i, int(row["step"]), cfg.steps, sim[0])

    t0, _busy = time.perf_counter(), True
    try:
        run_dir, ran = run_to_dir(cfg, out, on_eval=on_eval, force=force)
    except Interrupted:
        sys.stderr.flush()
        os._exit(130)  # run_to_dir has marked the run failed and released its claim
    except Exception as e:
        if _stopping:  # Interrupted wrapped by the code it hit (a class body's __set_name__ during an import)
            mark_failed(out / cfg.run_id, f"Interrupted: {_why}", ("running", "failed"))
            sys.stderr.flush()
            os._exit(130)
        err = " ".join(f"{type(e).__name__}: {os_error_line(e)}".split())  # an OSError: path, cause and fix
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
            report=lambda r: None, force=frozenset()) -> list[Result]:
    """Run ``runs[i]`` for ``i`` in ``todo``, ``jobs`` at a time; ``report(result)`` as each ends.
    ``source``: the config path (absolute) and --set list that ``runs`` came from: each worker
    loads them again (cheap), so that a config's ``imports`` are registered in it as here.
    ``force``: run ids to run again although finished (their code changed: --rerun-changed)."""
    results: list[Result] = []

    def end(r: Result):
        progress.finish(r.index, r.sim_s, skipped=r.status == "skipped", failed=r.status == "failed")
        results.append(r)
        report(r)

    if jobs == 1:  # no pool to warm: this process is the worker
        for i in todo:
            end(run_one(i, runs[i], out, force=runs[i].run_id in force, on_row=progress.update))
        return results
    from harness.sweep_pool import run_pool

    run_pool(source, runs, todo, out, jobs, progress, end, force)
    return results


def mark_failed(run_dir: Path, why: str, was=("running",)) -> None:
    """``run.json`` of a run whose worker died says ``failed`` (it said ``running`` for ever);
    ``was``: the statuses it replaces."""
    import json

    from results.store import RUN_JSON, write_json

    try:
        record = json.loads((run_dir / RUN_JSON).read_text())
        if record.get("status") in was:
            write_json({**record, "status": "failed", "error": why}, run_dir / RUN_JSON)
    except (OSError, ValueError):
        pass


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
    from harness import codeid

    policy = "rerun" if a.rerun_changed else "keep" if a.keep_changed else "refuse"
    rerun = codeid.check_runs(runs, out, policy, note=lambda line: print(line, file=sys.stderr, flush=True))
    _writable(out)
    todo = sorted({i - 1 for i in pending(runs, out)}  # pending numbers runs from 1 (as --only); here: positions
                  | {i for i, cfg in enumerate(runs) if cfg.run_id in rerun})
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
        results = run_all(source, runs, todo, out, jobs, progress, report, force=rerun)
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


def _writable(out: Path) -> None:
    """Make ``out`` and write a file in it before any worker starts: a read-only file system,
    missing permissions, a symlink loop or a full disk is one line now, not one per run."""
    import uuid

    out.mkdir(parents=True, exist_ok=True)
    probe = out / f".harness-sweep-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        try:
            probe.unlink()
        except FileNotFoundError:
            pass
