"""Statistics over the tidy table: pure ``DataFrame -> DataFrame`` functions.

Conventions (see :mod:`results.schema`): consensus rows (``worker == -1``) carry the
evaluation and counters summed over workers; counters are cumulative, so the last row
is the total. "Last" and "first" follow the run's clock: rows are ordered by
``(time_s, step)`` within a run, ties kept in table order. Grouping keeps missing keys
(``topology`` is null for all-reduce algorithms), i.e. ``dropna=False`` throughout.
A run that diverged (status ``diverged``, or a ``diverged`` event row) has no final accuracy:
:func:`summary` gives it NaN there and ``diverged=True``, so means over seeds leave it out
and the report says "diverged" instead.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from results import settings
from results.errors import ResultsError
from results.schema import CONSENSUS, HP_PREFIX

#: Columns that identify a run's setting in :func:`summary` (besides hp.* and cfg.*).
IDENTITY = ["run_id", "algorithm", "backend", "task", "partition", "topology", "n_workers", "seed"]
#: Settings matched between a run and its baseline in :func:`reduction_vs`.
MATCH_ON = ("task", "partition", "n_workers", "backend")


def _list(by: str | Iterable[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def _ordered(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return df.sort_values(keys + ["time_s", "step"], kind="stable", na_position="last")


def consensus(df: pd.DataFrame) -> pd.DataFrame:
    """The consensus/evaluation rows, ordered by run then clock."""
    return _ordered(df[df["worker"] == CONSENSUS], ["run_id"])


def final_metrics(df: pd.DataFrame, by: str | Iterable[str] = ("run_id",)) -> pd.DataFrame:
    """The last consensus row of each group ``by`` (default: of each run), all columns kept."""
    by = _list(by)
    rows = _ordered(df[df["worker"] == CONSENSUS], by)
    return rows.groupby(by, sort=False, dropna=False).tail(1).reset_index(drop=True)


def summary(df: pd.DataFrame, target_acc: float = 0.9) -> pd.DataFrame:
    """One row per run: its setting, final metrics, totals and time/bytes to ``target_acc``.

    Columns: ``run_id, algorithm, backend, task, partition, topology, n_workers, seed``,
    ``status`` (if loaded), ``diverged`` and ``diverged_step`` (the first ``diverged`` row's
    step; a diverged run's final accuracy and loss are NaN: its model is not a result),
    ``final_test_acc, final_test_loss, final_test_ppl`` (language models: the last ``test_ppl``,
    ``exp(test_loss)`` per token; NaN for other tasks), ``total_bytes`` (bytes_sent
    of the last consensus row, summed over workers), ``bytes_per_worker, total_messages,
    time_s`` (clock of the last consensus row: simulated or wall, see ``backend``),
    ``rounds, target_acc, reached, time_to_target_s, bytes_to_target, rounds_to_target``,
    then the run's ``hp.*`` and ``cfg.*`` columns. "To target" is *interpolated linearly
    between evaluations*: with the first evaluation at or above ``target_acc`` at ``(t1, a1)``
    and the one before it at ``(t0, a0)``, ``t = t0 + (target - a0) / (a1 - a0) * (t1 - t0)``,
    and the same fraction for bytes and rounds (so ``rounds_to_target`` may be fractional;
    a run at or above target at its first evaluation takes that evaluation's values).
    Snapping to the first evaluation instead would give every run that crosses between two
    evaluations the same time. A run that never gets there has ``reached=False`` and NaN
    to-target values. A run without consensus rows keeps its row with NaN metrics.
    """
    extra = [c for c in df.columns if c == "status" or c.startswith((HP_PREFIX, "cfg."))]
    first = df.groupby("run_id", sort=False).head(1)[[*IDENTITY, *extra]]
    last = final_metrics(df)[["run_id", "test_acc", "test_loss", "test_ppl", "bytes_sent", "messages", "time_s", "round"]]
    last = last.rename(columns={"test_acc": "final_test_acc", "test_loss": "final_test_loss", "test_ppl": "final_test_ppl",
                                "bytes_sent": "total_bytes", "messages": "total_messages", "round": "rounds"})
    hit = to_target(df, target_acc)
    out = first.merge(last, on="run_id", how="left").merge(hit, on="run_id", how="left")
    out["reached"] = out["reached"].astype("boolean").fillna(False).astype(bool)
    out["bytes_per_worker"] = out["total_bytes"] / out["n_workers"]
    out["target_acc"] = float(target_acc)
    ev = df[df["event"] == "diverged"].groupby("run_id", sort=False)["step"].min()
    out["diverged_step"] = out["run_id"].map(ev).astype("Int64")
    out["diverged"] = out["diverged_step"].notna().to_numpy(bool)
    if "status" in out:
        out["diverged"] |= out["status"].astype(object).fillna("").eq("diverged").to_numpy(bool)
    out.loc[out["diverged"], ["final_test_acc", "final_test_loss", "final_test_ppl"]] = np.nan
    cols = [*IDENTITY, *(["status"] if "status" in extra else []), "diverged", "diverged_step",
            "final_test_acc", "final_test_loss", "final_test_ppl",
            "total_bytes", "bytes_per_worker", "total_messages", "time_s", "rounds", "target_acc",
            "reached", "time_to_target_s", "bytes_to_target", "rounds_to_target"]
    return out[cols + [c for c in extra if c != "status"]].reset_index(drop=True)


def to_target(df: pd.DataFrame, target_acc: float) -> pd.DataFrame:
    """Per run that reaches ``target_acc``: ``run_id, reached, time_to_target_s,
    bytes_to_target, rounds_to_target``, interpolated linearly between the last evaluation
    below the target and the first at or above it (see :func:`summary`)."""
    cons = consensus(df).dropna(subset=["test_acc"]).reset_index(drop=True)
    cols = {"time_s": "time_to_target_s", "bytes_sent": "bytes_to_target", "round": "rounds_to_target"}
    prev = cons.groupby("run_id", sort=False)[["test_acc", *cols]].shift(1)
    hit = cons[cons["test_acc"] >= target_acc].groupby("run_id", sort=False).head(1)
    before = prev.loc[hit.index]
    num = lambda s: s.to_numpy(dtype=float, na_value=np.nan)  # noqa: E731 (Int64 rounds, NA first rows)
    a0, a1 = num(before["test_acc"]), num(hit["test_acc"])
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(np.isnan(a0), 1.0, (target_acc - a0) / (a1 - a0))
    out = pd.DataFrame({"run_id": hit["run_id"].to_numpy(), "reached": True})
    for c, name in cols.items():
        x1 = num(hit[c])
        x0 = np.where(np.isnan(a0), x1, num(before[c]))
        out[name] = x0 + frac * (x1 - x0)
    return out


def mean_ci(df: pd.DataFrame, value: str, by: str | Iterable[str], level: float = 0.95) -> pd.DataFrame:
    """Mean of ``value`` per group with a Student-t confidence interval (over seeds).

    Returns ``by`` columns plus ``n`` (non-NaN values; NaNs such as "never reached" are
    left out), ``mean, std`` (ddof=1), ``sem, ci_low, ci_high, ci_half``. With ``n < 2``
    the interval is NaN.
    """
    from scipy import stats as st  # scipy comes with scikit-learn; imported lazily (slow)

    by = _list(by)
    g = df.groupby(by, sort=True, dropna=False)[value]
    out = g.agg(n="count", mean="mean", std="std").reset_index()
    n = out["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["sem"] = out["std"] / np.sqrt(n)
        t = st.t.ppf((1 + level) / 2, np.where(n > 1, n - 1, np.nan))
    out["ci_half"] = t * out["sem"]
    out["ci_low"] = out["mean"] - out["ci_half"]
    out["ci_high"] = out["mean"] + out["ci_half"]
    return out[[*by, "n", "mean", "std", "sem", "ci_low", "ci_high", "ci_half"]]


def reduction_vs(df: pd.DataFrame, baseline: str = "sync_sgd", value: str = "total_bytes",
                 on: Iterable[str] | None = None) -> pd.DataFrame:
    """``df`` (e.g. a :func:`summary`) with ``value`` compared to a baseline algorithm.

    The baseline value of a row is the mean of ``value`` over the ``baseline`` algorithm's
    rows with the same ``on`` settings (default: those of ``task, partition, n_workers,
    backend`` present; seeds are averaged). Adds ``<value>_baseline``, ``<value>_ratio``
    (value / baseline) and ``<value>_reduction`` (baseline / value: 8.0 means 8x less);
    NaN where no baseline matches. Raises ``ResultsError`` if the baseline is absent.
    """
    on = [c for c in MATCH_ON if c in df.columns] if on is None else _list(on)
    base = df[df["algorithm"] == baseline]
    if base.empty:
        algos = sorted(df["algorithm"].dropna().unique())
        raise ResultsError(f"baseline algorithm {baseline!r} not in the frame (algorithms: {algos})")
    name = f"{value}_baseline"
    if on:
        ref = base.groupby(on, sort=False, dropna=False)[value].mean().rename(name).reset_index()
        out = df.merge(ref, on=on, how="left")
        out.index = df.index
    else:
        out = df.assign(**{name: base[value].mean()})
    out[f"{value}_ratio"] = out[value] / out[name]
    out[f"{value}_reduction"] = out[name] / out[value]
    return out


def pareto_front(df: pd.DataFrame, x: str = "total_bytes", y: str = "final_test_acc") -> pd.DataFrame:
    """Rows not dominated when minimising ``x`` and maximising ``y``, sorted by ``x``.

    A row is dominated if another has ``x <=`` and ``y >=`` with one strict; equal
    points are all kept. Rows with NaN ``x`` or ``y`` are left out.
    """
    d = df.dropna(subset=[x, y])
    xs, ys = d[x].to_numpy(float), d[y].to_numpy(float)
    le, ge = xs[None, :] <= xs[:, None], ys[None, :] >= ys[:, None]
    strict = (xs[None, :] < xs[:, None]) | (ys[None, :] > ys[:, None])
    dominated = (le & ge & strict).any(axis=1)  # row i is dominated by some column j
    return d[~dominated].sort_values([x, y], ascending=[True, False], kind="stable")


def time_split(df: pd.DataFrame) -> pd.DataFrame:
    """Per run and worker: total ``compute_s, comm_s, idle_s`` (last worker row), their
    sum ``total_s`` and the fractions ``compute_frac, comm_frac, idle_frac``."""
    rows = _ordered(df[df["worker"] >= 0], ["run_id", "worker"])
    last = rows.groupby(["run_id", "worker"], sort=False).tail(1)
    keep = [c for c in IDENTITY if c != "run_id"]
    out = last[["run_id", *keep, "worker", "compute_s", "comm_s", "idle_s"]].reset_index(drop=True)
    out["total_s"] = out[["compute_s", "comm_s", "idle_s"]].sum(axis=1, min_count=1)
    for c in ("compute", "comm", "idle"):
        out[f"{c}_frac"] = out[f"{c}_s"] / out["total_s"]
    return out


def setting_columns(s: pd.DataFrame, always: Iterable[str] = ("algorithm", "partition")) -> list[str]:
    """Columns of a :func:`summary` (or table) that tell settings apart: every identity,
    ``hp.*`` and ``cfg.*`` column that varies across the runs except the seed, plus
    ``always`` (rules: :mod:`results.settings`)."""
    return settings.varying(s, always)


#: per-run columns of a :func:`summary` that :func:`aggregate` averages over seeds with an interval
METRICS = ("final_test_acc", "final_test_loss", "final_test_ppl", "total_bytes", "bytes_per_worker", "time_s",
           "time_to_target_s", "bytes_to_target", "rounds_to_target")


def aggregate(s: pd.DataFrame, by: Iterable[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Mean over seeds of a :func:`summary`, one row per setting (default
    :func:`setting_columns`: seeds are the only thing averaged): ``runs, reached`` (count),
    then for each of :data:`METRICS` present its mean over the seeds that have a value, ``<m>_ci``
    (half-width of the ``level`` Student-t interval over them; NaN for one seed) and ``<m>_n``
    (how many: diverged runs have no final accuracy, runs that never reached the target no time
    to it); counts of ``diverged`` runs and of ``damaged`` ones (unreadable run.json: included,
    but flagged). A time to target with ``n=2`` of 3 runs is the mean over the 2 that reached it."""
    by = setting_columns(s) if by is None else _list(by)
    s = s.assign(diverged=s["diverged"] if "diverged" in s else False,
                 damaged=s["status"].astype(object).fillna("").eq("damaged") if "status" in s else False)
    g = s.groupby(by, sort=True, dropna=False)
    out = g.agg(runs=("run_id", "count"), reached=("reached", "sum"),
                diverged=("diverged", "sum"), damaged=("damaged", "sum")).reset_index()
    for m in (m for m in METRICS if m in s.columns):
        ci = mean_ci(s.assign(**{m: pd.to_numeric(s[m], errors="coerce")}), m, by, level)
        ci = ci[[*by, "n", "mean", "ci_half"]].rename(columns={"mean": m, "ci_half": f"{m}_ci", "n": f"{m}_n"})
        out = out.merge(ci, on=by, how="left")
    first = [*by, "runs", "reached", "final_test_acc", "final_test_acc_ci", "final_test_acc_n"]
    first = [c for c in first if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]
