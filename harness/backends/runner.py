"""Run one rank end to end: build the driver, run it, gather rows to rank 0 and write the
run directory atomically; on any error, report the rank and cause and abort the job.
Rank 0 claims the run directory first (:mod:`harness.claims`) and marks a run whose loss or
model went non-finite ``diverged`` (:mod:`harness.backends.rank_divergence`)."""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from harness import algorithms
from harness.recording import COUNTERS

from harness.backends.rank import RankDriver


def add_worker_counters(rows: list[dict]) -> None:
    """Server algorithms: the server's consensus rows hold the server's own counters; add
    each worker's counters as of that moment (its latest row with ``time_s`` not after the
    server's), so that the row sums over all ranks like SimPy's. Resolution: ``log_every``."""
    import bisect

    per: dict[int, list[dict]] = {}
    for r in rows:
        if r["worker"] >= 0 and r.get("event") == "step":  # not the server's update rows
            per.setdefault(r["worker"], []).append(r)
    for w in per.values():
        w.sort(key=lambda r: r["time_s"])
    times = {k: [r["time_s"] for r in w] for k, w in per.items()}
    for row in rows:
        if row["worker"] != -1 or row["step"] == 0:
            continue
        for k, w in per.items():
            j = bisect.bisect_right(times[k], row["time_s"]) - 1
            if j >= 0:
                for c in COUNTERS[1:]:
                    row[c] += w[j][c]


def rows_frame(parts: list[dict], server_alg: bool):
    """The run's table from every rank's ``rows`` (parts in rank order), as rank 0 writes it;
    pure, so that the in-process loopback backend builds the very same table."""
    import pandas as pd

    rows = [r for p in parts for r in p["rows"]]
    if server_alg:
        add_worker_counters(rows)
    return pd.DataFrame(rows).sort_values(["step", "worker"], kind="stable").reset_index(drop=True)


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_rank(cfg, out: Path, transport_cls, force: bool = False, save_params: bool = False) -> tuple[Path, bool]:
    """Every rank calls this; rank 0 writes ``run.json`` and ``metrics.parquet``."""
    from harness.backends import PARAMS_FILE
    from harness.backends.heartbeat import Heartbeat
    from harness.backends.launch import op_timeout_s, save_params as write_params
    from harness.config import ConfigError
    from harness.runinfo import code_record, run_status, versions
    from results.store import METRICS, RUN_JSON, write_json, write_table
    from harness import claims

    from harness.backends.supervisor import supervise

    run_dir = Path(out) / cfg.run_id
    supervise()  # before the transport starts MPI or a process group: the launcher's process stays behind
    tr = transport_cls()
    root = tr.rank == 0
    claim = None  # rank 0's claim on run_dir: no second process runs it meanwhile
    if root and not (not force and claims.is_done(run_dir)):
        claim = claims.acquire(run_dir, cfg.run_id)
        if claim is not None and not force and claims.is_done(run_dir):  # finished meanwhile
            claim.release()
            claim = None
    if tr.bcast_obj(claim is None if root else None):
        tr.close()
        return run_dir, False
    alg = algorithms.get(cfg.algorithm["name"])
    server = bool(getattr(alg, "has_server", False))
    needed = cfg.n_workers + server
    msg = None
    if getattr(cfg, "faults", None):
        msg = (f"faults: crash injection is simulated (backend simpy or stacked); a {cfg.backend} run has real "
               "failures only; remove faults: from the config")
    elif tr.size != needed:
        launch = {"mpi": f"mpiexec -n {needed}", "torch": f"torchrun --nproc-per-node {needed}"}[cfg.backend]
        what = f"1 server + {cfg.n_workers} workers" if server else "one per worker"
        msg = (f"n_workers: {cfg.algorithm['name']} with n_workers={cfg.n_workers} needs {needed} ranks ({what}), "
               f"but {tr.size} {'was' if tr.size == 1 else 'were'} started; "
               f"launch with `{launch} ...` or --set n_workers={tr.size - server}")
    if msg:  # every rank sees the same mistake; rank 0 says it
        if root:
            claim.release()
            raise ConfigError(msg)
        raise SystemExit(2)

    record = {"run_id": cfg.run_id, "status": "running", "error": None, "config": cfg.model_dump(),
              "versions": versions(), "code": code_record(cfg), "started": _now(), "finished": None, "world_size": tr.size,
              "transport": tr.describe() if hasattr(tr, "describe") else tr.name}
    if root:
        write_json(record, run_dir / RUN_JSON)
    t0 = time.perf_counter()
    state = {"driver": None}

    def fail(cause: str, tb: str = ""):
        drv = state["driver"]
        where = f" ({drv.where})" if drv is not None else ""
        blamed = hb.blame(cause)  # a peer that died, froze or stopped making progress (heartbeats)
        msg = blamed or f"rank {tr.rank}{where} failed: {cause}"
        # The first failure is the cause; ranks that fail because a peer died (connection
        # closed, ...) must not overwrite it. The failing rank writes before it exits, so
        # its peers notice only afterwards.
        first = hb.claim(msg) and run_status(run_dir) != "failed"
        if not first:  # the reporter may still be writing run.json: an abort now would kill it mid-way
            hb.await_record()
        if blamed and not first:  # the first reporter said it all: one line per job
            tr.abort(msg)
            os._exit(1)
        if tb and first:
            sys.stderr.write(tb)
        note = "" if first else "; another rank failed first, its cause is in run.json"
        sys.stderr.write(f"harness: error: {msg} [run {cfg.run_id}, {tr.size} ranks{note}]\n")
        sys.stderr.flush()
        if first:
            try:
                write_json({**record, "status": "failed", "error": msg, "finished": _now()}, run_dir / RUN_JSON)
            except Exception:
                pass
        if claim is not None:
            claim.release()
        tr.abort(msg)
        os._exit(1)  # abort() does not return; this is a last resort

    hb = Heartbeat(run_dir, tr, record, lambda: state["driver"], fail, op_timeout_s())
    from harness import checkpoint

    preempted = None
    try:
        drv = state["driver"] = RankDriver(cfg, tr, on_timeout=lambda why: fail(why))
        from harness.live import attach_rank, clear as clear_live, open_live

        live = open_live(cfg, run_dir, tr.rank)  # [issue 27] this rank's rows so far: live/rank-<k>.parquet
        attach_rank(live, drv)
        t1 = time.perf_counter()  # setup_s: task, data and run assembly; loop_s: the run and its evaluations
        drv.arm_checkpoints(run_dir, cfg.checkpoint)  # [issue 27] save, and resume from a saved step
        try:
            final = drv.run()
        except checkpoint.Preempted as e:  # every rank stops at the same step (rank_checkpoint agrees)
            preempted = e
            if root:
                write_json({**record, "status": "preempted", "finished": _now(),
                            "preempted": {"step": e.step, "why": e.why}}, run_dir / RUN_JSON)
                claim.release()
            tr.barrier()
            hb.close()
            tr.close()
        else:
            if root:
                drv.rec.finish()  # test metrics of the consensus rows, off the clock
            t2 = time.perf_counter()
            mine = {"rank": tr.rank, "role": drv.role, "index": drv.i, "rows": drv.rec.rows, "host": socket.gethostname(),
                    "final": final.detach().cpu() if save_params else None, "diverged": drv.div}
            parts = tr.gather_obj(mine)
            if root:
                parts.sort(key=lambda p: p["rank"])
                df = rows_frame(parts, drv.server_alg)
                write_table(df, run_dir / METRICS)
                if save_params:
                    workers = torch.stack([p["final"] for p in parts if p["role"] == "worker"])
                    server_x = next((p["final"] for p in parts if p["role"] == "server"), None)
                    write_params(run_dir / PARAMS_FILE, workers, server_x)
                record.update(status="finished", finished=_now(), wall_s=time.perf_counter() - t0, setup_s=t1 - t0,
                              loop_s=t2 - t1, n_params=int(final.numel()),
                              hosts=sorted({p["host"] for p in parts}))
                divs = sorted((p["diverged"] for p in parts if p["diverged"]), key=lambda d: (d["step"], d["worker"]))
                if divs:  # the first over all ranks (they agree on it under on_divergence: stop)
                    from harness.recording import divergence_line

                    record.update(status="diverged", diverged={**divs[0], "stopped": drv.agree})
                    print(divergence_line(cfg.run_id, record["diverged"]), file=sys.stderr, flush=True)
                write_json(record, run_dir / RUN_JSON)
                import shutil

                shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)  # done: the table is the result now
                claim.release()
            if live is not None:  # rank 0: the consensus rows, now with their test metrics
                live.close(drv.rec.take_done() if root else [], record["status"] if root else
                           "diverged" if drv.div else "finished")
            if root:
                clear_live(run_dir)  # the final table replaces every rank's live rows (the others are done)
            tr.barrier()
            hb.close()
            tr.close()
    except BaseException as e:  # noqa: BLE001 - every failure must end the whole job
        fail(f"{type(e).__name__}: {e}", traceback.format_exc())
    if preempted is not None:
        raise preempted  # harness run: exit status 75, the same command resumes
    return run_dir, True
