"""Checks for data read from files (CIFAR-10 batches, text files): one line naming the config
field, the file and the fix, never a silent cast or a traceback later.

Why: ``np.asarray(x, dtype=np.uint8)`` turns float pixels in [0, 1] into black images and 300
into 44 without a word, a label 10 only fails deep in the loss (or never, in a partition), and
an empty test set evaluates to accuracy 0. So values are taken as they are stored, then
checked: an integer dtype (bools, floats and objects refused, as a cast would change them),
every value in its range, and at least one example.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.tasks.module import TaskDataError


def int_values(values: np.ndarray, *, field: str, path: Path, what: str, lo: int, hi: int, fix: str) -> np.ndarray:
    """``values`` as int64 if they are integers in ``lo..hi``; else ``TaskDataError``:
    "FIELD: PATH: WHAT are ...; expected integers LO..HI; FIX"."""
    want = f"expected integers {lo}..{hi}; {fix}"
    if values.dtype.kind not in "iu":
        raise TaskDataError(f"{field}: {path}: {what} are {values.dtype} (e.g. {_first(values)}); {want}")
    if values.size:
        low, high = values.min(), values.max()
        if low < lo or high > hi:
            raise TaskDataError(f"{field}: {path}: {what} range over {low}..{high}; {want}")
    return values.astype(np.int64, copy=False)


def read_bytes(path: Path, field: str, fix: str) -> bytes:
    """A data file's bytes; a file that cannot be read is one line (the cause, then ``fix``)."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise TaskDataError(f"{field}: cannot read {path} ({e.strerror or e}); {fix}") from None


def _first(values: np.ndarray) -> str:
    if not values.size:
        return "none"
    v = values.reshape(-1)[0].item()
    return f"{v:.4g}" if isinstance(v, float) else repr(v)
