"""Which settings tell runs apart, and readable names for them.

A directory of runs mixes algorithms, data partitions, networks, seeds... A summary that
averaged over anything but the seed would present different experiments as one (four
networks averaged "as if they were seeds"), so the setting of a run is *every* key of its
resolved config that varies across the runs, except the seed:

- identity columns (``task, algorithm, partition, topology, n_workers, backend``): when they
  take more than one value (``algorithm`` and ``partition`` always, as the tables expect);
- ``hp.*`` (and ``cfg.algorithm.*``): when they take more than one value among the runs that
  have them, or vary (present / absent) within one algorithm;
- every other ``cfg.*`` column: when it takes more than one value (missing counts as one).

A key that does not apply to a run is no setting of it: ``beta2`` of an SGD inner optimizer,
``task.alpha`` (the Dirichlet concentration) of an i.i.d. partition. Such cells are blanked
(:func:`blank_unused`, rules in :data:`APPLIES`) before deciding what varies, so a column
appears only when the key varies among the runs it applies to.

Left out: seeds (``seed``, ``cfg.seed``, any ``*.seed``), ``run_id``, the config's ``name``, the
report's ``target_acc``, cfg keys that repeat an identity or ``hp.*`` column
(``cfg.topology.name`` is ``topology``, ``cfg.algorithm.period`` is ``hp.period``) and exact
copies of a column already kept. A key that differs only between algorithms (``lr`` 0.1 for
one, 0.05 for another) is kept: a reader must see it.

:func:`labels` names each run's setting from the keys that matter: ``"dpsgd · network.latency_s=0.01"``
(the algorithm bare, always, then ``key=value`` for each other key that splits the runs further,
except where the run has no value for it; ``cfg.`` and ``hp.`` prefixes dropped). Never a hash.
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from results.schema import HP_PREFIX

CFG = "cfg."
IDENTITY = ["task", "algorithm", "partition", "topology", "n_workers", "backend"]
ALWAYS = ("algorithm", "partition")
#: cfg keys that repeat an identity column (kept as the identity column)
SAME_AS = {"cfg.algorithm.name": "algorithm", "cfg.task.name": "task", "cfg.task.partition": "partition",
           "cfg.topology.name": "topology", "cfg.n_workers": "n_workers", "cfg.backend": "backend"}
NOT_SETTINGS = {"run_id", "seed", "cfg.name", "cfg.target_acc", "status"}
SEP = " · "
#: field -> (the key that selects whether it applies, the values for which it does). Optimizer
#: fields are spliced flat (harness.transforms.Optimizer: ``inner`` names the rule, ``outer_beta2``
#: belongs to ``outer``); the selector key sits beside the field (same prefix, ``<name>_`` stem).
_SGD, _ADAM = ("sgd",), ("adamw",)
APPLIES = {"momentum": _SGD, "nesterov": _SGD, "beta1": _ADAM, "beta2": _ADAM, "eps": _ADAM}
TASK_APPLIES = {"cfg.task.alpha": ("dirichlet",), "cfg.task.exponent": ("powerlaw",)}


def _is_seed(col: str) -> bool:
    return col == "seed" or col.endswith(".seed")


def per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run (the first), as :func:`varying` needs; a summary is returned as is."""
    if "run_id" in frame and frame["run_id"].duplicated().any():
        return frame.groupby("run_id", sort=False).head(1).reset_index(drop=True)
    return frame


def _key(v: object) -> object:
    """A hashable, comparable stand-in for a cell (missing -> one value)."""
    return "<missing>" if v is None or (not isinstance(v, (list, dict)) and pd.isna(v)) else str(v)


def _selector(col: str, frame: pd.DataFrame) -> tuple[str, tuple] | None:
    """``(selector column, values it must take)`` for a field with an applicability rule."""
    if col in TASK_APPLIES:
        sel = "partition" if "partition" in frame else "cfg.task.partition"
        return (sel, TASK_APPLIES[col]) if sel in frame else None
    for pre in (HP_PREFIX, CFG + "algorithm."):
        if not col.startswith(pre):
            continue
        key = col.removeprefix(pre)
        for field, values in APPLIES.items():
            if key == field or key.endswith("_" + field):
                stem = key[: -len(field) - 1] if key != field else "inner"
                return (pre + stem, values) if pre + stem in frame else None
    return None


def unused(frame: pd.DataFrame, col: str) -> pd.Series:
    """True where ``col`` does not apply to the row (an optimizer field of another rule, a
    partition's parameter under another partition). Rows whose selector is not one of the rule's
    names (a non-optimizer ``server`` key, a missing value) keep the field."""
    rule = _selector(col, frame)
    if rule is None:
        return pd.Series(False, index=frame.index)
    sel, values = rule
    names = {v for vs in (APPLIES.values() if sel.startswith((HP_PREFIX, CFG + "algorithm.")) else
                         TASK_APPLIES.values()) for v in vs}
    v = frame[sel].astype(object)
    return v.isin(names) & ~v.isin(values)


def blank_unused(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every cell of a key that does not apply to its row set to missing."""
    out = frame.copy()
    for c in frame.columns:
        bad = unused(frame, c)
        if bad.any():
            out[c] = out[c].astype(object).where(~bad, None)
    return out


def varying(frame: pd.DataFrame, always: Iterable[str] = ALWAYS) -> list[str]:
    """Columns (of a summary or a table) whose values tell the runs' settings apart, in
    display order: identity columns, then ``hp.*``, then the other ``cfg.*`` (see the module)."""
    s = per_run(frame)
    always = [c for c in always if c in s.columns]
    keys = {c: s[c].map(_key) for c in s.columns if c not in NOT_SETTINGS and not _is_seed(c)}
    applies = {c: ~unused(s, c) for c in keys}  # a key is judged on the runs it applies to only
    algo = s["algorithm"].map(_key) if "algorithm" in s else pd.Series("", index=s.index)
    hps = sorted(c for c in keys if c.startswith(HP_PREFIX))
    algo_cfg = sorted(c for c in keys if c.startswith(CFG + "algorithm.") and c not in SAME_AS
                      and HP_PREFIX + c.removeprefix(CFG + "algorithm.") not in keys)
    other = sorted(c for c in keys if c.startswith(CFG) and c not in SAME_AS and c not in algo_cfg
                   and not c.startswith(CFG + "algorithm."))
    out = [c for c in IDENTITY if c in keys and (c in always or keys[c].nunique() > 1)]
    for c in hps + algo_cfg:
        k = keys[c][applies[c]]
        within = k.groupby(algo[applies[c]]).nunique().gt(1).any()
        if k[k != "<missing>"].nunique() > 1 or within:
            out.append(c)
    out += [c for c in other if keys[c][applies[c]].nunique() > 1]
    kept: list[str] = []
    for c in out:  # drop exact copies of a column already kept (never the `always` ones)
        if c in always or not any(keys[k].equals(keys[c]) for k in kept):
            kept.append(c)
    return kept


def short(col: str) -> str:
    """``cfg.network.latency_s -> network.latency_s``, ``hp.period -> period``."""
    return col.removeprefix(CFG).removeprefix(HP_PREFIX)


def fmt(v: object) -> str:
    """A cell as text: ``8.0 -> "8"``, ``1.25e8 -> "1.25e+08"``, missing -> ``"-"``."""
    if v is None or (not isinstance(v, (list, dict)) and pd.isna(v)):
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)


def informative(frame: pd.DataFrame, cols: list[str]) -> list[str]:
    """The columns of ``cols`` (in order) that split the runs into more groups than the
    ones before them: ``topology`` adds nothing when only ``dpsgd`` has one."""
    s = per_run(frame)
    out, groups = [], 1
    for c in cols:
        n = s[[*out, c]].map(_key).drop_duplicates().shape[0]
        if n > groups:
            out.append(c)
            groups = n
    return out


def labels(frame: pd.DataFrame, leave_out: Iterable[str] = ("task",), cols: list[str] | None = None) -> pd.Series:
    """run_id -> readable setting name from the varying keys but ``leave_out`` (facets):
    ``"local_sgd · period=8 · partition=dirichlet"``. Runs differing only by seed share a label."""
    s = blank_unused(per_run(frame))  # beta2=0.999 is no part of an SGD run's name
    cols = varying(s) if cols is None else cols
    cols = ["algorithm", *(c for c in cols if c != "algorithm" and c not in set(leave_out))]
    rest = informative(s, [c for c in cols if c in s.columns])
    cols = ["algorithm", *(c for c in rest if c != "algorithm")] if "algorithm" in s else rest
    out = {}
    for _, r in s.iterrows():
        parts = [fmt(r["algorithm"])] if "algorithm" in cols else []
        parts += [f"{short(c)}={fmt(r[c])}" for c in cols if c != "algorithm" and fmt(r[c]) != "-"]
        out[r["run_id"]] = SEP.join(parts) or "all runs"
    return pd.Series(out, name="label", dtype=object)
