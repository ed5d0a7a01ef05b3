"""Calibrated simulator vs measured wall-clock (issue [17]): 4 local MPI ranks.

    .venv/bin/python benchmarks/calibration.py [--reps 3] [--out /tmp/calibration-bench] [--ranks 4] [--backend mpi]

Each repetition, back to back (so that both see the same machine load):

1. ``mpiexec -n 4 harness calibrate presets/calibrate-mpi.yaml --backend mpi`` (case 0,
   sync SGD): compute and communication measured, fitted, written as two fragments:
   ``calibration`` (alpha-beta from the op timings) and ``calibration-insitu`` (the latency
   also carries the measured job's synchronisation delay: the contention term), and
   ``calibration-trace`` (the measured compute times replayed in order, with its own delay);
2. ``mpiexec -n 4 harness run presets/calibrate-mpi.yaml --backend mpi --force``: sync SGD,
   Local SGD (H=8), D-PSGD (ring), async SGD (1 server + 3 workers);
3. ``harness predict`` with the three fragments: each real run replayed on simpy.

(``--backend torch``: the same under ``torchrun``, torch.distributed with gloo.)

Prints every repetition's table, then per algorithm and fragment the median measured and
predicted time per step, the median and range of the relative error, and the load drift
(the real launch's sync SGD step over the calibration job's: the same config, so any
difference is the machine's speed changing between launches). Finally, a known
straggler: a calibration with worker 2 sleeping ``--sleep-ms`` per step (``slowdown:``)
and the factor and median step the fit finds for it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "presets" / "calibrate-mpi.yaml"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run(cmd, timeout=900):
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if p.returncode:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{p.stderr[-3000:]}")
    return p.stdout


RANKS = 4  # --ranks: 2 gives one rank per core here (no core sharing)
BACKEND = "mpi"  # --backend torch: torchrun, torch.distributed with gloo


def _launch(*args):
    """``harness ARGS`` on RANKS ranks, under mpiexec or torchrun (by BACKEND)."""
    if BACKEND == "mpi":
        exe = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        launcher = [exe, "-n", str(RANKS), sys.executable]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(RANKS)]
    sizes = [] if RANKS == 4 else ["--set", f"n_workers={RANKS}", "--set", f"cases.4.n_workers={RANKS - 1}"]
    sizes += ["--set", "cases.3.topology.name=complete"] if RANKS < 3 else []  # a ring needs 3
    return [*launcher, "-m", "harness.cli", *map(str, args), "--backend", BACKEND, *sizes]


def repetition(out: Path) -> pd.DataFrame:
    _run(_launch("calibrate", PRESET, "--out", out))
    _run(_launch("run", PRESET, "--out", out / "real", "--force", "--quiet"))
    _run([sys.executable, "-m", "harness.cli", "predict", out / "real", "--calibration", out / "calibration.yaml",
          "--calibration", out / "calibration-insitu.yaml", "--calibration", out / "calibration-trace.yaml",
          "--out", out / "predict"])
    return pd.read_csv(out / "predict" / "predict.csv")


def _drift(table: pd.DataFrame, fit: dict) -> float:
    """Measured sync SGD step of the real launch over that of the calibration job: how much
    the machine's speed changed between the two (1 = not at all)."""
    sync = table[(table.algorithm == "sync_sgd") & (table.calibration == "calibration")]
    return float(sync.measured_step_ms.iloc[0] / 1e3 / fit["insitu"]["measured_step_s"])


def summarise(out: Path) -> pd.DataFrame:
    """Every repetition under ``out`` (``rep*/``), with its load drift and the drift-adjusted
    error ``predicted * drift / measured - 1``: the prediction scaled by how much slower the
    machine was during the real launch than during the calibration (measured by sync SGD,
    the same config in both), which leaves the model's own error."""
    tables = []
    for rep in sorted(out.glob("rep*")):
        t = pd.read_csv(rep / "predict" / "predict.csv")
        drift = _drift(t, json.loads((rep / "calibration.json").read_text()))
        tables.append(t.assign(rep=rep.name, drift=drift, adjusted=(1 + t.error) * drift - 1))
    return pd.concat(tables)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="/tmp/calibration-bench")
    ap.add_argument("--sleep-ms", type=float, default=3.0, help="the injected straggler's sleep per step")
    ap.add_argument("--summarise", action="store_true", help="only summarise the repetitions already in --out")
    ap.add_argument("--ranks", type=int, default=4, help="MPI ranks (async SGD: 1 server + ranks-1 workers); "
                    "the known-straggler check needs 4")
    ap.add_argument("--backend", choices=["mpi", "torch"], default="mpi", help="mpiexec + MPI, or torchrun + gloo")
    a = ap.parse_args()
    global RANKS, BACKEND
    RANKS, BACKEND = a.ranks, a.backend
    out = Path(a.out)
    for r in range(0 if a.summarise else a.reps):
        t = repetition(out / f"rep{r}").assign(rep=r)
        fit = json.loads((out / f"rep{r}" / "calibration.json").read_text())
        print(f"\n# repetition {r}: fitted {fit['fragment']}; in situ {fit.get('insitu')}")
        print(t[["calibration", "algorithm", "measured_step_ms", "predicted_step_ms", "error"]].to_string(index=False))
        print(f"load drift: sync SGD step {_drift(t, fit):.2f}x the calibration job's (same config, a minute apart)")
    df = summarise(out)
    reps = df.rep.nunique()
    g = df.groupby(["calibration", "algorithm"], sort=False)
    summary = g.agg(measured_step_ms=("measured_step_ms", "median"), predicted_step_ms=("predicted_step_ms", "median"),
                    error_median=("error", "median"), error_min=("error", "min"), error_max=("error", "max"),
                    wait_measured=("measured_wait_share", "median"), wait_predicted=("predicted_wait_share", "median"),
                    adjusted_median=("adjusted", "median"), adjusted_min=("adjusted", "min"),
                    adjusted_max=("adjusted", "max"), drift=("drift", "median"))
    print(f"\n# medians over {reps} repetitions (error = predicted / measured - 1; adjusted: for the load drift)")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    if a.summarise or RANKS != 4:
        return
    # a known straggler: worker 2 sleeps a constant time after every gradient
    s = out / "straggler"
    _run(_launch("calibrate", PRESET, "--out", s, "--set",
              f"slowdown={{workers: [2], model: constant, mean_s: {a.sleep_ms / 1e3}}}"))
    info = json.loads((s / "calibration.json").read_text())
    med = info["compute"]["worker_median_s"]
    others = sorted(med[:2] + med[3:])[1]
    print(f"\n# injected: worker 2 sleeps {a.sleep_ms} ms per step")
    print(f"fitted worker_factors {info['fragment']['compute']['worker_factors']}; median step per worker (ms) "
          f"{[round(1e3 * m, 3) for m in med]}; worker 2 minus the others' median: {1e3 * (med[2] - others):.3f} ms")


if __name__ == "__main__":
    main()
