"""Timeline (Gantt) figure: what each worker did when, rebuilt from the tidy table.

Each worker row holds cumulative compute/comm/idle seconds at the end of a step, so the
step's increments laid end to end from the previous row's clock give the step's bars:
compute first, then communication, then waiting (exact for algorithms that compute and
then communicate within a step; an approximation when communication overlaps). Crashes
(``event == "failed"`` .. ``"recovered"``) are drawn as hatched red outlines; the downtime
itself is counted as idle time.
"""
from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg

PARTS = ("compute_s", "comm_s", "idle_s")


def segments(df: pd.DataFrame, max_steps: int = 40) -> pd.DataFrame:
    """Bars ``(run_id, worker, kind, start, duration)`` for the first ``max_steps`` steps."""
    w = df[(df["worker"] >= 0) & (df["event"] == "step") & (df["step"] <= max_steps)]
    w = w.sort_values(["run_id", "worker", "step"])
    out = []
    for (run, worker), g in w.groupby(["run_id", "worker"], sort=False):
        inc = g[list(PARTS)].fillna(0).diff().fillna(g[list(PARTS)].fillna(0))
        start = g["time_s"].shift(1).fillna(0.0).to_numpy()
        for k, part in enumerate(PARTS):
            before = inc[list(PARTS[:k])].sum(axis=1).to_numpy() if k else 0.0
            for s, d in zip(start + before, inc[part].to_numpy()):
                if d > 0:
                    out.append((run, worker, part.removesuffix("_s"), s, d))
    return pd.DataFrame(out, columns=["run_id", "worker", "kind", "start", "duration"])


def timeline(df: pd.DataFrame, max_runs: int = 4, max_steps: int = 40) -> Figure | None:
    """One panel per run (the first ``max_runs``): a bar per worker over simulated time."""
    seg = segments(df, max_steps)
    if seg.empty:
        return None
    runs = list(dict.fromkeys(seg["run_id"]))[:max_runs]
    fig = Figure(figsize=(10, 2.2 + 0.28 * seg["worker"].nunique() * len(runs)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), 1, squeeze=False)[:, 0]
    colors = dict(zip(("compute", "comm", "idle"), sns.color_palette("deep", 3)))
    for ax, run in zip(axes, runs):
        s = seg[seg["run_id"] == run]
        for kind, g in s.groupby("kind"):
            for worker, gw in g.groupby("worker"):
                ax.broken_barh(list(zip(gw["start"], gw["duration"])), (worker - 0.4, 0.8), color=colors[kind],
                               label=kind if worker == g["worker"].min() else None)
        f = df[(df["run_id"] == run) & df["event"].isin(["failed", "recovered"])].sort_values("time_s")
        for worker, g in f.groupby("worker"):
            down = g[g["event"] == "failed"]["time_s"].tolist()
            up = g[g["event"] == "recovered"]["time_s"].tolist() + [s["start"].add(s["duration"]).max()] * len(down)
            for a, b in zip(down, up):
                ax.broken_barh([(a, b - a)], (worker - 0.45, 0.9), facecolor="none", edgecolor="red", hatch="//",
                               label="down" if a == down[0] and worker == f["worker"].min() else None)
        ax.set(title=f"{run} (first {max_steps} steps)", xlabel="time (s)", ylabel="worker")
        ax.invert_yaxis()
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return fig
