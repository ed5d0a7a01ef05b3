"""Issue [15]: is ``harness sweep --jobs 2`` faster than a serial ``harness run``?

Runs one small grid (the demo's 3 methods x 2 partitions x 2 seeds = 12 SimPy runs, 16
workers, 200 steps; ~30-60 s serial on 2 cores) three ways, each into a fresh directory, and
prints a table of wall times (whole commands, Python start-up and the closing summary
included):

* ``harness run`` (serial, one process);
* ``harness sweep --jobs 2`` (two warm worker processes);
* the old sweep: one ``harness run --only i`` process per grid point, 2 at a time.

    .venv/bin/python benchmarks/sweep_speed.py [--reps 2] [--jobs 2] [--steps 200]

Goal: the sweep is faster than the serial run. The machine's other load is printed with the
table (``os.getloadavg``): on a shared 2-core VM the numbers move a lot between repetitions.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HARNESS = [sys.executable, "-m", "harness.cli"]


def grid(steps: int) -> dict:
    raw = yaml.safe_load((ROOT / "presets" / "demo.yaml").read_text())
    raw.update(name="sweep-speed", steps=steps, eval_every=max(steps // 10, 1), backend="simpy")
    raw["grid"] = {**raw["grid"], "seed": [0, 1]}
    return raw


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")


def old_sweep(config: Path, out: Path, n: int, jobs: int) -> None:
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda i: run([*HARNESS, "run", str(config), "--out", str(out), "--only", str(i), "--quiet"]),
                      range(n)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--no-old", action="store_true", help="skip the old one-process-per-run sweep")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "grid.yaml"
        config.write_text(yaml.safe_dump(grid(a.steps)))
        n = 12
        rows = []
        for rep in range(a.reps):
            load0 = os.getloadavg()[0]
            o = tmp / f"r{rep}"
            serial = timed(lambda: run([*HARNESS, "run", str(config), "--out", str(o / "run"), "--quiet"]))
            sweep = timed(lambda: run([*HARNESS, "sweep", str(config), "--out", str(o / "sweep"), "--jobs",
                                       str(a.jobs), "--quiet"]))
            old = None if a.no_old else timed(lambda: old_sweep(config, o / "old", n, a.jobs))
            rows.append((rep + 1, serial, sweep, old, load0, os.getloadavg()[0]))
            print(f"rep {rep + 1}: run {serial:.1f} s, sweep {sweep:.1f} s, old sweep "
                  f"{'-' if old is None else f'{old:.1f} s'}", file=sys.stderr, flush=True)
    print(f"\n{n} runs (demo grid x 2 seeds, SimPy, {a.steps} steps), --jobs {a.jobs}, {os.cpu_count()} cores\n")
    print(f"| rep | harness run (serial) | harness sweep --jobs {a.jobs} | old sweep (a process per run) "
          "| sweep / run | load avg before, after |")
    print("|---|---|---|---|---|---|")
    for rep, serial, sweep, old, l0, l1 in rows:
        print(f"| {rep} | {serial:.1f} s | {sweep:.1f} s | {'-' if old is None else f'{old:.1f} s'} "
              f"| {sweep / serial:.2f} | {l0:.1f}, {l1:.1f} |")


if __name__ == "__main__":
    main()
