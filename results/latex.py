"""The per-setting table as LaTeX (booktabs), for pasting into a paper.

It is the same table as ``index.html`` and ``summary.md`` (:func:`results.table.table`: one row
per setting, mean ± 95 % Student-t half-width over seeds), with ``±`` set as ``$\\pm$``, special
characters escaped, text columns left-aligned and number columns right-aligned. Needs
``\\usepackage{booktabs}`` in the preamble. ``write_report`` writes it as ``summary.tex``.
"""
from __future__ import annotations

import re

import pandas as pd

_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "·": r"$\cdot$", "≤": r"$\le$", "×": r"$\times$"}
_RE = re.compile("|".join(map(re.escape, _SPECIAL)))
_NUMBER = re.compile(r"^(-|never|diverged|baseline|[~0-9.]|[0-9.]+x )")


def escape(text: object) -> str:
    """``text`` with LaTeX's special characters escaped (``a_b & 5%`` -> ``a\\_b \\& 5\\%``)."""
    return _RE.sub(lambda m: _SPECIAL[m.group(0)], str(text))


def _align(col: pd.Series) -> str:
    vals = [str(v) for v in col if str(v) not in ("-", "")]
    return "r" if vals and all(_NUMBER.match(v) for v in vals) else "l"


def to_latex(t: pd.DataFrame, caption: str | None = None, label: str | None = "tab:summary",
             caption_tex: str | None = None) -> str:
    """A ``table`` environment with a booktabs ``tabular`` of ``t`` (text cells, as
    :func:`results.table.table` makes them) and ``caption`` (plain text, escaped here) or
    ``caption_tex`` (LaTeX as is) above it, as papers place a table's caption."""
    spec = "".join(_align(t[c]) for c in t.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    if caption or caption_tex:
        lines.append(r"\caption{" + (caption_tex if caption_tex else escape(caption)) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines += [r"\begin{tabular}{" + spec + "}", r"\toprule",
              " & ".join(escape(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(v) for v in row) + r" \\" for row in t.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def summary_latex(summary_df: pd.DataFrame, target_acc: float | None = None) -> str:
    """The LaTeX table of a :func:`results.stats.summary` (damaged runs left out)."""
    from results.table import table

    t = table(summary_df)
    if target_acc is None and len(summary_df) and "target_acc" in summary_df:
        target_acc = float(summary_df["target_acc"].iloc[0])
    cap = (r"Per-setting results: mean over seeds $\pm$ the half-width of the 95\% Student-t interval "
           r"(none for one seed; n seeds per setting)")
    if target_acc is not None:
        cap += (f"; time, bytes and rounds to {target_acc:g} test accuracy are interpolated between evaluations "
                "and averaged over the runs that reached it (k/n)")
    return to_latex(t, caption_tex=cap + ".")
