"""The Pareto figure: final accuracy against communication, one point per *setting*.

A front through single runs runs through the luckiest seed of each method, and a reader cannot
tell a real trade-off from seed noise. Here each setting is one point at the mean over its seeds
of bytes per worker (x) and final test accuracy (y), with error bars on both axes: the 95 %
Student-t interval of each mean (none for one seed, said in the legend's ``n``). The front
(fewest bytes, highest accuracy; :func:`results.stats.pareto_front`) goes through these means,
one front per (task, partition) panel: fronts never mix data partitions or tasks.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from results import stats, style
from results.bands import caption


def setting_means(summary: pd.DataFrame, meta: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """``task, partition, label, n, <x>, <x>_ci, <y>, <y>_ci`` per setting: means over the seeds
    (diverged runs have no final accuracy and are left out of both means) with 95 % half-widths."""
    d = summary.assign(task=summary["run_id"].map(meta["task"]), partition=summary["run_id"].map(meta["partition"]),
                       label=summary["run_id"].map(meta["label"]))
    d = d[np.isfinite(pd.to_numeric(d[y], errors="coerce").to_numpy(float))]
    by = ["task", "partition", "label"]
    out = None
    for col in (x, y):
        ci = stats.mean_ci(d.assign(**{col: pd.to_numeric(d[col], errors="coerce")}), col, by)
        ci = ci[[*by, "n", "mean", "ci_half"]].rename(columns={"mean": col, "ci_half": f"{col}_ci", "n": f"{col}_n"})
        out = ci if out is None else out.merge(ci, on=by)
    out["n"] = out[f"{y}_n"]
    return out.drop(columns=[f"{x}_n", f"{y}_n"])


def pareto(summary: pd.DataFrame, x: str = "bytes_per_worker", y: str = "final_test_acc") -> Figure | None:
    """Final accuracy against bytes per worker (log x): a point per setting at its means over
    seeds with 95 % error bars on both axes, one panel per (task, partition) with that panel's
    Pareto front through the setting means (black step line). A panel without a point says so,
    and the front has a legend entry only if one is drawn."""
    meta = style.runs(summary, leave_out=("task", "partition"))
    if summary.empty:
        return None
    facets = sorted({(meta.loc[r, "task"], meta.loc[r, "partition"]) for r in summary["run_id"]}, key=str)
    means = setting_means(summary, meta, x, y)
    fig, axes = style.figure(len(facets), ncols=3)
    first = meta.drop_duplicates("label").set_index("label")
    n, fronts = {}, 0
    for ax, (task, part) in zip(axes, facets):
        pts = means[(means["task"] == task) & (means["partition"] == part)]
        pts = pts[np.isfinite(pts[x].to_numpy(float)) & (pts[x] > 0)]
        for _, r in pts.iterrows():
            m = first.loc[r["label"]]
            xerr = None if pd.isna(r[f"{x}_ci"]) else [[min(r[f"{x}_ci"], r[x] * 0.9)], [r[f"{x}_ci"]]]
            top = 1.0 - r[y] if y.endswith("_acc") else np.inf  # an accuracy's interval ends at 1
            yerr = None if pd.isna(r[f"{y}_ci"]) else [[r[f"{y}_ci"]], [min(r[f"{y}_ci"], top)]]
            ax.errorbar([r[x]], [r[y]], xerr=xerr, yerr=yerr, marker=m["marker"], color=m["color"], ls="", ms=8,
                        capsize=3, elinewidth=1.2, zorder=3)
            n[r["label"]] = max(int(r["n"]), n.get(r["label"], 0))
        front = stats.pareto_front(pts, x=x, y=y)
        if len(front):
            ax.step(front[x], front[y], where="post", color="black", lw=1.2, zorder=2)
            ax.plot(front[x], front[y], marker="o", mfc="none", mec="black", ms=14, ls="", zorder=4)
            fronts += 1
            style.log_x(ax, bytes_axis="bytes" in x)
        else:
            runs = int(((summary["run_id"].map(meta["task"]) == task) & (summary["run_id"].map(meta["partition"]) == part)).sum())
            ax.text(0.5, 0.5, f"no run with a final accuracy\n({runs} run(s): diverged or no evaluation)",
                    transform=ax.transAxes, ha="center", va="center", color="0.3")
            fig.harness["notes"].append(f"{task} / {part}: no run with a final accuracy, no front")
        ax.set(title=f"{task} · partition={part}", xlabel=f"{x.replace('_', ' ')} (mean over seeds)",
               ylabel=f"{y.replace('_', ' ')} (mean over seeds)")
        fig.harness["panels"].append(ax.get_title())
    extra = [(Line2D([], [], color="black", lw=1.2, marker="o", mfc="none", ms=11),
              "Pareto front of the setting means (per panel)")]
    style.legend(fig, meta, set(n), line=False, extra=extra if fronts else [], n=n)
    fig.harness["n"] = {lab: n[lab] for lab in style.order(n)}
    fig.harness["band"] = "error bars: 95% Student-t interval of each mean over seeds (none where n = 1)"
    fig.harness["notes"].insert(0, "one point per setting at its means over seeds; error bars: 95% Student-t "
                                   "intervals of both means (none where n = 1)")
    return caption(fig, "Final test accuracy against bytes sent per worker: each setting's mean over its seeds "
                        "with 95% intervals on both axes, and the Pareto front (fewest bytes, highest accuracy) "
                        "through those means.")
