"""What describes a run apart from its numbers: the constant columns of its table, the
software versions in ``run.json`` and a run directory's status. Kept low in the import
graph so that the simulators' and the real backends' drivers share it without importing
each other (``harness.experiment`` composes them)."""
from __future__ import annotations

import json
import platform
import socket
import sys
from pathlib import Path

from results.schema import HP_PREFIX
from results.store import RUN_JSON


def versions() -> dict:
    import numpy
    import pandas
    import torch

    try:
        import simpy

        simpy_v = simpy.__version__
    except ImportError:
        simpy_v = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "simpy": simpy_v, "harness": harness_version(),
            "platform": platform.platform(), "host": socket.gethostname()}


def harness_version() -> str:
    """The installed package's version, or ``dev`` (a checkout that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harness")
    except PackageNotFoundError:
        return "dev"


def meta_columns(cfg, backend: str) -> dict:
    """The constant columns of every row of this run's table."""
    meta = {"run_id": cfg.run_id, "algorithm": cfg.algorithm["name"], "backend": backend, "task": cfg.task["name"],
            "partition": str(cfg.task.get("partition", "")), "topology": cfg.topology["name"] if cfg.topology else "none",
            "n_workers": cfg.n_workers, "seed": cfg.seed}
    meta.update({HP_PREFIX + k: v for k, v in cfg.algorithm.items() if k != "name"})
    return meta


def run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((Path(run_dir) / RUN_JSON).read_text()).get("status")
    except (OSError, ValueError):
        return None


_harness_version = harness_version  # the old private name


def code_record(cfg) -> dict:
    """``run.json``'s ``code`` entry (issue [27]): version, git commit and dirty flag (None when
    not a checkout), and the hashes of the files that define the run (:mod:`harness.codeid`)."""
    from harness import codeid

    return codeid.record(cfg)


__all__ = ["code_record", "harness_version", "meta_columns", "run_status", "versions"]
