"""Write the golden tables of every built-in method (``tests/test_golden.py`` compares with them).

Run ``python tests/golden/make_golden.py`` only when a change is *meant* to change the numbers
(a new rule, a fixed bug), and say so in the commit: the golden files pin the tables bit for
bit (float32 and float64, SimPy and stacked), so a refactor that changes a single bit fails.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from harness import algorithms  # noqa: E402
from harness.experiment import simulate  # noqa: E402
from tests.helpers import small  # noqa: E402

# per-method settings that give every method rounds to synchronise within 8 steps
SHORT = {"diloco": {"period": 3}, "palsgd": {"period": 3}, "post_local_sgd": {"switch": 3, "period": 2},
         "local_sgd": {"period": 3}, "qsr": {"h_base": 2}, "mgrawa": {"tau": 3}, "lgrawa": {"tau": 3},
         "async_local_sgd": {"period": 2}, "async_easgd": {"tau": 2}}
# variants that exercise state a method threads (AdamW's counter, backup workers)
VARIANTS = {"palsgd-adamw": ("palsgd", {"period": 3, "inner": "adamw", "lr": 0.01}),
            "sync_sgd-backup": ("sync_sgd", {"backup": 1, "momentum": 0.9}),
            "local_sgd-nesterov-wd": ("local_sgd", {"period": 3, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
            "dpsgd-adamw": ("dpsgd", {"inner": "adamw", "lr": 0.01})}


def cases():
    """``(name, backend, dtype, config)`` of every golden run."""
    algorithms.get("sync_sgd")
    names = {n: (n, SHORT.get(n, {})) for n, fn in algorithms.ALGORITHMS.items() if not n.startswith("_")}
    for name, (alg, params) in sorted({**names, **VARIANTS}.items()):
        fn = algorithms.get(alg)
        algo = {"name": alg, **params}
        needs = algorithms.requirements(alg, algo)
        backends = ("simpy",) if fn.has_server else ("simpy", "stacked")
        for dtype in ("float32", "float64"):
            for b in backends:
                cfg = small("sync_sgd", backend=b, steps=8, eval_every=4, algorithm=algo,
                            topology={"name": "ring"} if "gossip" in needs else None,
                            task={"name": "digits", "dtype": dtype, "hidden": [16], "batch_size": 16})
                yield f"{name}-{b}-{dtype}", cfg


def frame(df):
    """The compared part of a table: every column but the run id, in a canonical row order."""
    key = [c for c in ("worker", "step", "event") if c in df.columns]
    df = df.drop(columns=["run_id"]).sort_values(key, kind="stable").reset_index(drop=True)
    hp = [c for c in df.columns if c.startswith("hp.")]  # mixed types across methods: compared as text
    return df.astype({c: str for c in hp})


def digest(x: torch.Tensor) -> str:
    """The final parameters' bits (dtype, shape and every byte)."""
    import hashlib

    x = x.detach().contiguous()
    return f"{x.dtype}{tuple(x.shape)}:" + hashlib.sha256(x.numpy().tobytes()).hexdigest()


def main():
    finals, frames = {}, []
    for name, cfg in cases():
        df, x = simulate(cfg)
        frames.append(frame(df).assign(case=name))
        finals[name] = digest(x)
    pd.concat(frames, ignore_index=True).to_parquet(HERE / "golden.parquet")
    (HERE / "finals.json").write_text(json.dumps(finals, indent=0, sort_keys=True))
    print(f"{len(finals)} golden runs written to {HERE}")


if __name__ == "__main__":
    main()
