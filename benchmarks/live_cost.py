"""What live rows cost (issue [27]): a digits run written with live flushing on and off.

The demo's sync SGD run (16 workers, 400 steps, eval every 25) on SimPy and stacked, run to a
directory as ``harness run`` does, with ``live.every_s`` 0 (off), 10 (the default: deliveries at
evaluation rows, at most one per 50x the last one's duration) and 0.05 (as often as the cost
rule allows), and with TensorBoard added. Rounds interleave the settings; the median of the
rounds is reported, with the time spent inside the deliveries themselves (``Live.flush``, summed:
a number that other load on the machine disturbs less than a difference of wall times) and
their count. Usage: ``python benchmarks/live_cost.py [rounds]``.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import expand  # noqa: E402
from harness.experiment import run_to_dir  # noqa: E402
from harness import live as live_mod  # noqa: E402

SPENT = {"s": 0.0, "n": 0}
_flush = live_mod.Live.flush


def timed_flush(self, rows, skip=()):
    t0 = time.perf_counter()
    _flush(self, rows, skip)
    SPENT["s"] += time.perf_counter() - t0
    SPENT["n"] += bool(rows)


live_mod.Live.flush = timed_flush

SETTINGS = {"off": {"every_s": 0}, "default (10 s)": {}, "every 0.05 s": {"every_s": 0.05},
            "default + tensorboard": {"callbacks": ["tensorboard"]}}


def config(backend: str, live: dict):
    return expand({"algorithm": {"name": "sync_sgd", "lr": 0.1}, "n_workers": 16, "steps": 400, "eval_every": 25,
                   "backend": backend, "live": live})[0]


def main(rounds: int = 5) -> None:
    print(f"| backend | {' | '.join(SETTINGS)} |\n|---|{'---|' * len(SETTINGS)}")
    for backend in ("simpy", "stacked"):
        times: dict[str, list[float]] = {k: [] for k in SETTINGS}
        spent: dict[str, list[tuple[float, int]]] = {k: [] for k in SETTINGS}
        run_to_dir(config(backend, {"every_s": 0}), Path(tempfile.mkdtemp()))  # warm-up: imports, data
        for _ in range(rounds):
            for name, live in SETTINGS.items():
                out = Path(tempfile.mkdtemp())
                SPENT.update(s=0.0, n=0)
                t0 = time.perf_counter()
                run_to_dir(config(backend, live), out)
                times[name].append(time.perf_counter() - t0)
                spent[name].append((SPENT["s"], SPENT["n"]))
        base = statistics.median(times["off"])
        cells = [f"{statistics.median(v):.2f} s ({(statistics.median(v) / base - 1) * 100:+.1f} %); in deliveries "
                 f"{statistics.median(s for s, _ in spent[k]) * 1e3:.0f} ms, {statistics.median(n for _, n in spent[k]):.0f}x"
                 for k, v in times.items()]
        print(f"| {backend} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
