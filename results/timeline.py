"""Timeline (Gantt) figure: what each worker did when, rebuilt from the tidy table.

Each worker row holds cumulative compute/comm/idle seconds at the end of a step, so the
step's increments laid end to end from the previous row's clock give the step's bars:
compute first, then communication, then waiting (exact for algorithms that compute and
then communicate within a step; an approximation when communication overlaps). Crashes
(``event == "failed"`` .. ``"recovered"``) are drawn as hatched red outlines; the downtime
itself is counted as idle time. Panels are settings, never run hashes: one run per setting,
the baseline kept first, and what was left out said in the figure's title (:func:`pick`).
"""
from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.backends.backend_agg import FigureCanvasAgg

from results import style

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


def pick(df: pd.DataFrame, max_runs: int = 6) -> tuple[list[str], pd.DataFrame, list[str]]:
    """The runs a timeline shows: one per setting (its lowest seed), the baseline's settings
    first, at most ``max_runs``. Returns ``(run_ids, runs meta, notes)``: the notes say which
    seeds and settings were left out."""
    meta = style.runs(df, leave_out=())
    seeds = pd.to_numeric(meta["seed"], errors="coerce")
    one = meta.assign(_seed=seeds).sort_values(["_seed"], kind="stable").groupby("label", sort=False).head(1)
    ordered = [one.index[one["label"] == lab][0] for lab in style.order(one["label"])]
    notes = []
    if len(one) < len(meta):
        notes.append("one seed per setting (the lowest)")
    if len(ordered) > max_runs:
        notes.append(f"not shown (more than {max_runs} settings): "
                     + ", ".join(meta.loc[r, "label"] for r in ordered[max_runs:]))
    return ordered[:max_runs], meta, notes


def timeline(df: pd.DataFrame, max_runs: int = 6, max_steps: int = 40) -> Figure | None:
    """One panel per setting (see :func:`pick`: baselines kept, drops named in the figure):
    a bar per worker over the run's clock for the first ``max_steps`` steps."""
    seg = segments(df, max_steps)
    if seg.empty:
        return None
    chosen, meta, notes = pick(df[df["run_id"].isin(set(seg["run_id"]))], max_runs)
    workers = seg["worker"].nunique()
    fig = Figure(figsize=(11, 1.6 + (0.6 + 0.16 * workers) * len(chosen)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(chosen), 1, squeeze=False)[:, 0]
    colors = dict(zip(("compute", "comm", "idle"), sns.color_palette("deep", 3)))
    for ax, run in zip(axes, chosen):
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
        seed = meta.loc[run, "seed"]
        ax.set_title(f"{meta.loc[run, 'label']} · seed {seed}", fontsize=10)
        ax.set(xlabel=style.time_label(meta.loc[[run]]), ylabel="worker")
        ax.invert_yaxis()
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    axes[0].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    head = f"What each worker did, first {max_steps} steps"
    fig.suptitle(head + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 * (1 + bool(notes)) / fig.get_figheight()))
    fig.harness = {"legend": list(handles), "notes": notes,
                   "panels": [f"{meta.loc[r, 'label']} · seed {meta.loc[r, 'seed']}" for r in chosen],
                   "caption": f"What each worker did over the first {max_steps} steps (computing, communicating, "
                              "waiting; crashes hatched), for one seed of each setting: a schedule, not a mean."}
    return fig
