"""A results report for a directory of runs: tables, figures and one self-contained HTML.

``write_report(DIR)`` writes ``DIR/report/``:

- ``summary.csv``: :func:`results.stats.summary`, one row per run (all columns);
- ``summary.md``: the per-setting table (mean over seeds) as markdown, for pasting;
- ``<figure>.png`` / ``.svg``: the figures of :data:`results.plots.FIGURES`;
- ``figures.json``: per figure, its legend entries (one per setting), panels and notes
  (what it left out, which axes are logarithmic);
- ``index.html``: self-contained (figures embedded as base64 PNG): the per-setting and
  per-run tables, a note listing runs that did not finish (with whether any of their rows
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
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from results import settings, stats
from results.errors import ResultsError, ResultsWarning
from results.load import load, runs
from results.store import atomic_text

BASELINE = "sync_sgd"


def human_bytes(x: float) -> str:
    """``1234567 -> "1.23 MB"`` (decimal units, as network rates are quoted); NaN -> "-"."""
    if x is None or pd.isna(x):
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(x) < 1000 or unit == "TB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.3g} {unit}"
        x /= 1000.0


def _num(x: float, fmt: str = ".3g", unit: str = "") -> str:
    return "-" if pd.isna(x) else f"{x:{fmt}}{unit}"


def _times(r: float) -> str:
    """A reduction factor as text: 8.0 -> "8x less", 0.5 -> "2x more"."""
    if pd.isna(r) or r <= 0 or math.isinf(r):
        return "-"
    f = r if r >= 1 else 1 / r
    return (f"{f:.3g}" if f < 1000 else f"{f:,.0f}") + ("x less" if r >= 1 else "x more")


ACC = "final test acc (mean ± 95% t-CI, n seeds)"


def _acc_cell(m, c, n, dv, runs) -> str:
    """``0.958 ± 0.004 (n=3)``; one seed: ``0.958 (n=1)``; all diverged: ``diverged``."""
    if dv and dv == runs:
        return "diverged"
    cell = _num(m, ".3f") + ("" if pd.isna(c) else f" ± {c:.3f}") + f" (n={int(n)})"
    return cell + (f" ({dv}/{runs} diverged)" if dv else "")


DAMAGED = "damaged"


def split_damaged(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``(rows of undamaged runs, sorted ids of damaged runs)``: a damaged run is never averaged
    with healthy ones."""
    if "status" not in df or not len(df):
        return df, []
    bad = df["status"].astype(object).eq(DAMAGED).to_numpy(bool)
    return df[~bad], sorted(map(str, set(df.loc[bad, "run_id"])))


def _left_out(ids: list[str]) -> str:
    return (f"left out: {len(ids)} damaged run(s) (unreadable run.json): {', '.join(ids)}; "
            "`harness run` of their config runs them again")


def _table(summary_df: pd.DataFrame) -> pd.DataFrame:
    """The per-setting table (mean over seeds; every varying config key is a column) with
    every cell formatted as text; damaged runs left out (:func:`split_damaged`)."""
    summary_df, _ = split_damaged(summary_df)
    agg = stats.aggregate(summary_df)
    by = stats.setting_columns(summary_df)
    if BASELINE in set(summary_df["algorithm"].dropna()) and agg["algorithm"].nunique() > 1:
        on = [c for c in stats.MATCH_ON if c in agg.columns]
        # and the system/data keys that vary (network, compute, ...), never the algorithm's own
        on += [c for c in by if c.startswith("cfg.") and not c.startswith(("cfg.algorithm.", "cfg.topology."))]
        agg = stats.reduction_vs(agg, BASELINE, "total_bytes", on=on)
    out = pd.DataFrame({settings.short(c): agg[c].map(settings.fmt) for c in by})
    out["runs"] = [f"{n}" for n in agg["runs"]]
    out[ACC] = [_acc_cell(*v) for v in zip(agg["final_test_acc"], agg["final_test_acc_ci"],
                                          agg["final_test_acc_n"], agg["diverged"], agg["runs"])]
    out["total bytes"] = agg["total_bytes"].map(human_bytes)
    if "total_bytes_reduction" in agg:
        out[f"bytes vs {BASELINE}"] = [
            "baseline" if a == BASELINE else _times(r) for a, r in zip(agg["algorithm"], agg["total_bytes_reduction"])]
    out["time"] = agg["time_s"].map(lambda t: _num(t, ".4g", " s"))
    target = summary_df["target_acc"].iloc[0] if len(summary_df) else math.nan
    out[f"time to {target:g} acc (interpolated)"] = [
        (f"never ({r}/{n})" if r == 0 else f"{_num(t, '.4g', ' s')} ({r}/{n})")
        for t, r, n in zip(agg["time_to_target_s"], agg["reached"].astype(int), agg["runs"])]
    return out.reset_index(drop=True)


def format_summary(summary_df: pd.DataFrame) -> str:
    """A short fixed-width text table of a summary: one line per algorithm/partition
    (and any other setting that varies): runs, final test acc (mean ± 95% t half-width),
    total bytes (KB/MB/GB), time, and time to target as "mean over reached (k/n)". Damaged
    runs are left out and named on a last line."""
    kept, damaged = split_damaged(summary_df)
    if not len(kept):
        return _left_out(damaged) if damaged else "no runs"
    t = _table(kept)
    cols = list(t.columns)
    widths = [max(len(c), *(len(v) for v in t[c])) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in t.itertuples(index=False)]
    return "\n".join(lines + ([_left_out(damaged)] if damaged else []))


def _markdown(t: pd.DataFrame) -> str:
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, t.columns)) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td{white-space:nowrap}
th{background:#f2f2f2}.note{background:#fff4e5;border-left:4px solid #f90;padding:0.5em 1em;margin:1em 0}
img{max-width:100%}.wide{overflow-x:auto}figure{margin:1.5em 0}pre{background:#f7f7f7;padding:0.5em;font-size:0.85em}"""


def _html(root, summary_df, table, figures, fig_errors, run_list, problems, target_acc, meta=None) -> str:
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
    parts += ["<h2>Summary (mean over seeds)</h2>", table.to_html(index=False),
              _how_to_read(summary_df, stats.setting_columns(summary_df), target_acc)]
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        info = (meta or {}).get(name, {})
        notes = [n for n in info.get("notes", []) if n not in info.get("drawn", [])]  # not twice
        said = "".join(f"<br><small>{e(n)}</small>" for n in notes)
        parts.append(f"<figure><img src=\"data:image/png;base64,{b64}\" alt='{e(name)}'>"
                     f"<figcaption>{e(name)} (<a href='{e(name)}.svg'>SVG</a>){said}</figcaption></figure>")
    runs_t = summary_df[[c for c in summary_df.columns if not c.startswith("cfg.")]].copy()
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
            f"({html.escape(keys)}); only seeds are averaged. <b>final test acc</b>: the consensus model (mean of the "
            f"workers' models) at the last evaluation, mean over the n seeds ± the half-width of the 95% Student-t "
            f"interval (none for n=1); diverged runs are left out and counted. <b>total bytes</b>: bytes sent, summed "
            f"over workers, at the end (counters are cumulative). <b>time</b>: the run's clock at its end, in {clock}. "
            f"<b>time to {target_acc:g} acc</b>: interpolated linearly between evaluations{every} (the last below "
            f"and the first at or above the target), mean over the runs that reached it (k/n). See docs/results.md.</p>")


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
