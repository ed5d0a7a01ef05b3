"""What checkpoints cost (issue [27]): CPU seconds of a run with and without saving, per save, and
the file's size. A save pickles the whole backend (harness.checkpoint), so its cost grows with the
rows so far and the models; printed as a table.

    .venv/bin/python benchmarks/checkpoint_cost.py [--steps 2000] [--every 50 10]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def one(backend: str, steps: int, every: int, workers: int) -> tuple[float, int, int]:
    from harness import checkpoint
    from harness.config import expand
    from harness.experiment import _execute

    cfg = expand({"algorithm": {"name": "local_sgd", "period": 8}, "n_workers": workers, "steps": steps,
                  "eval_every": steps // 4, "backend": backend, "task": {"name": "digits", "hidden": [64]},
                  "checkpoint": {"every_steps": every, "every_s": 0}})[0]
    with tempfile.TemporaryDirectory() as d:
        ck = Path(d) / checkpoint.FILE if every else None
        saves, size = [0], [0]
        if ck is not None:
            write = checkpoint.write

            def counting(path, payload):
                saves[0] += 1
                write(path, payload)
                size[0] = path.stat().st_size
            checkpoint.write = counting
        t = time.process_time()
        try:
            _execute(cfg, ckpt=ck)
        finally:
            if ck is not None:
                checkpoint.write = write
        return time.process_time() - t, saves[0], size[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--every", type=int, nargs="+", default=[50, 10])
    a = ap.parse_args()
    print(f"local_sgd (H=8), digits MLP 64 (4,810 parameters), {a.workers} workers, {a.steps} steps; CPU seconds")
    print(f"{'backend':8s} {'every':>6s} {'saves':>6s} {'cpu_s':>8s} {'ms/save':>8s} {'file':>9s}")
    for backend in ("stacked", "simpy"):
        base, _, _ = one(backend, a.steps, 0, a.workers)
        print(f"{backend:8s} {'off':>6s} {0:6d} {base:8.2f} {'':>8s} {'':>9s}")
        for every in a.every:
            cpu, saves, size = one(backend, a.steps, every, a.workers)
            print(f"{backend:8s} {every:6d} {saves:6d} {cpu:8.2f} {1000 * (cpu - base) / max(saves, 1):8.1f} "
                  f"{size / 1e6:7.2f} MB")


if __name__ == "__main__":
    main()
