"""Staleness of asynchronous updates, per method (issue [22]).

An asynchronous server (FedAsync, FedBuff, async SGD, ...) applies a worker's update computed on
a model some versions old; the table's ``update`` rows carry that ``staleness``. How stale the
updates are explains much of an asynchronous method's accuracy and stability, so the report
shows its distribution: one empirical CDF per setting (``P(staleness <= s)``, all updates of all
its seeds pooled, n seeds in the legend), one panel per task, and per setting the number of
updates, the median, mean, 95th percentile and maximum in the notes. Settings without update
rows (synchronous methods) are named in the legend as such. No update rows at all: no figure.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from results import style
from results.bands import caption

WIDE = 30  # staleness above this: a symmetric-log x axis


def updates(df: pd.DataFrame) -> pd.DataFrame:
    """The ``update`` rows with a finite ``staleness``: ``run_id, staleness``."""
    if "staleness" not in df or "event" not in df:
        return pd.DataFrame(columns=["run_id", "staleness"])
    u = df[df["event"] == "update"]
    s = pd.to_numeric(u["staleness"], errors="coerce")
    ok = np.isfinite(s.to_numpy(float))
    return pd.DataFrame({"run_id": u["run_id"][ok].to_numpy(), "staleness": s[ok].to_numpy(float)})


def describe(values: np.ndarray) -> str:
    """``6,000 updates; median 4, mean 4.61, 95th percentile 11, max 30``."""
    v = np.asarray(values, float)
    return (f"{len(v):,} updates; median {np.median(v):g}, mean {v.mean():.3g}, "
            f"95th percentile {np.percentile(v, 95):g}, max {v.max():g}")


def staleness(df: pd.DataFrame) -> Figure | None:
    """Empirical CDF of the staleness of applied updates per setting (seeds pooled)."""
    u = updates(df)
    if u.empty:
        return None
    meta = style.runs(df)
    u["label"], u["task"] = u["run_id"].map(meta["label"]), u["run_id"].map(meta["task"])
    tasks = sorted(u["task"].unique(), key=str)
    fig, axes = style.figure(len(tasks))
    first = meta.drop_duplicates("label").set_index("label")
    n = {}
    for ax, task in zip(axes, tasks):
        sub = u[u["task"] == task]
        for lab in style.order(sub["label"]):
            g = sub[sub["label"] == lab]
            v = np.sort(g["staleness"].to_numpy())
            r = first.loc[lab]
            ax.step(np.r_[v[0], v], np.r_[0.0, np.arange(1, len(v) + 1) / len(v)], where="post",
                    color=r["color"], ls=r["dash"], lw=1.8)
            n[lab] = int(g["run_id"].nunique())
            fig.harness["notes"].append(f"{lab}: {describe(v)} (from {n[lab]} seed(s))")
        title = f"Staleness of applied updates: {task}" if len(tasks) > 1 else "Staleness of applied updates"
        ax.set(title=title, xlabel="staleness (server versions since the worker's pull)",
               ylabel="fraction of updates with staleness ≤ s", ylim=(0, 1.02))
        if sub["staleness"].max() > WIDE:  # one method's long tail would squash the others into x = 0..5
            ax.set_xscale("symlog", linthresh=1, linscale=0.5)
            ax.set_xlim(left=0)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 1, 10, 100 (not 10^0)
            fig.harness["notes"].append(f"{title}: symmetric-log x axis (linear from 0 to 1, logarithmic above)")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.harness["panels"].append(title)
    sync = {lab: "no asynchronous updates" for lab in set(meta["label"]) - set(n)}
    style.legend(fig, meta, set(n), undrawn=sync, n=n)
    fig.harness["n"] = {lab: n[lab] for lab in style.order(n)}
    return caption(fig, "Staleness distribution per method: the empirical CDF of how many server versions old the "
                        "model was when each update was applied, all updates of all seeds pooled.")
