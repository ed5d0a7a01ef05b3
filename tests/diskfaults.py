"""Real file-system faults for tests: a tiny tmpfs that can be filled (ENOSPC) or remounted
read-only (EROFS). Mounting needs root (CI runs as root); elsewhere the test skips with the
reason, and under ``CI=true`` that is a failure, as for a missing tool (tests/tools.py)."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "64k"):
    """A fresh tmpfs of ``size`` mounted on ``where`` (created) for the block; unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        msg = f"cannot mount a tmpfs to simulate a full or read-only disk ({got.stderr.strip()}; needs root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{msg} (CI=true: .ci/run runs as root)")
        pytest.skip(msg)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(fs: Path) -> Path:
    """Write ``fs/fill`` until the file system is full; returns the file (unlink it to free)."""
    path = fs / "fill"
    with open(path, "wb", buffering=0) as f:
        for size in (4096, 512, 64, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    return path


def remount(fs: Path, mode: str) -> None:
    """``mode``: "ro" or "rw"."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(fs)], check=True)
