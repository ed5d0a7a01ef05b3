"""What every figure shares: one colour and line style per setting, one legend entry per
setting, log axes where values span decades, and notes about what a figure leaves out.

A *setting* is what :mod:`results.settings` says tells runs apart (seeds are not settings).
Colour follows the setting without its data partition, line style (dashes / marker) the
partition, so ``local_sgd · partition=iid`` and ``local_sgd · partition=dirichlet`` share a
colour and differ by dash. Each figure carries ``fig.harness = {"legend": [...], "notes":
[...], "panels": [...]}``: the legend entries (the setting labels, in order), sentences about
what it dropped or how it was drawn, and panel titles; the report writes them to
``figures.json`` and under each figure.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

from results import settings

BASELINE = "sync_sgd"
DASHES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]
SIMULATED = {"simpy", "stacked"}
DECADES = 2.0  # log axis when positive values span more than this many decades


def _diverged(frame: pd.DataFrame) -> set:
    out = set(frame.loc[frame["diverged"].astype(bool), "run_id"]) if "diverged" in frame else set()
    if "event" in frame:
        out |= set(frame.loc[frame["event"] == "diverged", "run_id"])
    if "status" in frame:
        out |= set(frame.loc[frame["status"].astype(object) == "diverged", "run_id"])
    return out


def runs(frame: pd.DataFrame, leave_out=("task",)) -> pd.DataFrame:
    """One row per run (index ``run_id``): ``label`` (its setting, ``leave_out`` being the
    facets), ``color``, ``dash``, ``marker``, ``task``, ``partition``, ``seed``, ``diverged``."""
    one = settings.per_run(frame)
    lab = settings.labels(one, leave_out)
    hue = settings.labels(one, (*leave_out, "partition"))
    out = pd.DataFrame({"label": lab, "hue": hue})
    for c in ("task", "partition", "algorithm", "seed", "backend"):
        vals = one.set_index("run_id")[c] if c in one else pd.Series(np.nan, index=one["run_id"])
        out[c] = vals.astype(object).where(vals.notna(), "n/a").reindex(out.index)
    names = sorted(set(hue))
    colors = dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))
    parts = sorted(set(out["partition"].astype(str)))
    out["color"] = out["hue"].map(colors)
    out["dash"] = out["partition"].astype(str).map({p: DASHES[k % len(DASHES)] for k, p in enumerate(parts)})
    out["marker"] = out["partition"].astype(str).map({p: MARKERS[k % len(MARKERS)] for k, p in enumerate(parts)})
    out["diverged"] = out.index.isin(_diverged(one))
    return out


def order(labels) -> list[str]:
    """Setting labels with the baseline's first, then alphabetical."""
    labels = sorted(set(labels))
    return [x for x in labels if x.startswith(BASELINE)] + [x for x in labels if not x.startswith(BASELINE)]


def figure(n: int, ncols: int | None = None, w: float = 6.0, h: float = 4.2):
    """A constrained-layout figure with ``n`` panels (Agg canvas, no pyplot state)."""
    ncols = min(n, ncols or n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(w * ncols + 3.0, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.harness = {"legend": [], "notes": [], "panels": []}
    return fig, list(axes[:n])


def handle(r: pd.Series, line: bool = True, band: bool = False):
    """A legend handle in a setting's style: its line (over its band's shade) or its marker."""
    if line and band:
        return (Patch(color=r["color"], alpha=0.18, lw=0), Line2D([], [], color=r["color"], ls=r["dash"], lw=2))
    if line:
        return Line2D([], [], color=r["color"], ls=r["dash"], lw=2)
    return Line2D([], [], color=r["color"], marker=r["marker"], ls="", ms=7)


def legend(fig: Figure, meta: pd.DataFrame, shown: set[str], line: bool = True, extra=(),
           undrawn: dict[str, str] | None = None, n: dict[str, int] | None = None, band: bool = False) -> None:
    """One legend for the figure: an entry per setting label in ``shown`` and in ``undrawn``
    (label -> why it has no line, shown after the label), plus ``extra`` ``(handle, text)``
    pairs; ``n`` (label -> seeds behind its line) is written after each label as ``(n=3)``.
    The setting labels are recorded in ``fig.harness["legend"]``, the texts in ``"legend_text"``."""
    undrawn, n = undrawn or {}, n or {}
    labs = [x for x in order(meta["label"]) if x in shown or x in undrawn]
    first = meta.drop_duplicates("label").set_index("label")
    handles = [handle(first.loc[x], line, band and x in n) for x in labs] + [h for h, _ in extra]
    texts = [x + (f" (n={n[x]})" if x in n else "") + (f" ({undrawn[x]})" if x in undrawn else "")
             for x in labs] + [t for _, t in extra]
    fig.harness["legend_text"] = texts
    if handles:
        fig.legend(handles, texts, loc="outside right upper", frameon=False)
    fig.harness["legend"] = labs
    fig.harness["extra_legend"] = [t for _, t in extra]


def log_if_wide(ax, values, axis: str = "y") -> bool:
    """Log scale when the positive finite ``values`` span more than :data:`DECADES` decades."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and np.log10(v.max() / v.min()) > DECADES:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        return True
    return False


def log_x(ax, bytes_axis: bool = False) -> None:
    """A log x axis; for bytes, ticks at 1, 2 and 5 of each decade labelled ``2 MB`` (one bare
    ``10^7`` tick told a reader little)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # crowded "2x10^4" labels otherwise
    if bytes_axis:
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(EngFormatter(unit="B", places=0, sep=" "))


def time_label(meta: pd.DataFrame) -> str:
    """``time (s, simulated)`` / ``time (s, wall clock)`` / both, from the runs' backends."""
    b = set(meta["backend"].astype(str))
    if b <= SIMULATED:
        return "time (s, simulated)"
    if not b & SIMULATED:
        return "time (s, wall clock)"
    return "time (s): simulated for simpy/stacked runs, wall clock for real backends"


def mark_diverged(ax, sub: pd.DataFrame, meta: pd.DataFrame, x: str, y: str) -> bool:
    """An ``x`` marker at each diverged run's last finite point; True if any was drawn."""
    drawn = False
    for rid, g in sub.groupby("run_id", sort=False):
        if rid in meta.index and meta.loc[rid, "diverged"] and len(g):
            last = g.sort_values(x).iloc[-1]
            ax.plot([last[x]], [last[y]], marker="x", ms=10, mew=2.5, color=meta.loc[rid, "color"], ls="")
            drawn = True
    return drawn


DIVERGED_HANDLE = (Line2D([], [], marker="x", ms=10, mew=2.5, color="black", ls=""), "diverged (last finite value)")


def footnote(fig: Figure, notes: list[str]) -> None:
    """Notes under the panels (wrapped), so what a figure leaves out is on the figure (the
    report's caption then leaves them out: ``fig.harness["drawn"]``)."""
    if notes:
        getattr(fig, "harness", {}).setdefault("drawn", []).extend(notes)
        fig.supxlabel("\n".join(textwrap.fill(n, 150) for n in notes), fontsize=8, color="0.3", ha="left", x=0.01)
