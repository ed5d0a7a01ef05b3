"""Stacked backend: wall time of every built-in lock-step method (interpreter + algorithm overhead).

    .venv/bin/python benchmarks/stacked_methods.py [--steps 200] [--workers 16] [--reps 3]

Digits MLP (hidden 64), float32, ``steps`` steps, ``workers`` workers, evaluation only at
the end: the time is the algorithm's maths, the ops' meaning and the interpreter, not the
evaluation. Median of ``--reps``. Issue [20] records before/after in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import algorithms  # noqa: E402
from harness.config import expand  # noqa: E402
from harness.experiment import simulate  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=None, help="only these (default: every lock-step built-in)")
    a = ap.parse_args()
    algorithms.get("sync_sgd")
    names = a.methods or sorted(n for n, fn in algorithms.ALGORITHMS.items() if not fn.has_server and not n.startswith("_"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"{a.workers} workers, {a.steps} steps, median of {a.reps}")
    print(f"{'method':16s} {'wall_s':>8s}")
    total = 0.0
    for name in names:
        algo = {"name": name}
        topo = {"name": "ring"} if "gossip" in algorithms.requirements(name, algo) else None
        cfg = expand({"n_workers": a.workers, "steps": a.steps, "eval_every": a.steps, "seed": 1, "backend": "stacked",
                      "algorithm": algo, "topology": topo,
                      "task": {"name": "digits", "dtype": "float32", "hidden": [64], "batch_size": 32}})[0]
        ts = []
        for _ in range(a.reps):
            t = time.perf_counter()
            simulate(cfg)
            ts.append(time.perf_counter() - t)
        med = statistics.median(ts)
        total += med
        print(f"{name:16s} {med:8.3f}")
    print(f"{'total':16s} {total:8.3f}")


if __name__ == "__main__":
    main()
