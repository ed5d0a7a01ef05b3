"""Figures drawn from the tidy table (or its :func:`results.stats.summary`).

Every function takes a frame and returns a ``matplotlib.figure.Figure`` on the Agg canvas,
or ``None`` when the frame holds nothing to draw. Figures are built with ``Figure()`` rather
than pyplot, so no global backend or style is touched and nothing stays open.

Honest by construction (issue [15], helpers in :mod:`results.style`): every setting
(:mod:`results.settings`: every config key that varies, seeds aside) gets its own colour and
line style and exactly one legend entry, named from the varying keys (``dpsgd ·
network.latency_s=0.01``, never a hash); one panel per task (the Pareto plot: per task and
partition); curves are one line per run (seeds of a setting share its style); log axes where
positive values span more than two decades; non-finite values are dropped and diverged runs
marked with an ``x`` where they stopped. ``fig.harness`` lists the legend entries and notes on
what was left out. :func:`save` writes PNG and SVG.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, NullFormatter

from results import stats, style
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


def _lines(d: pd.DataFrame, meta: pd.DataFrame, x: str, y: str, title: str, *, logx=False,
           xlabel=None, ylabel=None, lw=1.8, gaps=False, undrawn=None) -> Figure | None:
    """Line panels (one per task) of ``y`` against ``x``: one line per run in its setting's
    style (``gaps``: NaN ``y`` values break a line instead of being dropped)."""
    d = _finite(d, [x] if gaps else [x, y])
    if logx:
        d = d[d[x] > 0]
    if d.empty:
        return None
    d = d.assign(task=d["run_id"].map(meta["task"]))
    tasks = sorted(d["task"].unique())
    fig, axes = style.figure(len(tasks))
    shown, diverged = set(), False
    for ax, task in zip(axes, tasks):
        sub = d[d["task"] == task]
        for rid, g in sub.groupby("run_id", sort=False):
            r = meta.loc[rid]
            g = g.sort_values(x)
            ax.plot(g[x], g[y], color=r["color"], ls=r["dash"], lw=lw, alpha=0.9)
            shown.add(r["label"])
        diverged |= style.mark_diverged(ax, sub, meta, x, y)
        ax.set(title=f"{title}: {task}" if len(tasks) > 1 else title, xlabel=xlabel or x, ylabel=ylabel or y)
        fig.harness["panels"].append(ax.get_title())
        if logx:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # crowded "2x10^4" labels otherwise
        if style.log_if_wide(ax, sub[y]):
            fig.harness["notes"].append(f"{ax.get_title()}: log y axis (values span more than "
                                        f"{style.DECADES:g} decades)")
    if meta["label"].duplicated().any():
        fig.harness["notes"].append("one line per run: the seeds of a setting share its colour and style")
    style.legend(fig, meta, shown, extra=[style.DIVERGED_HANDLE] if diverged else [], undrawn=undrawn)
    return fig


def _curves(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return df[df["worker"] == CONSENSUS], style.runs(df)


def accuracy_vs_bytes(df: pd.DataFrame) -> Figure | None:
    """Consensus test accuracy against bytes sent per worker (log x), one line per run."""
    d, meta = _curves(df)
    d = d.assign(bytes_per_worker=d["bytes_sent"] / d["n_workers"])
    fig = _lines(d, meta, "bytes_per_worker", "test_acc", "Accuracy vs communication", logx=True,
                 xlabel="bytes sent per worker (cumulative)", ylabel="test accuracy (consensus model)")
    if fig is not None and (d["bytes_sent"] <= 0).any():
        fig.harness["notes"].append("evaluations before any byte was sent (step 0) are not on the log x axis")
    return fig


def accuracy_vs_time(df: pd.DataFrame) -> Figure | None:
    """Consensus test accuracy against the run's clock (simulated or wall), one line per run."""
    d, meta = _curves(df)
    return _lines(d, meta, "time_s", "test_acc", "Accuracy vs time", xlabel=style.time_label(meta),
                  ylabel="test accuracy (consensus model)")


def consensus_distance(df: pd.DataFrame) -> Figure | None:
    """Consensus distance ``mean_i ||x_i - x_bar||^2`` against step, one line per run: at every
    step where the workers' rows carry ``dist_to_mean`` (simulators), else at evaluation steps
    (said in the notes: those can alias against an algorithm's period). Runs at exact
    consensus throughout (0 at every step) are named in the notes, not drawn on a log axis."""
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
    zero = d.groupby("run_id")["consensus_dist"].max().le(0)
    zero_labels = sorted(set(meta.loc[zero[zero].index, "label"]))
    if zero_labels:
        notes.append(f"0 at every step (exact consensus, up to float rounding), not drawn: {', '.join(zero_labels)}")
    d = d[~d["run_id"].isin(set(zero[zero].index))]
    pos = d.loc[d["consensus_dist"] > 0, "consensus_dist"]
    log = len(pos) > 0 and np.log10(pos.max() / pos.min()) > style.DECADES
    if log and (d["consensus_dist"] <= 0).any():
        notes.append("log axis: steps at exact consensus (right after averaging) are gaps in the lines")
        d["consensus_dist"] = d["consensus_dist"].where(d["consensus_dist"] > 0)
    notes.append(f"values below {ROUNDING:g} x the largest are float rounding and count as 0")
    title = "Consensus distance (every step)" if ev.empty else "Consensus distance"
    fig = _lines(d, meta, "step", "consensus_dist", title, xlabel="step", ylabel=DIST_LABEL, lw=1.0, gaps=True,
                 undrawn={lab: "0 at every step, not drawn" for lab in zero_labels})
    if fig is None:
        return None
    style.footnote(fig, notes)
    fig.harness["notes"] += notes
    return fig


def _losses(df: pd.DataFrame) -> pd.DataFrame:
    w = _finite(df[df["worker"] >= 0].dropna(subset=["train_loss"]), ["train_loss"])
    train = w.groupby(["run_id", "step"], sort=False)["train_loss"].mean().rename("loss").reset_index()
    test = _finite(df[df["worker"] == CONSENSUS].dropna(subset=["test_loss"]), ["test_loss"])
    test = test[["run_id", "step", "test_loss"]].rename(columns={"test_loss": "loss"})
    return pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)


def loss_curves(df: pd.DataFrame) -> Figure | None:
    """Train loss (mean over workers) and test loss against step: mean over the seeds of a
    setting with a +-1 standard deviation band. Non-finite values are dropped, diverged runs
    marked where they stopped, and the y axis is logarithmic when values span decades."""
    meta = style.runs(df)
    d = _losses(df)
    if d.empty:
        return None
    d = d.assign(task=d["run_id"].map(meta["task"]), label=d["run_id"].map(meta["label"]))
    panels = [(t, s) for t in sorted(d["task"].unique()) for s in ("train", "test")
              if not d[(d["task"] == t) & (d["split"] == s)].empty]
    fig, axes = style.figure(len(panels), ncols=2)
    first = meta.drop_duplicates("label").set_index("label")
    shown, diverged = set(), False
    for ax, (task, split) in zip(axes, panels):
        sub = d[(d["task"] == task) & (d["split"] == split)]
        for lab, g in sub.groupby("label", sort=False):
            m = g.groupby("step")["loss"].agg(["mean", "std"]).reset_index()
            r = first.loc[lab]
            ax.plot(m["step"], m["mean"], color=r["color"], ls=r["dash"], lw=1.8)
            ax.fill_between(m["step"], m["mean"] - m["std"].fillna(0), m["mean"] + m["std"].fillna(0),
                            color=r["color"], alpha=0.15, lw=0)
            shown.add(lab)
        diverged |= style.mark_diverged(ax, sub.rename(columns={"loss": "y"}), meta, "step", "y")
        ax.set(title=f"{split} loss: {task}", xlabel="step", ylabel=f"{split} loss")
        fig.harness["panels"].append(ax.get_title())
        if style.log_if_wide(ax, sub["loss"]):
            fig.harness["notes"].append(f"{ax.get_title()}: log y axis (values span decades)")
    if meta["label"].duplicated().any():
        fig.harness["notes"].append("lines: mean over the seeds of a setting; bands: +-1 standard deviation")
    style.legend(fig, meta, shown, extra=[style.DIVERGED_HANDLE] if diverged else [])
    return fig


def pareto(summary: pd.DataFrame, x: str = "bytes_per_worker", y: str = "final_test_acc") -> Figure | None:
    """Final accuracy against bytes per worker (log x), one point per run, one panel per
    (task, partition) with that panel's Pareto front (fewest bytes, highest accuracy) as a
    black step line. Fronts never mix partitions or tasks; a panel without a point says so
    and the front has a legend entry only if one is drawn."""
    meta = style.runs(summary, leave_out=("task", "partition"))
    d = summary.assign(task=summary["run_id"].map(meta["task"]), partition=summary["run_id"].map(meta["partition"]))
    if d.empty:
        return None
    facets = sorted({(t, p) for t, p in zip(d["task"], d["partition"])}, key=str)
    fig, axes = style.figure(len(facets), ncols=3)
    shown, fronts = set(), 0
    for ax, (task, part) in zip(axes, facets):
        sub = d[(d["task"] == task) & (d["partition"] == part)]
        pts = _finite(sub, [x, y])
        pts = pts[pts[x] > 0]
        for _, r in pts.iterrows():
            m = meta.loc[r["run_id"]]
            ax.plot([r[x]], [r[y]], marker="o", color=m["color"], ls="", ms=8)
            shown.add(m["label"])
        front = stats.pareto_front(pts, x=x, y=y)
        if len(front):
            ax.step(front[x], front[y], where="post", color="black", lw=1.2)
            ax.plot(front[x], front[y], marker="o", mfc="none", mec="black", ms=13, ls="")
            fronts += 1
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.text(0.5, 0.5, f"no run with a final accuracy\n({len(sub)} run(s): diverged or no evaluation)",
                    transform=ax.transAxes, ha="center", va="center", color="0.3")
            fig.harness["notes"].append(f"{task} / {part}: no run with a final accuracy, no front")
        ax.set(title=f"{task} · partition={part}", xlabel=x.replace("_", " "), ylabel=y.replace("_", " "))
        fig.harness["panels"].append(ax.get_title())
    extra = [(Line2D([], [], color="black", lw=1.2, marker="o", mfc="none", ms=11), "Pareto front (per panel)")]
    meta["marker"] = "o"
    style.legend(fig, meta, shown, line=False, extra=extra if fronts else [])
    return fig


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
        ax.set(title=s, xlabel="worker", ylabel=style.time_label(meta.loc[meta["label"] == s]))
        ax.title.set_fontsize(9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.harness["panels"].append(s)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", frameon=False)
    fig.suptitle("Where each worker's time went: computing, communicating, idle (mean over seeds)")
    return fig


#: name -> (function, which frame it takes: "table" or "summary"), in report order.
FIGURES = {
    "accuracy_vs_bytes": (accuracy_vs_bytes, "table"),
    "accuracy_vs_time": (accuracy_vs_time, "table"),
    "loss_curves": (loss_curves, "table"),
    "pareto_front": (pareto, "summary"),
    "consensus_distance": (consensus_distance, "table"),
    "time_split": (time_split_bars, "table"),
    "timeline": (timeline, "table"),
}
