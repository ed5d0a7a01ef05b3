"""Benchmark: wall time of the default demo (18 runs: 3 methods x 2 partitions x 3 seeds, 16 workers,
400 steps) per backend.

Goal (issue [1]): `make demo` under 3 minutes on 2 cores. Prints a table; record results in
docs/benchmarks.md with the machine.

    .venv/bin/python benchmarks/demo_time.py [--steps 400]
"""
import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from harness import config
from harness.experiment import simulate

PRESET = Path(__file__).resolve().parents[1] / "presets" / "demo.yaml"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args()
    sets = [f"steps={a.steps}"] if a.steps else []
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'backend':8s} {'run':40s} {'wall_s':>8s} {'sim_s':>8s} {'acc':>6s}")
    totals = {}
    for backend in ("simpy", "stacked"):
        total = 0.0
        runs = config.load(PRESET, sets + [f"backend={backend}"])
        for cfg in runs:
            t0 = time.perf_counter()
            df, _ = simulate(cfg)
            dt = time.perf_counter() - t0
            total += dt
            last = df[df.worker == -1].iloc[-1]
            print(f"{backend:8s} {cfg.run_id[:40]:40s} {dt:8.2f} {last.time_s:8.2f} {last.test_acc:6.3f}")
        totals[backend] = total
    for b, t in totals.items():
        print(f"{b:8s} {f'TOTAL ({len(runs)} runs, excluding start-up)':40s} {t:8.2f}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
