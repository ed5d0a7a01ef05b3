"""A results report for a directory of runs: tables, figures and one self-contained HTML.

``write_report(DIR)`` writes ``DIR/report/``:

- ``summary.csv``: :func:`results.stats.summary`, one row per run (all columns);
- ``summary.md``: the per-setting table (mean over seeds ± 95 % interval) as markdown, for pasting;
- ``summary.tex``: the same table as LaTeX (booktabs, :mod:`results.latex`), for a paper;
- ``<figure>.png`` / ``.svg``: the figures of :data:`results.plots.FIGURES`;
- ``figures.json``: per figure, its legend entries (one per setting), panels and notes
  (what it left out, which axes are logarithmic);
- ``index.html``: self-contained (figures embedded as base64 PNG): the setup (task, model size,
  workers, compute and network models, steps, seeds, what varies: :mod:`results.setup`), the
  per-setting and per-run tables, the figures with their captions above them, a note listing runs that did not finish (with whether any of their rows
  are in the tables: a diverged run's are, a killed or failed one usually has none) and files
  that could not be read, and every run's config.

A diverged run shows "diverged" where an accuracy would be. A damaged run (unreadable
``run.json``: its config and status cannot be trusted) is left out of every table and figure
and named instead (the report's note on unfinished runs; a line under :func:`format_summary`'s
table); ``harness run`` of its config runs it again.

:func:`format_summary` renders the per-setting table as fixed-width text for a terminal.
"""
from __future__ import annotations

import base64
import html
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from results import latex, settings, stats
from results.errors import ResultsError, ResultsWarning
from results.load import load, runs
from results.store import atomic_text

from results.table import (ACC, BASELINE, DAMAGED, PPL, _acc_cell, _num, _times, format_summary,  # noqa: F401
                           human_bytes, split_damaged)
from results.table import left_out as _left_out
from results.table import markdown as _markdown
from results.table import table as _table


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td{white-space:nowrap}
th{background:#f2f2f2}.note{background:#fff4e5;border-left:4px solid #f90;padding:0.5em 1em;margin:1em 0}
table.setup td{white-space:normal}table.setup th{width:14em;vertical-align:top}
img{max-width:100%}.wide{overflow-x:auto}figure{margin:2em 0 2.5em 0}pre{background:#f7f7f7;padding:0.5em;font-size:0.85em}
figcaption{margin-bottom:0.6em;max-width:1100px;line-height:1.4}figcaption small{color:#555}.how{max-width:1100px}"""
#: a figure's name as a heading ("pareto_front" -> "Pareto front")
TITLES = {"accuracy_vs_bytes": "Accuracy vs communication", "accuracy_vs_time": "Accuracy vs time",
          "language_model": "Language model: loss and perplexity", "loss_curves": "Loss curves",
          "pareto_front": "Pareto front", "staleness": "Staleness of asynchronous updates",
          "consensus_distance": "Consensus distance", "time_split": "Time split", "timeline": "Timeline"}


def _figure(k: int, name: str, png: Path, info: dict) -> str:
    """A ``<figure>`` with its caption *above* the image (below, it read as the next figure's
    heading): number, title, what is drawn, how (mean, band, n) and what was left out."""
    e = html.escape
    b64 = base64.b64encode(png.read_bytes()).decode("ascii")
    notes = [n for n in info.get("notes", []) if n not in info.get("drawn", [])]  # not twice
    title = TITLES.get(name, name.replace("_", " ").capitalize())
    what = e(info.get("caption", ""))
    n = info.get("n") or {}
    if n:
        k_n = sorted(set(n.values()))
        what += f" n = {k_n[0]} seed(s) per setting." if len(k_n) == 1 else " n (seeds) per setting in the legend."
    said = "".join(f"<br><small>{e(x)}</small>" for x in notes)
    return (f"<figure id='{e(name)}'><figcaption><b>Figure {k}: {e(title)}.</b> {what} "
            f"(<a href='{e(name)}.svg'>SVG</a>){said}</figcaption>"
            f"<img src=\"data:image/png;base64,{b64}\" alt='{e(title)}'></figure>")


def _html(root, summary_df, table, figures, fig_errors, run_list, problems, target_acc, meta=None) -> str:
    from results import setup

    e = html.escape
    n, done = len(run_list), int((run_list["status"] == "finished").sum())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Results: {e(str(root))}</title>",
             f"<style>{_CSS}</style></head><body><h1>Results report</h1>",
             f"<p>{e(str(root))}: {n} run(s), {done} finished. Target accuracy {target_acc:g}. "
             f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>"]
    bad = run_list[run_list["status"] != "finished"]
    if len(bad):
        cols = ["run_id", "status", "error", "path"]
        rows = bad[cols].astype(object).where(bad[cols].notna(), "")
        ids = set(summary_df["run_id"])
        shown = [r in ids for r in bad["run_id"]]
        rows.insert(2, "rows in this report", [_rows_note(r, summary_df) if k else "none"
                                               for r, k in zip(bad["run_id"], shown)])
        k = sum(shown)
        said = ("none of their rows are in the tables and figures" if k == 0 else
                "the rows of all of them are in the tables and figures, marked by their status" if k == len(bad) else
                f"the rows of {k} of them are in the tables and figures, marked by their status; the others have none")
        parts += [f"<div class='note'><b>{len(bad)} run(s) did not finish</b> ({said}):",
                  rows.to_html(index=False), "</div>"]
    else:
        parts.append("<p>All runs finished.</p>")
    if problems or fig_errors:
        items = "".join(f"<li>{e(p)}</li>" for p in [*problems, *fig_errors])
        parts.append(f"<div class='note'><b>Problems (skipped)</b><ul>{items}</ul></div>")
    parts.insert(3, setup.section(run_list, summary_df))
    parts += ["<h2>Summary (mean over seeds ± 95% interval)</h2>", f"<div class='wide'>{table.to_html(index=False)}</div>",
              _how_to_read(summary_df, stats.setting_columns(settings.blank_unused(summary_df)), target_acc),
              "<p>The same table as LaTeX (booktabs): <a href='summary.tex'>summary.tex</a>; per run: "
              "<a href='summary.csv'>summary.csv</a>.</p>"]
    parts.append("<h2>Figures</h2>")
    for k, (name, png) in enumerate(figures.items(), 1):
        parts.append(_figure(k, name, png, (meta or {}).get(name, {})))
    runs_t = settings.blank_unused(summary_df[[c for c in summary_df.columns if not c.startswith("cfg.")]])
    runs_t = runs_t.drop(columns=[c for c in runs_t if c.startswith("hp.") and runs_t[c].isna().all()])
    for c in runs_t:  # nullable integers print pd.NA as "<NA>" whatever na_rep says
        if pd.api.types.is_extension_array_dtype(runs_t[c]):
            runs_t[c] = runs_t[c].astype(object).where(runs_t[c].notna(), "-")
    html_t = runs_t.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
    parts += ["<h2>Runs</h2>", f"<div class='wide'>{html_t}</div>"]
    parts.append("<h2>Run configs</h2>")
    for r in run_list.itertuples(index=False):
        cfg = json.dumps(r.config, indent=2, sort_keys=True, default=str)
        parts.append(f"<details><summary>{e(str(r.run_id))} ({e(str(r.status))})</summary><pre>{e(cfg)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _how_to_read(summary_df: pd.DataFrame, by: list[str], target_acc: float) -> str:
    """The paragraph under the summary table: what a row is and how each number was made."""
    from results import settings, style

    evals = sorted(set(summary_df["cfg.eval_every"].dropna())) if "cfg.eval_every" in summary_df else []
    every = f" (every {', '.join(settings.fmt(v) for v in evals)} steps)" if evals else ""
    backends = set(summary_df["backend"].astype(str))
    clock = ("simulated seconds" if backends <= style.SIMULATED else "wall-clock seconds"
             if not backends & style.SIMULATED else "simulated seconds for simpy/stacked runs, wall-clock for the others")
    keys = ", ".join(settings.short(c) for c in by)
    return (f"<p class='how'>One row per setting: the runs that share every config key that varies here "
            f"({html.escape(keys)}); only seeds are averaged, and a key that does not apply to a setting (beta2 of "
            f"an SGD optimizer) is blank there. Every number is the mean over the seeds ± the half-width of the 95% "
            f"Student-t interval over them (none for n=1). <b>final test acc</b>: the consensus model (mean of the "
            f"workers' models) at the last evaluation; diverged runs are left out and counted. <b>final test ppl</b> "
            f"(language models): its perplexity exp(test loss) per token. <b>total bytes</b>: bytes sent, summed "
            f"over workers, at the end (counters are cumulative). <b>time</b>: the run's clock at its end, in {clock}. "
            f"<b>time, bytes and rounds to {target_acc:g} acc</b>: interpolated linearly between evaluations{every} "
            f"(the last below and the first at or above the target), mean over the runs that reached it (k/n). "
            f"See docs/results.md.</p>")


def _rows_note(run_id, summary_df) -> str:
    """What a report shows of an unfinished run: up to where its rows go."""
    r = summary_df[summary_df["run_id"] == run_id].iloc[0]
    if "diverged_step" in r and not pd.isna(r["diverged_step"]):
        return f"up to step {int(r['diverged_step'])} (diverged there)"
    return "yes"


def write_report(root: str | os.PathLike, target_acc: float = 0.9, out: str | os.PathLike | None = None) -> Path:
    """Write the report of every run under ``root`` into ``out`` (default ``root/report``)
    and return that directory. Unreadable runs are skipped with a ``ResultsWarning`` and
    listed in the HTML; a figure that fails to draw is reported the same way."""
    from results import plots  # matplotlib is slow to import; only the report needs it

    out = Path(root) / "report" if out is None else Path(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        df = load(root)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    problems = list(df.attrs.get("problems", []))
    df, damaged = split_damaged(df)
    if damaged:
        problems.append(_left_out(damaged).replace("left out", "left out of the tables and figures", 1))
        if not len(df):
            raise ResultsError(f"no undamaged runs under {root}: {_left_out(damaged)}")
    out.mkdir(parents=True, exist_ok=True)
    s = stats.summary(df, target_acc)
    atomic_text(out / "summary.csv", s.to_csv(index=False))
    table = _table(s)
    atomic_text(out / "summary.md", f"Target accuracy: {target_acc:g}\n\n" + _markdown(table))
    atomic_text(out / "summary.tex", latex.summary_latex(s, target_acc))
    figures, fig_errors, meta = {}, [], {}
    for name, (fn, kind) in plots.FIGURES.items():
        try:
            fig = fn(s if kind == "summary" else df)
        except Exception as e:  # a broken figure should not cost the whole report
            fig_errors.append(f"figure {name}: {type(e).__name__}: {e}")
            warnings.warn(fig_errors[-1], ResultsWarning, stacklevel=2)
            continue
        if fig is not None:
            figures[name] = plots.save(fig, out / name)[0]
            meta[name] = getattr(fig, "harness", {"legend": [], "notes": [], "panels": []})
    atomic_text(out / "figures.json", json.dumps(meta, indent=1, default=str))
    page = _html(root, s, table, figures, fig_errors, runs(root), problems, target_acc, meta)
    atomic_text(out / "index.html", page)
    return out
