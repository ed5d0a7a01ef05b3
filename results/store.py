"""Reading and writing one run's files: ``metrics.parquet`` and ``run.json``.

A run directory ``DIR/<run_id>/`` holds the tidy table (:mod:`results.schema`) as
``metrics.parquet`` and the run's record (run_id, status, error, resolved config,
versions, start/finish times) as ``run.json``. Both are written *atomically*: the bytes
go to a hidden temporary file in the same directory, which is then ``os.replace``-d
onto the final name, so a reader sees the old file or the new one, never half of one
(a crash leaves only a ``.<name>.*.tmp`` file, which readers ignore).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from results.errors import ResultsError
from results.schema import conform

METRICS = "metrics.parquet"
RUN_JSON = "run.json"


_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) and put back
os.umask(_UMASK)


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """Re-raise an ``OSError`` that names no file (a failed ``write``, pyarrow's "Error writing
    bytes") or only ``path``'s hidden temp file (``.NAME.*``) as the same kind of error naming
    ``path``, with the plain cause (``os.strerror``): the CLI turns any ``OSError`` into one line
    "PATH: cause", so it must know the path the user knows."""
    try:
        yield
    except OSError as e:
        temp = e.filename is not None and os.path.basename(os.fsdecode(e.filename)).startswith(
            f".{Path(path).name}.")
        if (e.filename is not None and not temp) or e.errno is None:
            raise
        raise OSError(e.errno, os.strerror(e.errno), os.fspath(path)) from e


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temp file beside ``path``, then move it onto ``path``:
    a reader (or a killed writer) never leaves half a file. The one way files are written.
    The file gets the permissions a plain ``open(path, "w")`` would (``mkstemp`` makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with naming(path):
            write(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_text(path: str | os.PathLike, text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Conform ``df`` to the schema and write it as parquet at ``path``, atomically.

    Missing schema columns are added as nulls (nullable ``Int64`` for integers); a value
    that cannot take its schema dtype raises ``ValueError`` naming the column.
    """
    table = pa.Table.from_pandas(conform(df), preserve_index=False)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _json_default(obj: Any) -> Any:
    """Make numpy scalars/arrays, paths and sets JSON-serialisable; refuse the rest."""
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON at ``path``, atomically (used for ``run.json``)."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def read_json(path: str | os.PathLike) -> dict:
    """Read a ``run.json``; raise ``ResultsError`` naming the file if it is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: cannot read run record: {e}") from None
    if not isinstance(obj, dict):
        raise ResultsError(f"{path}: run record is a {type(obj).__name__}, not a JSON object")
    return obj


def read_run(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Return ``(table, record)`` of one run directory, the table conformed to the schema.

    Raises ``ResultsError`` (one line, naming the file) if either file is missing or unreadable.
    """
    run_dir = Path(run_dir)
    record = read_json(run_dir / RUN_JSON)
    path = run_dir / METRICS
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:  # ArrowInvalid, OSError, ...: all mean "not a readable table"
        raise ResultsError(f"{path}: cannot read metrics table: {type(e).__name__}: {e}") from None
    try:
        return conform(df), record
    except (TypeError, ValueError) as e:
        raise ResultsError(f"{path}: schema mismatch: {e}") from None


def damage(run_dir: str | os.PathLike) -> str | None:
    """Why a run directory's files cannot be trusted (a ``run.json`` that is not a JSON object,
    a ``metrics.parquet`` without a readable footer: truncated, not parquet), or None. Cheap: the
    parquet footer only. Used by ``results.runs`` (status ``damaged``) and by re-runs, which run
    a damaged run again instead of skipping it as finished."""
    run_dir = Path(run_dir)
    why = []
    if (run_dir / RUN_JSON).exists():
        try:
            read_json(run_dir / RUN_JSON)
        except ResultsError as e:
            why.append(str(e))
    if (run_dir / METRICS).exists():
        try:
            pq.read_metadata(run_dir / METRICS)
        except Exception as e:  # truncated, not parquet, unreadable: the table is lost
            why.append(f"{run_dir / METRICS}: unreadable parquet ({type(e).__name__}: {e})")
    return "; ".join(why) or None
