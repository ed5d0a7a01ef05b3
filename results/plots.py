"""Figures drawn from the tidy table (or its :func:`results.stats.summary`).

Every function takes a frame and returns a ``matplotlib.figure.Figure`` on the Agg canvas,
or ``None`` when the frame holds nothing to draw. Figures are built with ``Figure()`` rather
than pyplot, so no global backend or style is touched and nothing stays open.

Honest by construction (issue [15], helpers in :mod:`results.style`): every setting
(:mod:`results.settings`: every config key that varies, seeds aside) gets its own colour and
line style and exactly one legend entry, named from the varying keys (``dpsgd ·
network.latency_s=0.01``, never a hash) with the number of seeds behind it (``(n=3)``); one panel
per task (the Pareto plot: per task and partition). Curves are paper-grade (issue [27],
:mod:`results.bands`): the mean over the seeds of a setting with its 95 % Student-t band, never
one line per seed. Log axes where positive values span more than two decades; non-finite values
are dropped and diverged runs marked with an ``x`` where they stopped. ``fig.harness`` holds the
legend entries, ``n`` per setting, a ``caption`` (shown above the figure in the report) and notes
on what was left out. :func:`save` writes PNG and SVG.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from results import stats, style
from results.bands import Panel, band_figure, caption, per_task
from results.lm import language_model
from results.pareto import pareto
from results.staleness import staleness
from results.schema import CONSENSUS
from results.store import atomic_write
from results.timeline import timeline

ROUNDING = 1e-6  # consensus distances below this fraction of the largest one are rounding noise
DIST_LABEL = "consensus distance  mean$_i\\,\\|x_i - \\bar{x}\\|^2$"


def save(fig: Figure, stem: str | os.PathLike, dpi: int = 110) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; return both paths."""
    stem = Path(stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        atomic_write(p, lambda tmp, fmt=p.suffix[1:]: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt))
    return paths


def labels(frame: pd.DataFrame) -> pd.Series:
    """run_id -> setting label (see :mod:`results.settings`)."""
    return style.runs(frame)["label"]


def _finite(d: pd.DataFrame, cols) -> pd.DataFrame:
    ok = np.isfinite(d[list(cols)].apply(pd.to_numeric, errors="coerce").to_numpy(float)).all(axis=1)
    return d[ok]


def _curves(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return df[df["worker"] == CONSENSUS], style.runs(df)


def accuracy_vs_bytes(df: pd.DataFrame) -> Figure | None:
    """Consensus test accuracy against bytes sent per worker (log x): mean over seeds, 95 % band."""
    d, meta = _curves(df)
    d = d.assign(bytes_per_worker=d["bytes_sent"] / d["n_workers"])
    panels = per_task(d, meta, "Accuracy vs communication", "bytes_per_worker", "test_acc", logx=True,
                      xlabel="bytes sent per worker (cumulative)", ylabel="test accuracy (consensus model)")
    fig = band_figure(panels, meta)
    if fig is not None and (d["bytes_sent"] <= 0).any():
        fig.harness["notes"].append("evaluations before any byte was sent (step 0) are not on the log x axis")
    return caption(fig, "Test accuracy of the consensus model (the mean of the workers' models) against the "
                        "bytes each worker sent so far, at every evaluation.")


def accuracy_vs_time(df: pd.DataFrame) -> Figure | None:
    """Consensus test accuracy against the run's clock (simulated or wall): mean over seeds, 95 % band."""
    d, meta = _curves(df)
    fig = band_figure(per_task(d, meta, "Accuracy vs time", "time_s", "test_acc", xlabel=style.time_label(meta),
                               ylabel="test accuracy (consensus model)"), meta)
    return caption(fig, "Test accuracy of the consensus model against the run's clock; x is the mean over the "
                        "seeds of the time at which each evaluation was reached.")


def consensus_distance(df: pd.DataFrame) -> Figure | None:
    """Consensus distance ``mean_i ||x_i - x_bar||^2`` against step, mean over seeds with a band: at
    every step where the workers' rows carry ``dist_to_mean`` (simulators), else at evaluation steps
    (said in the notes: those can alias against an algorithm's period). Settings at exact consensus
    throughout (0 at every step) are named in the legend, not drawn on a log axis."""
    meta = style.runs(df)
    w = df[(df["worker"] >= 0) & (df["event"] == "step")] if "dist_to_mean" in df else df.iloc[:0]
    every = w.dropna(subset=["dist_to_mean"]).groupby(["run_id", "step"], sort=False)["dist_to_mean"].mean()
    every = every.rename("consensus_dist").reset_index()
    ev = df[(df["worker"] == CONSENSUS) & ~df["run_id"].isin(set(every["run_id"]))]
    d = pd.concat([every, ev[["run_id", "step", "consensus_dist"]]], ignore_index=True)
    d = _finite(d, ["consensus_dist"])
    if d.empty:
        return None
    notes = []
    if len(ev):
        notes.append(f"{ev['run_id'].nunique()} run(s) have it at evaluation steps only (no per-step values, "
                     "e.g. real backends): such curves can alias against an algorithm's period")
    # float rounding of the mean leaves ~1e-12 where the models are equal: that is 0, not a value
    floor = ROUNDING * d["consensus_dist"].max()
    d["consensus_dist"] = d["consensus_dist"].where(d["consensus_dist"] >= floor, 0.0)
    label = d["run_id"].map(meta["label"])
    zero = d.groupby(label)["consensus_dist"].max().le(0)
    zero_labels = sorted(zero[zero].index)
    if zero_labels:
        notes.append(f"0 at every step (exact consensus, up to float rounding), not drawn: {', '.join(zero_labels)}")
    d = d[~label.isin(zero_labels)]
    pos = d.loc[d["consensus_dist"] > 0, "consensus_dist"]
    if len(pos) and np.log10(pos.max() / pos.min()) > style.DECADES and (d["consensus_dist"] <= 0).any():
        notes.append("log axis: steps at exact consensus (right after averaging) are gaps in the lines")
    notes.append(f"values below {ROUNDING:g} x the largest are float rounding and count as 0")
    title = "Consensus distance (every step)" if ev.empty else "Consensus distance"
    fig = band_figure(per_task(d, meta, title, "step", "consensus_dist", xlabel="step", ylabel=DIST_LABEL),
                      meta, lw=1.0, undrawn={lab: "0 at every step, not drawn" for lab in zero_labels})
    if fig is None:
        return None
    style.footnote(fig, notes)
    fig.harness["notes"] += notes
    return caption(fig, "How far the workers' models are from their mean: 0 right after an exact average, "
                        "growing between synchronisations.")


def _losses(df: pd.DataFrame) -> pd.DataFrame:
    w = _finite(df[df["worker"] >= 0].dropna(subset=["train_loss"]), ["train_loss"])
    train = w.groupby(["run_id", "step"], sort=False)["train_loss"].mean().rename("loss").reset_index()
    test = _finite(df[df["worker"] == CONSENSUS].dropna(subset=["test_loss"]), ["test_loss"])
    test = test[["run_id", "step", "test_loss"]].rename(columns={"test_loss": "loss"})
    return pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)


def loss_curves(df: pd.DataFrame) -> Figure | None:
    """Train loss (mean over workers) and test loss against step, per task: mean over the seeds of
    a setting with a 95 % band. Non-finite values are dropped, diverged runs marked where they
    stopped, and the y axis is logarithmic when values span decades."""
    meta = style.runs(df)
    d = _losses(df)
    if d.empty:
        return None
    task = d["run_id"].map(meta["task"])
    panels = [Panel(f"{split} loss: {t}", d[(task == t) & (d["split"] == split)], "step", "loss",
                    xlabel="step", ylabel=f"{split} loss")
              for t in sorted(task.unique(), key=str) for split in ("train", "test")]
    return caption(band_figure(panels, meta, ncols=2),
                   "Training loss (the workers' minibatch losses, averaged over workers) and test loss of the "
                   "consensus model against step.")


def time_split_bars(df: pd.DataFrame, max_panels: int = 12) -> Figure | None:
    """Per worker: compute / comm / idle seconds as stacked bars, mean over the seeds of a
    setting, one panel per setting (baselines first; at most ``max_panels``, the others
    named in the notes)."""
    split = stats.time_split(df)
    if split.empty or split[["compute_s", "comm_s", "idle_s"]].isna().all().all():
        return None
    meta = style.runs(df, leave_out=())
    split["setting"] = split["run_id"].map(meta["label"])
    mean = split.groupby(["setting", "worker"])[["compute_s", "comm_s", "idle_s"]].mean().reset_index()
    seeds = split.groupby("setting")["run_id"].nunique()
    every = style.order(mean["setting"])
    shown = every[:max_panels]
    fig, axes = style.figure(len(shown), ncols=3, w=5.0, h=3.6)
    if len(every) > len(shown):
        fig.harness["notes"].append(f"not shown (more than {max_panels} settings): {', '.join(every[max_panels:])}")
    colors = sns.color_palette("deep", 3)
    for ax, s in zip(axes, shown):
        sub = mean[mean["setting"] == s].sort_values("worker")
        bottom = 0
        for col, c in zip(("compute_s", "comm_s", "idle_s"), colors):
            vals = sub[col].fillna(0).to_numpy()
            ax.bar(sub["worker"], vals, bottom=bottom, color=c, label=col.removesuffix("_s"), width=0.85)
            bottom = bottom + vals
        ax.set(title=f"{s} (n={seeds[s]})", xlabel="worker", ylabel=style.time_label(meta.loc[meta["label"] == s]))
        ax.title.set_fontsize(9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.harness["panels"].append(s)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False)
    fig.suptitle("Where each worker's time went: computing, communicating, idle (mean over seeds)")
    fig.harness["n"] = {k: int(seeds[k]) for k in shown}
    return caption(fig, "Seconds each worker spent computing, communicating and waiting over the whole run, "
                        "the mean over the n seeds of each setting.")


#: name -> (function, which frame it takes: "table" or "summary"), in report order. A function
#: returns None when the runs hold nothing for it (``language_model`` without text runs,
#: ``staleness`` without asynchronous updates): that figure is then absent from the report.
FIGURES = {
    "accuracy_vs_bytes": (accuracy_vs_bytes, "table"),
    "accuracy_vs_time": (accuracy_vs_time, "table"),
    "language_model": (language_model, "table"),
    "loss_curves": (loss_curves, "table"),
    "pareto_front": (pareto, "summary"),
    "staleness": (staleness, "table"),
    "consensus_distance": (consensus_distance, "table"),
    "time_split": (time_split_bars, "table"),
    "timeline": (timeline, "table"),
}
