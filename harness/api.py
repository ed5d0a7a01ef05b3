"""The Python API behind ``import harness`` (docs/api.md): the same steps as ``harness run`` and
``harness report``, for a notebook or a script, with the same one-line errors (``ConfigError``)
and the same run directories (a finished run is skipped; its code is checked, issue [27]).

Why a module of its own: the CLI prints, draws progress bars and exits with a status; a caller
from Python wants the table back and exceptions instead. Both share ``config.load``/``expand``,
``experiment.run_to_dir`` and :func:`harness.codeid.check_runs`, so they cannot drift apart.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from harness.algorithms import register  # noqa: F401 (re-exported: harness.register)
from harness.tasks import register_task  # noqa: F401 (re-exported: harness.register_task)


def configs(config: str | Path | dict, sets: list[str] | tuple[str, ...] = (), backend: str | None = None,
            base: str | Path | None = None) -> list:
    """The resolved runs of a YAML file or a mapping (the file's content as a dict: ``cases:``,
    ``grid:`` and ``imports:`` included; ``imports:`` paths are relative to ``base``, default
    the working directory). ``sets`` are ``--set`` texts; ``backend`` overrides the config's."""
    from harness import config as cfgmod

    sets = [*sets, *([f"backend={backend}"] if backend else [])]
    if not isinstance(config, dict):
        return cfgmod.load(config, sets)
    from harness import envvars

    try:  # as config.load does for a file
        envvars.check_all()
    except envvars.EnvError as e:
        raise cfgmod.ConfigError(str(e)) from None
    raw = copy.deepcopy(config)
    mods = raw.pop("imports", None)
    mods = [mods] if isinstance(mods, str) else mods
    if mods is not None and (not isinstance(mods, list) or not all(isinstance(m, str) and m for m in mods)):
        raise cfgmod.ConfigError(f"imports: expected a list of module names or .py paths, got {mods!r}")
    for mod in mods or []:
        cfgmod.import_plugin(mod, Path(base or "."))
    return cfgmod.expand(raw, sets)


def run(config: str | Path | dict, backend: str | None = None, out: str | Path | None = None, *,
        sets: list[str] | tuple[str, ...] = (), only: str | None = None, force: bool = False,
        changed: str = "refuse", params: bool = False, base: str | Path | None = None):
    """Run every run of ``config`` (a YAML path or a dict) on a simulated ``backend`` into
    ``out`` (default ``runs/<name>``, as ``harness run``) and return their table (pandas, as
    :func:`results.load` gives it, this call's runs only). A run already finished in ``out`` is
    skipped and its table read back. ``only``: ``"1,3"`` as ``--only``. ``changed``: what to do
    with finished runs whose code changed since (``"refuse"``: raise one line; ``"rerun"``;
    ``"keep"``), as ``--rerun-changed``/``--keep-changed``. ``params=True`` returns
    ``(table, {run_id: final parameters})`` (``{"workers": [n, d], "server": ...}``, from
    ``final_params.pt``; None for a run skipped that saved none). Real backends (mpi, torch)
    run under a launcher: use ``harness run`` there (docs/real-backends.md)."""
    from harness import codeid
    from harness.capabilities import REAL
    from harness.cli import select
    from harness.config import ConfigError
    from harness.experiment import run_to_dir

    if changed not in codeid.POLICIES:
        raise ConfigError(f"changed: {changed!r}; choose one of {', '.join(codeid.POLICIES)}")
    runs = select(configs(config, sets, backend, base), only)
    real = sorted({r.backend for r in runs} & set(REAL))
    if real:
        raise ConfigError(f"backend: {real[0]} runs one process per rank; call harness.run with backend='simpy' or "
                          "'stacked', or launch `harness run` under mpiexec/torchrun (docs/real-backends.md)")
    out = Path(out) if out is not None else Path("runs") / runs[0].name
    rerun = set() if force else codeid.check_runs(runs, out, changed)
    for cfg in runs:
        run_to_dir(cfg, out, force=force or cfg.run_id in rerun, save_params=params)
    table = load(out)
    table = table[table["run_id"].isin([r.run_id for r in runs])].reset_index(drop=True)
    if not params:
        return table
    return table, {r.run_id: _params(out / r.run_id) for r in runs}


def _params(run_dir: Path) -> Any:
    from harness.backends import PARAMS_FILE

    path = run_dir / PARAMS_FILE
    if not path.exists():
        return None
    import torch

    return torch.load(path, weights_only=True)


def load(path: str | Path, finished_only: bool = False):
    """Every run under ``path`` as one tidy table: :func:`results.load`."""
    import results

    return results.load(path, finished_only=finished_only)


def report(path: str | Path, out: str | Path | None = None, target: float | None = None) -> Path:
    """Write the report of the runs under ``path`` (summary, figures, index.html) into ``out``
    (default ``path/report``) and return that directory; ``target``: the test accuracy of
    time-to-target (default: the runs' ``target_acc``), as ``harness report``."""
    from harness.config import ConfigError
    from results.report import write_report

    if target is None:
        df = load(path)
        col = "cfg.target_acc"
        target = float(df[col].dropna().iloc[0]) if col in df and df[col].notna().any() else 0.9
    elif not 0 < target <= 1:
        raise ConfigError(f"target: expected a test accuracy in (0, 1], got {target}")
    return Path(write_report(path, target_acc=target, out=out))


def latex(path: str | Path, target: float = 0.9) -> str:
    """The per-setting table of the runs under ``path`` as LaTeX (booktabs; mean ± 95 % interval
    over seeds): what ``report`` writes as ``summary.tex``."""
    from results.latex import summary_latex
    from results.stats import summary

    return summary_latex(summary(load(path), target), target)


__all__ = ["configs", "latex", "load", "register", "register_task", "report", "run"]
