"""The setup section of a report: what was run, from the runs' ``run.json`` configs.

A reader of a figure needs the experiment's setup before its numbers: the task and model size,
how many workers (and clients), the compute and network models behind simulated time, how many
steps and seeds, and what varies between the settings being compared. All of it is in every
run's resolved config; this module states it once, a key that takes one value as ``key=value``,
one that differs between runs with its values (per algorithm when each algorithm has one value,
as ``steps`` in a preset whose methods have their own budgets).

Model size is ``run.json``'s ``n_params`` (or ``model.n_params``) where the harness records it;
a run without it says "not recorded". Nothing here imports the harness: ``results`` knows the
table and the run records only.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from results import settings
from results.store import read_json

SIMULATED = {"simpy", "stacked"}
BASELINE = "sync_sgd"
#: top-level config keys shown as their own row (the rest: blocks or left out)
BLOCKS = (("Task", "task"), ("Compute model", "compute"), ("Network model", "network"),
          ("Faults", "faults"), ("Slowdown", "slowdown"))


def _order(algos) -> list[str]:
    """The baseline first, then alphabetical (as the figures' legends)."""
    return sorted(set(algos), key=lambda a: (a != BASELINE, a))


def _text(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list) and len(v) > 8:  # one factor per client: say its size and range, not 100 numbers
        nums = [x for x in v if isinstance(x, (int, float))]
        span = f", {min(nums):g} to {max(nums):g}" if len(nums) == len(v) else ""
        return f"[{len(v)} values{span}]"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return str(v)


def _empty(v: object) -> bool:
    return v is None or v == {} or v == [] or (isinstance(v, float) and pd.isna(v))


def _values(cfgs: list[dict], algos: list[str], get) -> str | None:
    """One value as ``v``; several as ``v1 / v2`` or, when each algorithm has one,
    ``v1 (algo1), v2 (algo2)``; None when every run lacks it."""
    vals = [get(c) for c in cfgs]
    shown = [None if _empty(v) else _text(v) for v in vals]
    distinct = list(dict.fromkeys(shown))
    if distinct == [None]:
        return None
    if len(distinct) == 1:
        return distinct[0]
    per = {a: set() for a in _order(algos)}
    for a, v in zip(algos, shown):
        per[a].add(v)
    if all(len(v) == 1 for v in per.values()) and len(per) > 1:
        return ", ".join(f"{next(iter(v)) or '-'} ({a})" for a, v in per.items())
    return " / ".join(v or "-" for v in distinct)


def _flat(d: dict, pre: str = "") -> dict:
    """``{"intra": {"latency_s": 1e-6}}`` -> ``{"intra.latency_s": 1e-6}`` (non-empty dicts only)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{pre}{k}."))
        else:
            out[f"{pre}{k}"] = v
    return out


def _block(cfgs: list[dict], algos: list[str], key: str) -> str | None:
    """``model=lognormal, sigma=0.3, ...`` for a config block (empty fields left out)."""
    blocks = [_flat(c.get(key)) if isinstance(c.get(key), dict) else {} for c in cfgs]
    if not any(blocks):
        whole = _values(cfgs, algos, lambda c: c.get(key))
        return whole
    fields = list(dict.fromkeys(k for b in blocks for k in b))
    flat = {k: _values(blocks, algos, lambda b, k=k: b.get(k)) for k in fields}
    first = [k for k in ("name", "model") if k in flat]
    order = first + [k for k in fields if k not in first]
    return ", ".join(f"{k}={flat[k]}" if "(" not in flat[k] and " / " not in flat[k] else f"{k}: {flat[k]}"
                     for k in order if flat[k] is not None)


def _n_params(run_list: pd.DataFrame) -> str:
    """Model size from run.json's ``n_params`` (one read per distinct task config)."""
    found = {}
    for path, cfg in zip(run_list["path"], run_list["config"]):
        key = json.dumps(cfg.get("task"), sort_keys=True, default=str)
        if key in found:
            continue
        try:
            rec = read_json(Path(path) / "run.json")
        except Exception:  # a damaged record is reported elsewhere
            continue
        n = rec.get("n_params", (rec.get("model") or {}).get("n_params") if isinstance(rec.get("model"), dict) else None)
        found[key] = n
    sizes = sorted({int(n) for n in found.values() if isinstance(n, (int, float)) and not pd.isna(n)})
    if not sizes:
        return "not recorded (the runs' run.json has no n_params)"
    return " / ".join(f"{n:,}" for n in sizes) + " parameters"


def rows(run_list: pd.DataFrame, summary_df: pd.DataFrame) -> list[tuple[str, str]]:
    """``(item, value)`` rows of the setup section for the runs of ``summary_df``."""
    keep = run_list[run_list["run_id"].isin(set(summary_df["run_id"]))]
    if keep.empty:
        return []
    cfgs = [c if isinstance(c, dict) else {} for c in keep["config"]]
    algos = [str((c.get("algorithm") or {}).get("name", "-")) if isinstance(c.get("algorithm"), dict) else "-"
             for c in cfgs]
    out = []
    for title, key in BLOCKS[:1]:
        out.append((title, _block(cfgs, algos, key) or "-"))
    out.append(("Model size", _n_params(keep)))
    out.append(("Workers", _values(cfgs, algos, lambda c: c.get("n_workers")) or "-"))
    clients = _values(cfgs, algos, lambda c: c.get("n_clients"))
    if clients:
        out.append(("Clients", clients))
    out.append(("Algorithms", ", ".join(_order(algos))))
    backends = set(summary_df["backend"].astype(str))
    clock = ("simulated seconds from the compute and network models" if backends <= SIMULATED else
             "wall-clock seconds" if not backends & SIMULATED else "simulated (simpy/stacked) and wall clock (others)")
    out.append(("Backend", f"{', '.join(sorted(backends))} (time in {clock})"))
    for title, key in BLOCKS[1:]:
        v = _block(cfgs, algos, key)
        if v or key in ("compute", "network"):
            out.append((title, v or "none"))
    out.append(("Steps", _values(cfgs, algos, lambda c: c.get("steps")) or "-"))
    ev = _values(cfgs, algos, lambda c: c.get("eval_every"))
    if ev:
        out.append(("Evaluation every", f"{ev} steps"))
    seeds = sorted({int(s) for s in pd.to_numeric(summary_df["seed"], errors="coerce").dropna()})
    per = summary_df.groupby(settings.labels(summary_df).reindex(summary_df["run_id"]).to_numpy())["run_id"].nunique()
    n = f"{per.min()}" if per.min() == per.max() else f"{per.min()}-{per.max()}"
    out.append(("Seeds", f"{', '.join(map(str, seeds))} (n = {n} per setting)"))
    by = settings.varying(settings.blank_unused(summary_df))
    varies = []
    per_run = settings.blank_unused(settings.per_run(summary_df))
    for c in by:
        vals = sorted({settings.fmt(v) for v in per_run[c]} - {"-"}, key=str)
        if len(vals) > 1 or c not in settings.ALWAYS:
            varies.append(f"{settings.short(c)} ({', '.join(vals)})")
    out.append(("What varies between settings",
                 f"{len(per)} setting(s): " + ("; ".join(varies) if varies else "nothing but the seed")))
    return out


def section(run_list: pd.DataFrame, summary_df: pd.DataFrame) -> str:
    """The setup section as HTML (``<section id='setup'>``, a two-column table)."""
    e = html.escape
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows(run_list, summary_df))
    return (f"<section id='setup'><h2>Setup</h2><table class='setup'>{body}</table>"
            "<p class='how'>From the runs' resolved configs (run.json). A key that takes one value is shown as "
            "key=value; one that differs between runs lists its values.</p></section>")
