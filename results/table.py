"""The per-setting table: one row per setting, every number the mean over seeds with its interval.

Seeds are the only thing averaged (:mod:`results.settings`); every column of a number says
``mean ± half-width of the 95 % Student-t interval over the seeds that have it`` (no ``±`` for one
seed): final accuracy, perplexity (language models), total bytes, time, and time, bytes and rounds
to the target accuracy (means over the runs that reached it, ``(k/n)``). A key that does not apply
to a setting (``beta2`` of an SGD run) is blank there, and is a column only if it varies where it
applies (:func:`results.settings.blank_unused`). The same text cells feed the terminal
(:func:`format_summary`), ``summary.md``, ``index.html`` and ``summary.tex`` (:mod:`results.latex`).
"""
from __future__ import annotations

import math

import pandas as pd

from results import settings, stats

BASELINE = "sync_sgd"
ACC = "final test acc (mean ± 95% t-CI, n seeds)"
PPL = "final test ppl (mean ± 95% t-CI, n seeds)"
DAMAGED = "damaged"
#: columns the terminal table leaves out to stay readable (the HTML, markdown and LaTeX have them)
WIDE_ONLY = ("bytes to", "rounds to")


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


def _half(c: float, fmt) -> str:
    """`` ± 0.2`` (two significant digits), `` ± 0`` for an exact tie, "" without an interval."""
    if pd.isna(c):
        return ""
    return " ± 0" if c == 0 else f" ± {fmt(c)}"


def interval(m: float, c: float, fmt=lambda v: f"{v:.4g}", unit: str = "") -> str:
    """``2.66 ± 0.63 s``: the half-width to two significant digits and the mean to the same
    decimals (its other digits are noise); without an interval (one seed) or with an exact tie
    (``± 0``) the mean in ``fmt``."""
    if pd.isna(m):
        return "-"
    if fmt is human_bytes:
        return human_bytes(m) + ("" if pd.isna(c) else " ± 0" if c == 0 else f" ± {human_bytes(float(f'{c:.2g}'))}")
    if pd.isna(c) or c == 0 or not math.isfinite(c):
        return f"{fmt(m)}{_half(c, str)}{unit}"
    d = max(0, 1 - math.floor(math.log10(abs(c))))
    return f"{m:.{d}f} ± {c:.{d}f}{unit}"


def _times(r: float) -> str:
    """A reduction factor as text: 8.0 -> "8x less", 0.5 -> "2x more"."""
    if pd.isna(r) or r <= 0 or math.isinf(r):
        return "-"
    f = r if r >= 1 else 1 / r
    return (f"{f:.3g}" if f < 1000 else f"{f:,.0f}") + ("x less" if r >= 1 else "x more")


def _acc_cell(m, c, n, dv, runs) -> str:
    """``0.958 ± 0.004 (n=3)``; one seed: ``0.958 (n=1)``; all diverged: ``diverged``."""
    if dv and dv == runs:
        return "diverged"
    cell = _num(m, ".3f") + ("" if pd.isna(c) else f" ± {c:.3f}") + f" (n={int(n)})"
    return cell + (f" ({dv}/{runs} diverged)" if dv else "")


def _ppl_cell(m, c, n) -> str:
    return "-" if pd.isna(m) else f"{interval(m, c)} (n={int(n)})"


def split_damaged(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``(rows of undamaged runs, sorted ids of damaged runs)``: a damaged run is never averaged
    with healthy ones."""
    if "status" not in df or not len(df):
        return df, []
    bad = df["status"].astype(object).eq(DAMAGED).to_numpy(bool)
    return df[~bad], sorted(map(str, set(df.loc[bad, "run_id"])))


def left_out(ids: list[str]) -> str:
    return (f"left out: {len(ids)} damaged run(s) (unreadable run.json): {', '.join(ids)}; "
            "`harness run` of their config runs them again")


def _to_target(agg: pd.DataFrame, col: str, fmt, unit: str = "") -> list[str]:
    return [f"never (0/{n})" if r == 0 else f"{interval(m, c, fmt, unit)} ({r}/{n})"
            for m, c, r, n in zip(agg[col], agg[f"{col}_ci"], agg["reached"].astype(int), agg["runs"])]


def table(summary_df: pd.DataFrame) -> pd.DataFrame:
    """The per-setting table (mean over seeds ± 95 % interval; every varying config key that
    applies is a column) with every cell formatted as text; damaged runs left out."""
    summary_df, _ = split_damaged(summary_df)
    summary_df = settings.blank_unused(summary_df)
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
    if "final_test_ppl" in agg and agg["final_test_ppl"].notna().any():
        out[PPL] = [_ppl_cell(*v) for v in zip(agg["final_test_ppl"], agg["final_test_ppl_ci"], agg["final_test_ppl_n"])]
    out["total bytes"] = [interval(m, c, human_bytes) for m, c in zip(agg["total_bytes"], agg["total_bytes_ci"])]
    if "total_bytes_reduction" in agg:
        out[f"bytes vs {BASELINE}"] = [
            "baseline" if a == BASELINE else _times(r) for a, r in zip(agg["algorithm"], agg["total_bytes_reduction"])]
    out["time"] = [interval(m, c, unit=" s") for m, c in zip(agg["time_s"], agg["time_s_ci"])]
    target = summary_df["target_acc"].iloc[0] if len(summary_df) else math.nan
    out[f"time to {target:g} acc (interpolated)"] = _to_target(agg, "time_to_target_s", lambda v: f"{v:.4g}", " s")
    out[f"bytes to {target:g} acc"] = _to_target(agg, "bytes_to_target", human_bytes)
    out[f"rounds to {target:g} acc"] = _to_target(agg, "rounds_to_target", lambda v: f"{v:.4g}")
    return out.reset_index(drop=True)


def format_summary(summary_df: pd.DataFrame) -> str:
    """A fixed-width text table of a summary for a terminal: one line per setting: runs, final
    test acc (and perplexity for language models), total bytes and time as mean ± 95 % t
    half-width, time to target as "mean ± half-width (k/n)". Bytes and rounds to target are in
    the report only (width). Damaged runs are left out and named on a last line."""
    kept, damaged = split_damaged(summary_df)
    if not len(kept):
        return left_out(damaged) if damaged else "no runs"
    t = table(kept)
    t = t[[c for c in t.columns if not c.startswith(WIDE_ONLY)]]
    cols = list(t.columns)
    widths = [max(len(c), *(len(v) for v in t[c])) for c in cols]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in t.itertuples(index=False)]
    return "\n".join(lines + ([left_out(damaged)] if damaged else []))


def markdown(t: pd.DataFrame) -> str:
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, t.columns)) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in t.itertuples(index=False)]
    return "\n".join(lines) + "\n"
