"""Merge every run under a directory into one long, tidy DataFrame.

``load(DIR)`` finds every run directory below ``DIR`` (any depth: a directory holding
``run.json`` and/or ``metrics.parquet``), reads the tables with pyarrow, concatenates
them once, and adds the run record: a ``status`` column and the resolved config
flattened into ``cfg.<dotted.path>`` columns (``cfg.algorithm.period``; lists become
JSON text so that every column stays hashable and groupable).

Statuses (``run.json``'s, plus what reading finds): ``running`` (or killed), ``finished``,
``failed``, ``diverged`` (stopped at a non-finite loss or model; rows up to then are kept),
``damaged`` (a ``run.json`` or ``metrics.parquet`` that cannot be read: :func:`runs` checks the
parquet footer, cheap; :func:`load` reads the tables and skips unreadable ones) and
``unknown`` (no ``run.json``). Rows of a run whose ``run.json`` is unreadable still load, with
status ``damaged``, so summaries flag them instead of merging them as if nothing were wrong.

A run still running (or killed, or failed) has no ``metrics.parquet`` yet; its rows so far are
read from its live files (``metrics.live.parquet``, or ``live/rank-<k>.parquet`` per rank of a
real backend: :mod:`harness.live`), marked by the ``partial`` column (True) beside its status. A
run with a final table is read from that table only.

Config fields that say how a run is written, not what it computes (``live``, ``checkpoint``:
:data:`NOT_CONFIG`), are left out of the ``cfg.*`` columns, as they are left out of the run id:
otherwise runs written before such a field existed would form a setting of their own.

Bad input never aborts the whole load. Each problem (corrupt or half-written parquet,
missing metrics file, unreadable ``run.json``, schema mismatch, a run_id that disagrees
with its ``run.json`` or appears twice) is reported as a :class:`ResultsWarning` whose
message starts with the offending file's path, and the run is skipped; the same messages
are kept in ``df.attrs["problems"]``. Only "nothing to load at all" raises
:class:`ResultsError`, with a one-line message.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute.sort_indices)
import pyarrow.parquet as pq

from results.errors import ResultsError, ResultsWarning
from results.schema import COLUMNS, OPTIONAL, conform
from results.store import METRICS, RUN_JSON, damage, read_json

CFG_PREFIX = "cfg."
LIVE_FILE = "metrics.live.parquet"  # a simulated run's rows so far (harness.live)
LIVE_DIR = "live"  # a real run's rows so far: live/rank-<k>.parquet, each rank's own
NOT_CONFIG = ("live", "checkpoint")  # config fields that never change a number: no cfg.* columns
ENDED = ("finished", "diverged")  # runs whose table is complete: what ``finished_only`` keeps
_ARROW = {"string": pa.large_string(), "int64": pa.int64(), "float64": pa.float64()}
_TARGET = {c: _ARROW[t] for c, t in COLUMNS.items()}


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every directory below ``root`` (sorted) that holds a run.json or a metrics.parquet."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if RUN_JSON in filenames or METRICS in filenames:
            found.append(Path(dirpath))
    return sorted(found)


def flatten(obj: object, prefix: str = CFG_PREFIX) -> dict[str, object]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"cfg.a.b": 1, "cfg.c": "[1, 2]"}``."""
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                out.update(flatten(v, f"{prefix}{k}."))
            elif isinstance(v, (list, tuple, dict)):
                out[f"{prefix}{k}"] = json.dumps(v, default=str)
            else:
                out[f"{prefix}{k}"] = v
    return out


def _config_columns(cfg: dict) -> dict[str, object]:
    return flatten({k: v for k, v in cfg.items() if k not in NOT_CONFIG})


def live_files(run_dir: Path) -> list[Path]:
    """A run directory's live files (rows so far), or [] (none, or a final table exists)."""
    if (run_dir / METRICS).exists():
        return []
    return [p for p in [run_dir / LIVE_FILE, *sorted((run_dir / LIVE_DIR).glob("rank-*.parquet"))] if p.is_file()]


def _read_live(files: list[Path], run_id: object) -> tuple[pa.Table | None, str | None]:
    """The rows so far from ``files`` (every rank's), sorted as a final table is."""
    tables = []
    for f in files:
        table, problem = _read_table(f, run_id)
        if problem:
            return None, problem
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.take(pa.compute.sort_indices(table, [("step", "ascending"), ("worker", "ascending")])), None


def _no_runs(root) -> ResultsError:
    return ResultsError(f"no runs under {root}: run `harness run CONFIG --out {root}` first")


def runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per run directory, from the ``run.json`` files and the parquet footers only
    (cheap; no tables read).

    Columns: ``run_id, status, error, started, finished, path, has_metrics, partial`` (no final table
    but live rows so far), ``diverged`` (run.json's
    ``{"step", "worker", "what", "value", "stopped"}`` or None), ``config`` (a dict) and the
    flattened ``cfg.*`` columns. A directory without a run.json gets ``status="unknown"``; an
    unreadable run.json or metrics.parquet gives ``status="damaged"`` with the reason in
    ``error``. Raises ``ResultsError`` if there are none.
    """
    rows = []
    for d in find_runs(root):
        why = damage(d)
        try:
            rec = read_json(d / RUN_JSON) if (d / RUN_JSON).exists() else {}
        except ResultsError:  # ``why`` names it
            rec = {}
        has_metrics = (d / METRICS).exists()
        cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        status, error = rec.get("status", "unknown"), rec.get("error")
        if why:
            status, error = "damaged", "; ".join([*([str(error)] if error else []), why])
        rows.append({"run_id": rec.get("run_id", d.name), "status": status, "error": error,
                     "started": rec.get("started"), "finished": rec.get("finished"), "path": str(d),
                     "has_metrics": has_metrics, "partial": bool(live_files(d)), "diverged": rec.get("diverged"),
                     "config": cfg, **_config_columns(cfg)})
    if not rows:
        raise _no_runs(root)
    return pd.DataFrame(rows)


def _read_table(path: Path, run_id: object) -> tuple[pa.Table | None, str | None]:
    """Read and check one metrics file: ``(table, None)`` or ``(None, problem)``."""
    try:
        with pq.ParquetFile(path) as f:  # ~2x faster than pq.read_table for small files
            table = f.read(use_threads=False)
    except Exception as e:  # ArrowInvalid / OSError / ...: not a readable parquet file
        return None, f"{path}: unreadable parquet ({type(e).__name__}: {e}); run skipped"
    names = set(table.column_names)
    missing = [c for c in COLUMNS if c not in names and c not in OPTIONAL]
    if missing:
        return None, f"{path}: schema mismatch, missing column(s) {missing}; run skipped"
    schema = pa.schema([pa.field(f.name, _TARGET.get(f.name, f.type)) for f in table.schema])
    try:
        table = table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        return None, f"{path}: schema mismatch ({e}); run skipped"
    if run_id is not None and table.num_rows:
        ids = table.column("run_id").unique().to_pylist()
        if ids != [run_id]:
            return None, f"{path}: run_id(s) {ids[:3]} differ from run.json's {run_id!r}; run skipped"
    return table, None


def _concat(tables: list[pa.Table]) -> pd.DataFrame:
    """Concatenate once; columns some runs lack (other algorithms' hp.*) become null."""
    try:
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # e.g. hp.x is text in one run and a number in another: let pandas hold objects.
        return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def load(root: str | os.PathLike, *, finished_only: bool = False) -> pd.DataFrame:
    """All runs under ``root`` as one tidy frame: schema columns, ``hp.*``, ``status``, ``partial``
    (rows so far of a run without a final table), ``cfg.*``.

    ``finished_only`` keeps runs that ended with a complete table: ``"finished"`` or
    ``"diverged"`` (summaries show the latter as diverged, not with an accuracy). Rows of a run
    whose run.json cannot be read get status ``"damaged"``. Problems are warned
    (``ResultsWarning``, naming the file) and listed in ``df.attrs["problems"]``.
    Raises ``ResultsError`` if ``root`` holds no run, or no readable one.
    """
    dirs = find_runs(root)
    if not dirs:
        raise _no_runs(root)
    problems: list[str] = []
    tables: list[pa.Table] = []
    metas: list[dict] = []
    seen: dict[str, Path] = {}
    for d in dirs:
        rec: dict = {}
        status = "unknown"
        if (d / RUN_JSON).exists():
            try:
                rec = read_json(d / RUN_JSON)
                status = rec.get("status", "unknown")
            except ResultsError as e:
                problems.append(f"{e}; its rows are marked status 'damaged'")
                status = "damaged"
        else:
            problems.append(f"{d / RUN_JSON}: missing; status unknown")
        if finished_only and status not in ENDED:
            continue
        partial = live_files(d)
        if not (d / METRICS).exists() and not partial:
            problems.append(f"{d / METRICS}: missing (status {status}); run skipped")
            continue
        if partial:  # running, killed or failed: its rows so far
            table, problem = _read_live(partial, rec.get("run_id"))
        else:
            table, problem = _read_table(d / METRICS, rec.get("run_id"))
        if problem:
            problems.append(problem)
            continue
        if table.num_rows == 0:
            continue
        ids = table.column("run_id").unique().to_pylist()
        dup = [i for i in ids if i in seen]
        if dup:
            problems.append(f"{d / METRICS}: run_id {dup[0]!r} already loaded from {seen[dup[0]]}; run skipped")
            continue
        seen.update({i: partial[0] if partial else d / METRICS for i in ids})
        tables.append(table)
        cfg = rec.get("config") if isinstance(rec.get("config"), dict) else {}
        metas.append({"status": status, "partial": bool(partial), **_config_columns(cfg)})
    for p in problems:
        warnings.warn(p, ResultsWarning, stacklevel=2)
    if not tables:
        what = "finished " if finished_only else "readable "
        raise ResultsError(f"no {what}runs under {root} ({len(dirs)} run dir(s), {len(problems)} problem(s))")
    df = conform(_concat(tables))
    meta = pd.DataFrame.from_records(metas)
    meta = meta.take(np.repeat(np.arange(len(tables)), [t.num_rows for t in tables]))
    df = df.drop(columns=[c for c in meta.columns if c in df.columns])  # the run record wins
    df = pd.concat([df, meta.reset_index(drop=True)], axis=1)
    df.attrs["problems"] = problems
    return df
