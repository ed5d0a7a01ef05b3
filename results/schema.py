"""The one tidy table every backend writes (one row per recorded event per run).

Rows with ``worker >= 0`` describe one worker at one step. Rows with ``worker == -1``
describe the *consensus* model (the average of the workers' parameters) at an
evaluation step: their counters are summed over workers (bytes, messages), their
clock is the latest worker clock (``time_s`` = when the consensus model exists),
and they carry the evaluation metrics (test loss/accuracy, consensus distance).

Counters (``compute_s``, ``comm_s``, ``idle_s``, ``bytes_sent``, ``bytes_recv``,
``messages``) are cumulative since the start of the run, so "the value at the
last row" is the total and curves need no cumsum. Algorithm hyper-parameters are
extra columns named ``hp.<name>``.

``dist_to_mean`` (worker rows, simulators only) is the worker's squared distance to the mean
of all workers' models at that step: the mean over a step's worker rows is the consensus
distance *at every step*, where the consensus rows only have it at evaluation steps (which can
alias against an algorithm's period). Tables written before it existed load with it NaN
(:data:`OPTIONAL`).
"""
from __future__ import annotations

import pandas as pd

CONSENSUS = -1

# name -> pandas dtype. Order is the column order of a written table.
COLUMNS: dict[str, str] = {
    "run_id": "string",
    "algorithm": "string",
    "backend": "string",
    "task": "string",
    "partition": "string",
    "topology": "string",
    "n_workers": "int64",
    "seed": "int64",
    "worker": "int64",
    "event": "string",  # "step" (normal record), "eval" (consensus row), "update" (server), "failed", "recovered"
    "step": "int64",
    "round": "int64",
    "time_s": "float64",
    "compute_s": "float64",
    "comm_s": "float64",
    "idle_s": "float64",
    "bytes_sent": "float64",  # float: ring all-reduce moves 2(n-1)/n of a vector
    "bytes_recv": "float64",
    "messages": "int64",
    "train_loss": "float64",
    "test_loss": "float64",
    "test_acc": "float64",
    "test_ppl": "float64",  # language-model tasks: exp(test_loss), per token
    "consensus_dist": "float64",  # consensus rows: mean_i ||x_i - x_bar||^2 at an evaluation step
    "dist_to_mean": "float64",  # worker rows (simulators): ||x_i - x_bar||^2 at this step; NaN elsewhere
    "valley_width": "float64",  # mean_i ||x_i - x_bar|| (DPPF's measure)
    "staleness": "float64",  # update rows: versions of the server model since the worker's pull
}

HP_PREFIX = "hp."
#: columns added after tables were first written: a table without them loads (as NaN)
OPTIONAL = frozenset({"dist_to_mean"})


def empty() -> pd.DataFrame:
    """An empty frame with the schema's columns and dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with every schema column present (missing ones as NA), schema
    dtypes, schema columns first and ``hp.*`` columns after them.

    Raises ``ValueError`` naming the column if a value cannot take its schema dtype.
    """
    out = df.copy()
    for col, dtype in COLUMNS.items():
        if dtype == "int64" and (col not in out.columns or out[col].isna().any()):
            dtype = "Int64"  # a missing integer value needs pandas' nullable integer
        if col not in out.columns:
            out[col] = pd.Series(float("nan") if dtype == "float64" else pd.NA, index=out.index, dtype=dtype)
        try:
            out[col] = out[col].astype(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"results column {col!r} cannot be read as {dtype}: {e}") from None
    extra = [c for c in out.columns if c not in COLUMNS]
    return out[list(COLUMNS) + extra]
