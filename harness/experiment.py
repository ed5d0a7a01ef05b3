"""Run one validated config end to end: build the parts, interpret, write the results.

The composition root: the only module that knows algorithms, tasks, topologies, backends
and results together. A run directory is claimed first (:mod:`harness.claims`: a run another
process is running is skipped), then gets ``run.json`` with ``status: running``;
``metrics.parquet`` and the final ``run.json`` (``finished``, ``diverged`` with the step and
worker, or ``failed`` with the error) are written atomically at the end, so a killed run is
visibly unfinished, never half-written.
"""
from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from harness import claims
from harness.capabilities import REAL
from harness.config import RunConfig
from harness.recording import Diverged, Recorder, divergence_line
from harness.tasks import Sampler, TaskDataError
from harness.runinfo import code_record, meta_columns, run_status, versions  # noqa: F401 (re-exported)
from results.store import METRICS, RUN_JSON, write_json, write_table



def build(cfg: RunConfig, on_eval=None):
    """Everything a simulated backend needs for ``cfg``: returns ``(backend, x0)``."""
    from simulators import BACKENDS
    from simulators.base import Run
    from harness.assembly import assemble
    from harness.models.compute import ComputeTimes, measure_grad_seconds
    from harness.models.faults import FaultSchedule

    a = assemble(cfg)  # the same assembly as a real rank's (harness.assembly)
    task = a.task
    recorder = Recorder(meta_columns(cfg, cfg.backend), cfg.n_workers, cfg.steps, task.evaluate,
                        cfg.eval_every, cfg.log_every, on_eval, on_divergence=cfg.on_divergence,
                        loss_factor=cfg.divergence.loss_factor)
    # calibration measures on its own sampler so the run's batch streams stay untouched
    measure = lambda: measure_grad_seconds(task, Sampler(task.shards, task.batch_size, cfg.seed + 1))  # noqa: E731
    run = Run(algorithm=a.algorithm, params=a.params, ctx=a.ctx, task=task, sampler=a.sampler,
              compute=ComputeTimes(cfg.compute, cfg.n_clients or cfg.n_workers, cfg.seed, measure),  # per client
              network=cfg.network, recorder=recorder,
              topology=a.topology, faults=FaultSchedule(cfg.faults, cfg.n_workers, cfg.seed) if cfg.faults else None)
    return BACKENDS[cfg.backend](run), task.init_params(cfg.seed)


def simulate(cfg: RunConfig, on_eval=None):
    """Run ``cfg`` in memory: returns ``(metrics DataFrame, final [n, d] parameters)``.
    A run that diverges under ``on_divergence: stop`` raises :class:`Diverged` whose
    ``frame`` holds the rows up to then (a ``diverged`` event row last); under ``continue``
    the table has that row and the run goes on."""
    if cfg.backend in REAL:
        raise ValueError(f"backend: {cfg.backend} runs one process per rank; use `harness run` under a launcher "
                         "(docs/real-backends.md), not simulate()")
    df, final, _ = _execute(cfg, on_eval)
    return df, final


def _execute(cfg: RunConfig, on_eval=None, times: dict | None = None, ckpt: Path | None = None, live=None):
    """``(table, final parameters, first divergence or None)``; raises :class:`Diverged` (stop).
    ``times`` (if given) gets ``setup_s`` (task, data and run assembly) and ``loop_s`` (the
    algorithm's execution), so run.json can say where the wall time went (issue [22]).
    ``ckpt``: the run's checkpoint file: saved there (:mod:`harness.checkpoint`), resumed from
    it when it exists and matches the run and its code; raises :class:`Preempted` on a signal."""
    t0 = time.perf_counter()
    backend, x0 = build(cfg, on_eval)
    if times is not None:
        times["n_params"] = int(x0.numel())  # the report's setup section says the model's size
    if ckpt is not None:
        _resume(cfg, backend, ckpt, times)
    rec = backend.run.recorder  # after a resume: the restored recorder, with the rows so far
    rec.live = live  # [issue 27] rows handed to the live callbacks while it runs (harness.live)
    t1 = time.perf_counter()
    try:
        final = backend.execute(x0)
    except Diverged as e:
        e.frame = rec.frame()
        raise
    except SystemExit as e:  # [issue 21] an algorithm's sys.exit must not end harness with its status
        raise ValueError(exit_message(e)) from None  # one line from the CLI, run.json failed
    finally:
        from harness import checkpoint

        checkpoint.arm(False)  # a signal between runs ends the process as before
        if live is not None:  # the rows not handed over yet
            live.hold(rec.take_new())  # close() delivers them once the status is known
        if times is not None:
            times.update(setup_s=t1 - t0, loop_s=time.perf_counter() - t1)
    return rec.frame(), final, rec.diverged


def _resume(cfg: RunConfig, backend, ckpt: Path, times: dict | None) -> None:
    """Arm ``backend``'s checkpoints and continue from ``ckpt`` where one matches (else say why not)."""
    from harness import checkpoint

    meta = checkpoint.meta(cfg)
    backend.policy = checkpoint.Policy(getattr(cfg, "checkpoint", None), ckpt, meta)
    try:
        payload = checkpoint.read(ckpt)
        why = None if payload is None else checkpoint.mismatch(payload, meta) or (
            None if payload.get("backend") == backend.name else f"it was saved by backend {payload.get('backend')}")
        if payload is not None and why is None:
            step = backend.restore(payload)
            checkpoint.say(f"harness: note: run {cfg.run_id}: resumed from its checkpoint at step {step}")
            if times is not None:
                times["resumed_from"] = step
        elif payload is not None:
            checkpoint.say(f"harness: note: run {cfg.run_id}: its checkpoint is not used ({why}); starting from step 0")
    except checkpoint.CheckpointError as e:
        checkpoint.say(f"harness: note: run {cfg.run_id}: {e}; starting from step 0")
        fresh = build(cfg)[0]  # a failed restore may have half-updated the backend
        vars(backend).clear()
        vars(backend).update(vars(fresh))
        backend.policy = checkpoint.Policy(getattr(cfg, "checkpoint", None), ckpt, meta)


def exit_message(e: SystemExit) -> str:
    """One line for an algorithm (or task) that called ``sys.exit`` during a run: where, and the fix."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    ours = ("/harness/", "/simulators/", "site-packages", "/lib/python")
    where = next((f" at {Path(f.filename).name} line {f.lineno}" for f in reversed(frames)
                  if not any(o in f.filename for o in ours)), "")
    return (f"algorithm: it called sys.exit({e.code!r}){where} during the run; an algorithm returns its "
            "model or raises an exception, it never exits the process")


def run_to_dir(cfg: RunConfig, out: Path, on_eval=None, force: bool = False,
               save_params: bool = False) -> tuple[Path, bool]:
    """Run ``cfg`` into ``out/<run_id>/``; returns ``(run_dir, ran)``. A run already
    finished (or diverged) there is skipped unless ``force``; one that another process has
    claimed is skipped always (a stale claim is taken over). A divergence is no exception:
    the status says it and one line goes to stderr. ``save_params``: also write the final
    parameters as ``final_params.pt`` (``{"workers": [n, d], "server": None}``)."""
    # -- real backends (one OS process per rank): harness/backends/ ------------------------
    from harness.backends import REAL_BACKENDS

    if cfg.backend in REAL_BACKENDS:
        from harness.backends import run_to_dir as run_real

        return run_real(cfg, out, force=force, save_params=save_params)
    # -- simulated backends ---------------------------------------------------------------
    run_dir = Path(out) / cfg.run_id
    if not force and claims.is_done(run_dir):
        return run_dir, False
    fresh = [d for d in (run_dir, Path(out)) if not d.exists()]  # what this call will create
    claim = claims.acquire(run_dir, cfg.run_id)
    if claim is None:  # another process is running it
        return run_dir, False
    try:
        if not force and claims.is_done(run_dir):  # finished by another process meanwhile
            return run_dir, False
        return _run(cfg, run_dir, on_eval, save_params), True
    except TaskDataError:
        # bad input (a missing or malformed data set), said in one line before anything ran: a run
        # directory this call made holds nothing worth keeping (issues [21], [27])
        claim.release()
        import shutil

        for d in fresh:
            if d == run_dir or not any(d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
        raise
    finally:
        claim.release()


def _run(cfg: RunConfig, run_dir: Path, on_eval, save_params: bool) -> Path:
    record = {"run_id": cfg.run_id, "status": "running", "error": None, "config": cfg.model_dump(),
              "versions": versions(), "code": code_record(cfg), "started": _now(), "finished": None}
    write_json(record, run_dir / RUN_JSON)
    t0, times = time.perf_counter(), {}
    from harness.live import clear as clear_live, open_live

    live = open_live(cfg, run_dir)  # [issue 27] metrics.live.parquet, tensorboard, ...
    from harness import checkpoint

    try:
        try:
            df, final, div = _execute(cfg, on_eval, times, live=live, ckpt=run_dir / checkpoint.FILE)
        except Diverged as e:  # on_divergence: stop; the rows so far are the result
            df, final, div = e.frame, None, e.info
        except checkpoint.Preempted as e:  # [issue 27] SIGTERM/SIGUSR1: saved (or not); the same command resumes
            record.update(status="preempted", finished=_now(), preempted={"step": e.step, "why": e.why},
                          wall_s=time.perf_counter() - t0, **times)
            write_json(record, run_dir / RUN_JSON)
            raise
        write_table(df, run_dir / METRICS)
        clear_live(run_dir)  # the final table replaces the live one
        if save_params and final is not None:
            from harness.backends import PARAMS_FILE, save_params as write_params

            write_params(run_dir / PARAMS_FILE, final)
    except checkpoint.Preempted:
        raise
    except BaseException as e:
        record.update(status="failed", error=f"{type(e).__name__}: {e}", finished=_now())
        if live is not None:
            live.close([], "failed")
        write_json(record, run_dir / RUN_JSON)
        raise
    record.update(status="finished", finished=_now(), wall_s=time.perf_counter() - t0, **times)
    if div is not None:
        div = {**div, "stopped": cfg.on_divergence == "stop"}
        record.update(status="diverged", diverged=div)
        print(divergence_line(cfg.run_id, div), file=sys.stderr, flush=True)
    write_json(record, run_dir / RUN_JSON)
    if live is not None:
        live.close([], record["status"])
    (run_dir / checkpoint.FILE).unlink(missing_ok=True)  # done: the table is the result now
    return run_dir


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
