"""Seaborn figures drawn from the tidy table (or its :func:`results.stats.summary`).

Every function takes a frame and returns a ``matplotlib.figure.Figure`` on the Agg
canvas, or ``None`` when the frame holds nothing to draw (e.g. no consensus distance
recorded). Figures are built with ``Figure()`` rather than pyplot, so no global backend
or style is touched and nothing stays open. Colour (hue) is the algorithm, labelled
with the hyper-parameters that vary within it (``local_sgd (period=8)``); line style
is the data partition when there is more than one; one panel per task when there are
several. Curves are one line per run unless stated. :func:`save` writes PNG and SVG.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from results import stats
from results.schema import CONSENSUS, HP_PREFIX
from results.timeline import timeline

_VARY = ["topology", "n_workers", "backend"]


def save(fig: Figure, stem: str | os.PathLike, dpi: int = 110) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
    return paths


def _fmt(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def labels(frame: pd.DataFrame) -> pd.Series:
    """run_id -> "algorithm (k=v, ...)" naming the settings that vary within the algorithm."""
    runs = frame.groupby("run_id", sort=False).head(1)
    vary = [c for c in [*_VARY, *(c for c in runs.columns if c.startswith(HP_PREFIX))] if c in runs]
    out = {}
    for algo, g in runs.groupby("algorithm", sort=False, dropna=False):
        cols = [c for c in vary if g[c].nunique(dropna=False) > 1]
        for _, r in g.iterrows():
            kv = [f"{c.removeprefix(HP_PREFIX)}={_fmt(r[c])}" for c in cols if not pd.isna(r[c])]
            out[r["run_id"]] = f"{algo} ({', '.join(kv)})" if kv else str(algo)
    return pd.Series(out, name="label")


def _prepare(frame: pd.DataFrame, lab: pd.Series) -> pd.DataFrame:
    d = frame.assign(algorithm=frame["run_id"].map(lab))  # the legend's title stays "algorithm"
    for c in ("partition", "task"):
        d[c] = d[c].astype(object).where(d[c].notna(), "n/a").astype(str)
    return d


def _palette(lab: pd.Series) -> dict:
    names = sorted(set(lab))
    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))


def _figure(n: int, ncols: int | None = None, w: float = 6.0, h: float = 4.2):
    ncols = min(n, ncols or n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols + 2.5, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend(ax) -> None:
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)


def _lines(d: pd.DataFrame, x: str, y: str, title: str, pal: dict, *, logx=False, logy=False,
           per_run=True, xlabel=None, ylabel=None) -> Figure | None:
    """Line panels (one per task) of ``y`` against ``x`` on prepared consensus rows."""
    d = d.dropna(subset=[x, y])
    if logx:
        d = d[d[x] > 0]
    if d.empty:
        return None
    tasks = sorted(d["task"].unique())
    style = "partition" if d["partition"].nunique() > 1 else None
    kw = dict(units="run_id", estimator=None) if per_run else dict(errorbar="sd")
    fig, axes = _figure(len(tasks))
    with sns.plotting_context("notebook"):
        for ax, task in zip(axes, tasks):
            sub = d[d["task"] == task]
            sns.lineplot(sub, x=x, y=y, hue="algorithm", hue_order=sorted(pal), palette=pal, style=style,
                         ax=ax, legend=ax is axes[-1], **kw)
            ax.set(title=f"{title}: {task}" if len(tasks) > 1 else title,
                   xlabel=xlabel or x, ylabel=ylabel or y)
            if logx:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # crowded "2x10^4" labels otherwise
            if logy and (sub[y] > 0).all():
                ax.set_yscale("log")
        _legend(axes[-1])
    return fig


def _curves(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    lab = labels(df)
    return _prepare(df[df["worker"] == CONSENSUS], lab), _palette(lab)


def accuracy_vs_bytes(df: pd.DataFrame) -> Figure | None:
    """Consensus test accuracy against bytes sent per worker (log x), one line per run."""
    d, pal = _curves(df)
    d = d.assign(bytes_per_worker=d["bytes_sent"] / d["n_workers"])
    return _lines(d, "bytes_per_worker", "test_acc", "Accuracy vs communication", pal, logx=True,
                  xlabel="bytes sent per worker", ylabel="test accuracy")


def accuracy_vs_time(df: pd.DataFrame) -> Figure | None:
    """Consensus test accuracy against the run's clock (simulated or wall), one line per run."""
    d, pal = _curves(df)
    return _lines(d, "time_s", "test_acc", "Accuracy vs time", pal, xlabel="time (s)", ylabel="test accuracy")


def consensus_distance(df: pd.DataFrame) -> Figure | None:
    """Consensus distance against time, one line per run (log y when all values are > 0)."""
    d, pal = _curves(df)
    return _lines(d, "time_s", "consensus_dist", "Consensus distance", pal, logy=True,
                  xlabel="time (s)", ylabel="consensus distance")


def loss_curves(df: pd.DataFrame) -> Figure | None:
    """Train loss (mean over workers) and test loss against step: mean over seeds with a
    +-1 standard deviation band (runs with the same label and partition are pooled)."""
    lab = labels(df)
    pal = _palette(lab)
    w = df[df["worker"] >= 0].dropna(subset=["train_loss"])
    train = w.groupby(["run_id", "step"], sort=False).agg(
        loss=("train_loss", "mean"), **{c: (c, "first") for c in ("algorithm", "task", "partition")}).reset_index()
    test = df[df["worker"] == CONSENSUS].rename(columns={"test_loss": "loss"})
    parts = [_prepare(train, lab).assign(split="train"), _prepare(test, lab).assign(split="test")]
    d = pd.concat([p[["run_id", "algorithm", "task", "partition", "step", "loss", "split"]] for p in parts])
    d = d.dropna(subset=["loss"])
    if d.empty:
        return None
    panels = [(t, s) for t in sorted(d["task"].unique()) for s in ("train", "test")
              if not d[(d["task"] == t) & (d["split"] == s)].empty]
    style = "partition" if d["partition"].nunique() > 1 else None
    fig, axes = _figure(len(panels), ncols=2)
    for ax, (task, split) in zip(axes, panels):
        sub = d[(d["task"] == task) & (d["split"] == split)]
        sns.lineplot(sub, x="step", y="loss", hue="algorithm", hue_order=sorted(pal), palette=pal, style=style,
                     errorbar="sd", ax=ax, legend=ax is axes[-1])
        ax.set(title=f"{split} loss: {task}", ylabel=f"{split} loss")
    _legend(axes[-1])
    return fig


def pareto(summary: pd.DataFrame, x: str = "bytes_per_worker", y: str = "final_test_acc") -> Figure | None:
    """Final accuracy against bytes per worker (log x), one point per run, with the
    Pareto front (fewest bytes, highest accuracy) drawn as a black step line."""
    lab = labels(summary)
    d = _prepare(summary, lab).dropna(subset=[x, y])
    d = d[d[x] > 0]
    if d.empty:
        return None
    pal = _palette(lab)
    style = "partition" if d["partition"].nunique() > 1 else None
    fig, (ax,) = _figure(1)
    sns.scatterplot(d, x=x, y=y, hue="algorithm", hue_order=sorted(pal), palette=pal, style=style, s=60, ax=ax)
    front = stats.pareto_front(d, x=x, y=y)
    (line,) = ax.step(front[x], front[y], where="post", color="black", lw=1.2)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title="Pareto front: accuracy vs communication", xlabel=x.replace("_", " "), ylabel=y.replace("_", " "))
    leg = ax.get_legend()
    handles = [*leg.legend_handles, line] if leg else [line]
    texts = [*(t.get_text() for t in leg.get_texts()), "Pareto front"] if leg else ["Pareto front"]
    ax.legend(handles, texts, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return fig


def time_split_bars(df: pd.DataFrame, max_panels: int = 12) -> Figure | None:
    """Per worker: compute / comm / idle seconds as stacked bars, mean over the runs of a
    setting (label and partition), one panel per setting (at most ``max_panels``)."""
    split = stats.time_split(df)
    if split.empty or split[["compute_s", "comm_s", "idle_s"]].isna().all().all():
        return None
    d = _prepare(split, labels(df))
    d["setting"] = d["algorithm"] + (" / " + d["partition"] if d["partition"].nunique() > 1 else "")
    if d["task"].nunique() > 1:
        d["setting"] = d["task"] + ": " + d["setting"]
    mean = d.groupby(["setting", "worker"])[["compute_s", "comm_s", "idle_s"]].mean().reset_index()
    settings = sorted(mean["setting"].unique())[:max_panels]
    fig, axes = _figure(len(settings), ncols=3, w=5.0, h=3.6)
    colors = sns.color_palette("deep", 3)
    for ax, s in zip(axes, settings):
        sub = mean[mean["setting"] == s].sort_values("worker")
        bottom = 0
        for col, c in zip(("compute_s", "comm_s", "idle_s"), colors):
            vals = sub[col].fillna(0).to_numpy()
            ax.bar(sub["worker"], vals, bottom=bottom, color=c, label=col.removesuffix("_s"), width=0.85)
            bottom = bottom + vals
        ax.set(title=s, xlabel="worker", ylabel="seconds")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
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
