"""harness: write a distributed training algorithm once; simulate it or run it for real; get one
tidy table. The Python API (docs/api.md)::

    import harness
    df = harness.run("presets/demo.yaml", backend="stacked", sets=["steps=50"])  # pandas table
    df = harness.load("runs/demo")                                              # results.load
    harness.report("runs/demo", out="runs/demo/report")                         # index.html, figures
    @harness.register("my_sgd")                                                 # an algorithm, in a notebook
    def my_sgd(ctx, x, *, lr: float = 0.1): ...

The names are bound on first use (PEP 562 ``__getattr__``), so ``import harness`` imports
neither torch nor pandas: ``harness --version`` and ``--help`` stay under half a second.
"""
from __future__ import annotations

__all__ = ["load", "register", "register_task", "report", "run", "__version__"]

_API = {"run": "harness.api", "load": "harness.api", "report": "harness.api", "register": "harness.api",
        "register_task": "harness.api"}


def __getattr__(name: str):
    if name == "__version__":
        from importlib import metadata

        try:
            return metadata.version("harness")
        except metadata.PackageNotFoundError:
            return "dev"
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
