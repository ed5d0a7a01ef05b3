"""Language models: test loss and perplexity against communication and time.

A language model's result is its loss and perplexity, not a classification accuracy (a text
task's ``test_acc`` is next-token accuracy, a poor summary of it). A run is a language-model run
when its evaluation rows carry a finite ``test_ppl`` (the schema's ``exp(test_loss)`` per token,
written by text tasks); other runs are not drawn here, and the figure is absent (None) when there
are no such runs. Curves are the mean over seeds with a 95 % band (:mod:`results.bands`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from results import style
from results.bands import Panel, band_figure, caption
from results.schema import CONSENSUS


def lm_runs(df: pd.DataFrame) -> set:
    """Run ids whose evaluation rows have a finite perplexity."""
    ev = df[(df["worker"] == CONSENSUS)]
    ok = np.isfinite(pd.to_numeric(ev["test_ppl"], errors="coerce").to_numpy(float))
    return set(ev.loc[ok, "run_id"])


def language_model(df: pd.DataFrame) -> Figure | None:
    """Per task with language-model runs, four panels: test loss and perplexity against bytes
    sent per worker (log x) and against the run's clock."""
    if "test_ppl" not in df:
        return None
    ids = lm_runs(df)
    if not ids:
        return None
    d = df[(df["worker"] == CONSENSUS) & df["run_id"].isin(ids)]
    d = d.assign(bytes_per_worker=d["bytes_sent"] / d["n_workers"])
    meta = style.runs(df[df["run_id"].isin(ids)])
    task = d["run_id"].map(meta["task"])
    tasks = sorted(task.unique(), key=str)
    panels = []
    for t in tasks:
        sub = d[task == t]
        at = f": {t}" if len(tasks) > 1 else ""
        for y, name in (("test_loss", "test loss (per token)"), ("test_ppl", "test perplexity (per token)")):
            panels.append(Panel(f"{name.split(' (')[0].capitalize()} vs communication{at}", sub, "bytes_per_worker", y,
                                xlabel="bytes sent per worker (cumulative)", ylabel=name, logx=True))
            panels.append(Panel(f"{name.split(' (')[0].capitalize()} vs time{at}", sub, "time_s", y,
                                xlabel=style.time_label(meta), ylabel=name))
    fig = band_figure(panels, meta, ncols=2)
    if fig is not None and (d["bytes_sent"] <= 0).any():
        fig.harness["notes"].append("evaluations before any byte was sent (step 0) are not on the log x axes")
    return caption(fig, "Language models: test loss of the consensus model and its perplexity exp(loss) per token, "
                        "against bytes sent per worker and against the run's clock.")
