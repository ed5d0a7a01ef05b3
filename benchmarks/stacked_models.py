"""Stacked backend speed on a real model: ResNet-20 on CIFAR-sized images, batch 32.

    .venv/bin/python benchmarks/stacked_models.py                        # n = 1, 8, 32 on CPU
    .venv/bin/python benchmarks/stacked_models.py --n 1 8 --reps 5 --norm group --threads 2
    .venv/bin/python benchmarks/stacked_models.py --device cuda --n 1 8 32 128

Per-worker step time (forward + backward of one minibatch, milliseconds, median of
``--reps``) of ``n`` ResNet-20s, four ways, same maths:

* **stacked, batched**: ``task.loss_and_grad`` on ``[n, d]``: one autograd call through the
  batched form (grouped convolutions, per-worker norms, ``baddbmm``) for all ``n`` models;
* **batched, chunks of K**: the same in calls of K models (``task.stack_chunk``; the CPU
  default is 8);
* **stacked, vmap**: the same call with ``torch.func.vmap(functional_call)``;
* **harness loop**: ``task.loss_and_grad`` on each worker's ``[d]`` row (what SimPy does);
* **plain loop**: ``n`` separate ``nn.Module`` copies, ``loss.backward()`` each, no harness.

Images come from a CIFAR-10-format fixture (``harness.tasks.fixtures``) written to a
temporary directory; timing does not depend on pixel values. Speed-up = plain / batched.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _time(fn, reps, sync):
    fn()  # warm-up
    sync()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench(n, args, root):
    from harness.tasks import Sampler, build_task

    spec = {"name": "cifar10", "root": root, "batch_size": args.batch, "norm": args.norm, "device": args.device,
            "width": args.width, "precision": args.precision}
    task = build_task(spec, n, 0)
    sampler = Sampler(task.shards, args.batch, 0)
    P = torch.stack([task.init_params(k) for k in range(n)])
    idx = sampler.all()
    sync = torch.cuda.synchronize if task.device.type == "cuda" else (lambda: None)
    out = {}
    task.use_batched = True
    task.params = task.params.model_copy(update={"stack_chunk": n})
    out["stacked, batched"] = _time(lambda: task.loss_and_grad(P, idx), args.reps, sync)
    if args.chunk and args.chunk < n:
        task.params = task.params.model_copy(update={"stack_chunk": args.chunk})
        out[f"batched, chunks of {args.chunk}"] = _time(lambda: task.loss_and_grad(P, idx), args.reps, sync)
    if not args.skip_vmap:
        task.use_batched = False
        task.params = task.params.model_copy(update={"stack_chunk": n})
        out["stacked, vmap"] = _time(lambda: task.loss_and_grad(P, idx), args.reps, sync)
    out["harness loop"] = _time(lambda: [task.loss_and_grad(P[i], idx[i], i) for i in range(n)], args.reps, sync)
    models = [task._build(k) for k in range(n)]
    batches = [task.fetch("train", idx[i], augment=True) for i in range(n)]

    def plain():
        for m, (x, y) in zip(models, batches):
            m.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()

    out["plain loop"] = _time(plain, args.reps, sync)
    return {k: 1000 * v / n for k, v in out.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=16, help="ResNet-20 has 16; 4 shows a small model")
    ap.add_argument("--norm", choices=["batch", "group"], default="batch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the harness default is 1)")
    ap.add_argument("--skip-vmap", action="store_true")
    ap.add_argument("--chunk", type=int, default=8, help="also time task.stack_chunk=K (0: no)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from harness.tasks.fixtures import write_cifar10

    with tempfile.TemporaryDirectory() as tmp:
        root = str(write_cifar10(tmp, per_batch=max(64, args.batch)))
        rows = [(n, bench(n, args, root)) for n in args.n]
    cols = list(dict.fromkeys(c for _, r in rows for c in r))
    print(f"ResNet-20 (width {args.width}, {args.norm} norm, {args.precision}), batch {args.batch}, "
          f"{args.device}, {args.threads} thread(s); torch {torch.__version__}; {platform.processor() or platform.machine()}")
    print("per-worker step time, ms (median of", args.reps, "reps)\n")
    print("| n | " + " | ".join(cols) + " | speed-up (plain / batched) |")
    print("|---" * (len(cols) + 2) + "|")
    for n, r in rows:
        print(f"| {n} | " + " | ".join(f"{r[c]:.1f}" if c in r else "-" for c in cols) + f" | {r['plain loop'] / r['stacked, batched']:.2f}x |")


if __name__ == "__main__":
    main()
