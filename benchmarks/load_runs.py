"""Benchmark: `results.load` on many small runs (goal, issue [6]: 2,000 runs in < 10 s).

    .venv/bin/python benchmarks/load_runs.py [--runs 2000]
"""
import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import results
from results.store import write_table


def fake_run(steps=10, workers=4):
    rows = []
    for s in range(steps + 1):
        for w in [-1, *range(workers)]:
            rows.append({"run_id": "r", "algorithm": "local_sgd", "backend": "simpy", "task": "digits", "partition": "iid",
                         "topology": "none", "n_workers": workers, "seed": 0, "worker": w, "event": "step", "step": s,
                         "round": s, "time_s": 0.1 * s, "compute_s": 0.1 * s, "comm_s": 0.0, "idle_s": 0.0,
                         "bytes_sent": 1e3 * s, "bytes_recv": 1e3 * s, "messages": s, "train_loss": 1 / (s + 1),
                         "test_loss": 1 / (s + 1), "test_acc": s / steps, "consensus_dist": 0.0, "valley_width": 0.0})
    return pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2000)
    n = ap.parse_args().runs
    base = fake_run()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        for i in range(n):
            run = Path(d) / f"r{i}"
            write_table(base.assign(run_id=f"r{i}", seed=i % 5), run / "metrics.parquet")
            (run / "run.json").write_text(json.dumps({"run_id": f"r{i}", "status": "finished",
                                                      "config": {"algorithm": {"name": "local_sgd", "period": 8}, "seed": i % 5}}))
        t_write = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            df = results.load(d)
            times.append(time.perf_counter() - t0)
        assert df["run_id"].nunique() == n
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'runs':>6s} {'rows':>8s} {'write_s':>8s} {'load_s (best of 3)':>20s} {'goal':>6s}")
    print(f"{n:6d} {len(df):8d} {t_write:8.2f} {min(times):20.2f} {'< 10 s':>6s}  median {np.median(times):.2f}")


if __name__ == "__main__":
    main()
