"""Curves as a paper draws them: the mean over the seeds of each setting with a 95 % band.

One line per seed (18 lines for 6 settings) hides what a reader wants, the expected curve and
how sure it is. Here the seeds of a setting are aligned on the step (every seed of a setting
evaluates at the same steps), and at each step the curve is the mean over the seeds that have a
finite value there: ``y`` is their mean with the half-width of the Student-t interval
``t_{0.975, n-1} * s / sqrt(n)`` as the band (none for ``n = 1``), ``x`` their mean (bytes are
usually equal across seeds; simulated time is not, and its mean is what is drawn). Each legend
entry states ``n``; where fewer seeds reach a step than started (a run diverged or stopped), the
figure's notes say from which step on.

:func:`band_figure` draws a list of :class:`Panel` (one task, one ``x`` against one ``y``) in the
shared style (:mod:`results.style`) and records ``fig.harness["n"]`` (setting -> seeds) and
``fig.harness["band"]`` (what the band is) for the report and its tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from results import style

LEVEL = 0.95
BAND = "95% Student-t interval of the mean over seeds"
#: values a band cannot leave (the t-interval of a mean accuracy near 1 reaches past 1, that of a
#: cross-entropy near 0 below 0, that of a perplexity below its floor of 1)
BOUNDS = {"test_acc": (0.0, 1.0), "test_loss": (0.0, np.inf), "test_ppl": (1.0, np.inf)}
NOTE = ("lines: mean over the seeds of each setting (n in the legend); bands: 95% Student-t interval "
        "of that mean (none where n = 1)")


@dataclass
class Panel:
    """One panel: ``rows`` (``run_id``, ``at`` and the ``x``/``y`` columns, any number of rows per
    run) drawn as ``y`` against ``x``, one band per setting."""
    title: str
    rows: pd.DataFrame
    x: str
    y: str
    xlabel: str = ""
    ylabel: str = ""
    logx: bool = False
    at: str = "step"
    notes: list[str] = field(default_factory=list)


def t_half(std, n, level: float = LEVEL) -> np.ndarray:
    """Half-width of the Student-t interval of a mean of ``n`` values with sample std ``std``
    (NaN for ``n < 2``)."""
    from scipy import stats as st  # lazily: scipy is slow to import

    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = st.t.ppf((1 + level) / 2, np.where(n > 1, n - 1, np.nan))
        return t * np.asarray(std, float) / np.sqrt(n)


def curve_stats(rows: pd.DataFrame, label: pd.Series, x: str, y: str, at: str = "step") -> pd.DataFrame:
    """``label, at, n, x, mean, lo, hi`` per setting (``label``: run_id -> setting) and ``at``:
    each run's values at ``at`` first averaged (one value per run), then the seeds'."""
    cols = list(dict.fromkeys([at, x, y]))
    d = rows[["run_id", *cols]].copy()
    for c in cols:
        d[c] = pd.to_numeric(d[c], errors="coerce")
    d = d[np.isfinite(d[cols].to_numpy(float)).all(axis=1)]
    if d.empty:
        return pd.DataFrame(columns=["label", at, "n", "x", "mean", "lo", "hi"])
    vals = [c for c in dict.fromkeys([x, y]) if c != at]
    per_run = d.groupby(["run_id", at], sort=False)[vals].mean().reset_index()
    per_run["label"] = per_run["run_id"].map(label)
    g = per_run.groupby(["label", at], sort=True)
    out = g.agg(n=(y, "count"), x=(x, "mean"), mean=(y, "mean"), std=(y, "std")).reset_index()
    half = t_half(out["std"], out["n"])
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out.drop(columns="std")


def _shrinking(c: pd.DataFrame, at: str) -> list[str]:
    """Notes for settings whose seed count falls along the curve."""
    notes = []
    for lab, g in c.groupby("label", sort=True):
        top = g["n"].max()
        low = g[g["n"] < top]
        if len(low):
            full = g.loc[(g["n"] == top) & (g[at] < low[at].min()), at]
            upto = f" up to {at} {full.max():g}" if len(full) else ""
            notes.append(f"{lab}: n = {int(top)}{upto}, then {int(low['n'].min())} "
                         "(a run diverged or stopped earlier)")
    return notes


def draw(ax, c: pd.DataFrame, first: pd.DataFrame, lw: float = 1.8, log: bool = False,
         bounds: tuple[float, float] | None = None) -> dict[str, int]:
    """Mean lines and bands of ``c`` (:func:`curve_stats`) on ``ax``; returns label -> n. The band
    is clipped to ``bounds`` (an accuracy's interval ends at 1). On a log y axis a mean at or
    below 0 is a gap, and so is the band where its lower edge reaches 0 (said in the notes)."""
    drawn = {}
    for lab, g in c.groupby("label", sort=False):
        r = first.loc[lab]
        g = g.sort_values("x")
        mean, lo, hi = g["mean"].to_numpy(float), g["lo"].to_numpy(float), g["hi"].to_numpy(float)
        if bounds is not None:
            lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
        if log:
            mean = np.where(mean > 0, mean, np.nan)
        ax.plot(g["x"], mean, color=r["color"], ls=r["dash"], lw=lw, alpha=0.95)
        ok = np.isfinite(lo) & np.isfinite(hi) & ((lo > 0) if log else True)
        if ok.any():
            ax.fill_between(g["x"], lo, hi, where=ok, color=r["color"], alpha=0.18, lw=0, interpolate=False)
        drawn[lab] = int(g["n"].max())
    return drawn


def band_figure(panels: list[Panel], meta: pd.DataFrame, *, ncols: int | None = None, lw: float = 1.8,
                undrawn: dict[str, str] | None = None) -> Figure | None:
    """A figure of ``panels`` (empty ones dropped; None if all are): a mean line and band per
    setting, diverged runs marked at their last finite value, log axes where values span decades,
    one legend entry per setting with its ``n``."""
    stats = [(p, curve_stats(p.rows, meta["label"], p.x, p.y, p.at)) for p in panels]
    stats = [(p, c) for p, c in stats if not c.empty and (not p.logx or (c["x"] > 0).any())]
    if not stats:
        return None
    fig, axes = style.figure(len(stats), ncols=ncols)
    first = meta.drop_duplicates("label").set_index("label")
    n, diverged = {}, False
    for ax, (p, c) in zip(axes, stats):
        if p.logx:
            c = c[c["x"] > 0]
            style.log_x(ax, bytes_axis="bytes" in p.x)
        log = style.log_if_wide(ax, c["mean"])
        if log and (c["lo"] <= 0).any():
            fig.harness["notes"].append(f"{p.title}: log y axis; where an interval reaches 0 its band is not drawn")
        for lab, k in draw(ax, c, first, lw, log, BOUNDS.get(p.y)).items():
            n[lab] = max(k, n.get(lab, 0))
        rows = p.rows.assign(_y=pd.to_numeric(p.rows[p.y], errors="coerce"))
        rows = rows[np.isfinite(rows["_y"].to_numpy(float)) & (rows[p.x] > 0 if p.logx else True)]
        diverged |= style.mark_diverged(ax, rows, meta, p.x, "_y")
        ax.set(title=p.title, xlabel=p.xlabel or p.x, ylabel=p.ylabel or p.y)
        fig.harness["panels"].append(p.title)
        fig.harness["notes"] += p.notes + _shrinking(c, p.at)
        if log:
            fig.harness["notes"].append(f"{p.title}: log y axis (values span more than {style.DECADES:g} decades)")
    fig.harness["notes"].insert(0, NOTE)
    fig.harness["band"] = BAND
    fig.harness["n"] = {lab: n[lab] for lab in style.order(n)}
    style.legend(fig, meta, set(n), extra=[style.DIVERGED_HANDLE] if diverged else [], undrawn=undrawn, n=n,
                 band=True)
    return fig


def per_task(d: pd.DataFrame, meta: pd.DataFrame, title: str, x: str, y: str, **kw) -> list[Panel]:
    """One :class:`Panel` per task of ``d``'s runs (the task named in the title when several)."""
    task = d["run_id"].map(meta["task"])
    tasks = sorted(task.dropna().unique(), key=str)
    return [Panel(f"{title}: {t}" if len(tasks) > 1 else title, d[task == t], x, y, **kw) for t in tasks]


def caption(fig: Figure | None, text: str) -> Figure | None:
    """``fig`` with ``text`` as its caption (the report shows it above the figure)."""
    if fig is not None:
        fig.harness["caption"] = text
    return fig
