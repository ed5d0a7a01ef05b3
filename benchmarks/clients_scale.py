"""Many clients on few slots: peak memory and time per round as the number of clients N grows.

    .venv/bin/python benchmarks/clients_scale.py [--rounds 10] [--dim 1000] [--clients 100,1000,10000]

FedAvg on the quadratic task (one data row ``[a_i, c_i]`` of ``2 dim`` floats per client,
float64), 100 slots (clients per round), 1 local epoch; stacked for every N, SimPy for
N <= 1,000 (N = 100 is the reference: every client plays every round). Two methods: ``fedavg`` (no per-client state) and
``fedavg+keyed``, FedAvg plus one keyed row of ``dim`` floats per client (the client's last
local model, as SCAFFOLD's control variates or a client optimizer's state would be kept; stacked
keeps a dense ``[N, dim]`` table, SimPy a row per client played). The quadratic's evaluation (the
global objective over all N rows) is switched off: the rounds are what is measured.

Each row runs in a fresh subprocess so that peaks do not mix, after a warm-up run of 100
clients (imports, first-use caches). Columns, MB: ``base`` the RSS after the warm-up; ``setup`` the
peak RSS while the run is built (``resource.getrusage(RUSAGE_SELF).ru_maxrss``; the quadratic
draws its rows in float64 with temporaries); ``held`` the RSS when the rounds start (freed heap
returned first); ``data`` the task's tensors (the quadratic keeps ``a``, ``c`` and ``[a, c]``:
twice N x dim x 8 B); ``held-base-data`` the rest of what setup keeps (per-client shard index
arrays and streams); ``state`` the keyed rows (keys x dim x 8 B); ``rounds+`` the rounds' own
peak (the high-water mark is reset when they start) over ``held``; ``peak`` the process's;
``s/round`` wall seconds per round. The claim (issue [22]): the rounds' memory grows with N
only through per-client state (``rounds+ - state`` flat in N), what setup keeps only through the
clients' data (``held - base - data`` small), and the time per round does not grow with N.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOTS = 100


def _rss_mb() -> float:
    """Resident set now (``/proc/self/statm``), MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _trim() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``), so RSS is what is live."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Start a new peak (Linux >= 4.0: writing 5 to clear_refs resets the high-water mark that
    ``ru_maxrss`` reads), so the rounds' peak is not the setup's; False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _register_keyed():
    """FedAvg plus a keyed per-client row: after local training a client keeps its local model."""
    from harness.algorithms import register
    from harness.parts import chain, keyed, local_train, part, play, server_average
    from harness.transforms import Optimizer

    remember = part(lambda ctx, s, row: (s, s.x), init=lambda ctx, x: x)

    @register("bench_fedavg_keyed")
    def bench_fedavg_keyed(*, local_epochs: int = 1, lr: float = 0.05):
        return chain(play(), local_train(Optimizer(lr=lr), epochs=local_epochs), keyed(remember, name="last_x"),
                     server_average(weighted=True))


def row(backend: str, n: int, method: str, rounds: int, dim: int) -> dict:
    """One measurement, in this (fresh) process."""
    sys.path.insert(0, str(ROOT))
    import torch

    from harness.config import expand
    from harness.experiment import build

    _register_keyed()
    algo = {"name": "fedavg", "local_epochs": 1} if method == "fedavg" else {"name": "bench_fedavg_keyed"}
    def make(n_clients, steps):
        return expand({"n_workers": SLOTS, "n_clients": n_clients, "steps": steps, "eval_every": steps, "seed": 0,
                       "backend": backend, "algorithm": algo, "compute": {"model": "constant"},
                       "task": {"name": "quadratic", "dim": dim, "batch_size": 1}})[0]

    warm, x = build(make(SLOTS, 1))  # imports and first-use caches land before the baseline
    warm.execute(x)
    del warm, x
    _trim()
    base = _rss_mb()
    t0 = time.perf_counter()
    backend_obj, x0 = build(make(n, rounds))
    setup_s, setup_peak = time.perf_counter() - t0, _peak_mb()
    _trim()  # the setup's freed temporaries go back to the system, so ``held`` is what the run holds
    held = _rss_mb()
    reset = _reset_peak()
    # the quadratic's evaluation is the global objective over all N clients' rows (O(N dim) work and
    # temporaries): off here, so that the rounds are what is measured
    backend_obj.run.recorder.evaluate = lambda p: {"train_loss": 0.0, "test_loss": 0.0, "test_acc": 0.0}
    t1 = time.perf_counter()
    backend_obj.execute(x0)
    loop_s = time.perf_counter() - t1
    loop_peak = _peak_mb()
    from harness.algorithms.blocks import sample_clients

    task, seen = backend_obj.run.task, {}
    for v in vars(task).values():  # the task's data tensors, each storage once (x_test is x_train here)
        if isinstance(v, torch.Tensor):
            seen[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()

    played = len({c for t in range(rounds) for c in sample_clients(0, t, n, SLOTS)})
    keys = 0 if method == "fedavg" else n if backend == "stacked" else played  # RowStore: dense; DictStore: played
    return {"backend": backend, "N": n, "method": method, "base": base, "setup": setup_peak, "held": held,
            "peak": max(setup_peak, loop_peak), "data": sum(seen.values()) / 2**20, "state": keys * dim * 8 / 2**20,
            "rounds+": loop_peak - held if reset else float("nan"), "setup_s": setup_s, "s/round": loop_s / rounds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--clients", default="100,1000,10000", help="comma-separated N")
    ap.add_argument("--simpy-max", type=int, default=1000, help="SimPy rows only for N up to this")
    ap.add_argument("--row", nargs=3, metavar=("BACKEND", "N", "METHOD"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.row:
        print(json.dumps(row(a.row[0], int(a.row[1]), a.row[2], a.rounds, a.dim)))
        return
    ns = [int(v) for v in a.clients.split(",")]
    plan = [(b, n, m) for b in ("stacked", "simpy") for n in ns for m in ("fedavg", "fedavg+keyed")
            if b == "stacked" or n <= a.simpy_max]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}, "
          f"python {platform.python_version()}; quadratic dim {a.dim} float64, {SLOTS} clients per round, "
          f"{a.rounds} rounds, 1 local epoch")
    cols = ["backend", "N", "method", "base", "setup", "held", "data", "held-base-data", "state", "rounds+",
            "rounds+-state", "peak", "setup_s", "s/round"]
    print("  ".join(f"{c:>10s}" if i > 2 else f"{c:<12s}" for i, c in enumerate(cols)))
    for b, n, m in plan:
        p = subprocess.run([sys.executable, __file__, "--rounds", str(a.rounds), "--dim", str(a.dim), "--row", b, str(n), m],
                           capture_output=True, text=True, cwd=ROOT)
        if p.returncode:
            print(f"{b:<12s}  {n:<12d}  {m:<12s}  failed: {p.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["rounds+-state"] = r["rounds+"] - r["state"]
        r["held-base-data"] = r["held"] - r["base"] - r["data"]
        cells = [f"{r['backend']:<12s}", f"{r['N']:<12d}", f"{r['method']:<12s}"]
        cells += [f"{r[c]:10.1f}" for c in cols[3:12]] + [f"{r['setup_s']:10.2f}", f"{r['s/round']:10.4f}"]
        print("  ".join(cells), flush=True)
    print("MB = 2^20 bytes. base/held: RSS after warm-up / after setup; setup, rounds+, peak: ru_maxrss (reset when "
          "the rounds start); data: the task's tensors; state: the keyed rows; rounds+-state should not grow with N")


if __name__ == "__main__":
    main()
