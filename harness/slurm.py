"""``harness slurm submit`` and ``harness sweep``: run a config's grid on SLURM or locally.

* Sweeps of simulations become ONE job array (``slurm/array.sbatch``): array task ``i`` runs
  the config's run number ``i`` (``harness run CONFIG --only i``; numbered from 1 as ``--list``
  shows them, so array task ids start at 1), at most
  ``--max-concurrent`` at once. Runs already finished in ``--out`` are left out of the array,
  so re-submitting the same command only runs what is missing; a requeued task re-runs its
  point from the start and replaces its results atomically (no duplicated or lost rows).
* Real distributed runs (``--backend mpi|torch``) become one job (``slurm/mpi.sbatch`` /
  ``slurm/torch.sbatch``) whose ranks are launched by ``srun``.
* ``harness sweep CONFIG --jobs K`` runs the same grid here, K runs at a time
  (:mod:`harness.sweep`).

The templates are plain sbatch files (Jinja2 placeholders) a user can copy and edit.
"""
from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import jinja2

from harness import capabilities, config as config_mod
from harness.config import ConfigError


class SlurmError(ValueError):
    """A SLURM submission problem; one line naming the fix."""


def _common(p: argparse.ArgumentParser):
    """The arguments ``harness slurm submit`` and ``harness sweep`` share with ``harness run``."""
    p.add_argument("config", help="YAML experiment file, e.g. presets/demo.yaml")
    from harness.cli import dir_arg

    p.add_argument("--out", type=dir_arg, help="output directory (default: runs/<config name>)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (dotted key; value parsed as YAML; cases.N.KEY for case N "
                        "only); repeatable (default: none)")


def parser() -> argparse.ArgumentParser:
    from harness.cli import _examples, _Help, _Parser  # one-line usage errors, defaults in --help

    p = _Parser(prog="harness slurm", formatter_class=_Help, description="submit a config's runs to SLURM")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="submit")
    s = sub.add_parser(
        "submit", formatter_class=_Help, help="write an sbatch script for the config's runs and submit it",
        description="Simulations become one job array (one task per unfinished run); --backend mpi|torch "
                    "becomes one job whose ranks srun launches.",
        epilog=_examples("harness slurm submit presets/demo.yaml --partition cpu --time 00:30:00 --dry-run",
                         "harness slurm submit presets/demo.yaml --backend mpi --nodes 2 --ntasks-per-node 8"))
    _common(s)
    s.add_argument("--backend", choices=list(capabilities.SELECTABLE), default=None,
                   help="override the config's backend (mpi/torch: one multi-rank job; default: the config's)")
    s.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    s.add_argument("--time", default="01:00:00", help="wall-time limit per array task / job")
    s.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per array task or rank")
    s.add_argument("--mem", help="memory per node, e.g. 4G (default: the cluster's default)")
    s.add_argument("--max-concurrent", type=int, default=16, help="array tasks running at once")
    s.add_argument("--nodes", type=int, default=1, help="nodes of a real (mpi/torch) job")
    s.add_argument("--ntasks-per-node", type=int, help="ranks per node (real runs; default: n_workers / nodes)")
    s.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node of a real job (default: 0, none)")
    s.add_argument("--mpi", default="pmi2", help="srun --mpi plugin (real MPI runs)")
    s.add_argument("--sbatch-arg", action="append", default=[], help="extra '#SBATCH' line, e.g. --sbatch-arg=--qos=low; repeatable (default: none)")
    s.add_argument("--job-name", help="SLURM job name (default: the config's name)")
    s.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    return p


def pending(runs, out: Path) -> list[int]:
    """Numbers (from 1, as ``harness run --only`` takes them) of the runs not finished in ``out``."""
    from harness.runinfo import run_status

    # a diverged run has its complete table: running it again would diverge again
    return [i for i, cfg in enumerate(runs, 1) if run_status(out / cfg.run_id) not in ("finished", "diverged")]


def compress(ix: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"`` (sbatch --array syntax)."""
    parts, start = [], None
    for k, i in enumerate(ix):
        if start is None:
            start = i
        if k + 1 == len(ix) or ix[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)


def template(kind: str) -> str:
    """The text of ``slurm/<kind>.sbatch``. The templates are package data of the ``slurm``
    package, so they are found in a wheel install as in a checkout (docs/design.md, Packaging)."""
    try:
        return resources.files("slurm").joinpath(f"{kind}.sbatch").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise SlurmError(f"sbatch template {kind}.sbatch not found ({e}); reinstall harness "
                         "(`make`, or `pip install .`) so that its slurm package ships the templates") from None


def render(kind: str, **fields) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template(kind)).render(**fields)


def _slurm_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise SlurmError(f"{name} not found: submit from a SLURM login node, or run the grid here with "
                         "`harness sweep CONFIG --jobs K`")
    return path


def check_partition(partition: str) -> None:
    out = subprocess.run([_slurm_tool("sinfo"), "-h", "-o", "%R"], capture_output=True, text=True, timeout=30)
    names = sorted(set(out.stdout.split()))
    if out.returncode == 0 and partition not in names:
        raise SlurmError(f"--partition {partition}: no such partition; available: {', '.join(names) or 'none'}")


def script_for(a, runs, todo: list[int], out: Path) -> tuple[str, str]:
    cfg0 = runs[0]
    check_args(a)
    sets = [*a.sets, *([f"backend={a.backend}"] if a.backend else [])]
    paths = {"--config": str(Path(a.config).resolve()), "--out": str(out.resolve()), "the current directory":
             str(Path.cwd()), "the Python interpreter": sys.executable}
    for what, text in paths.items():
        _printable(what, text)
    fields = dict(job_name=a.job_name or _SAFE_NAME.sub("_", f"harness-{cfg0.name}"), partition=a.partition,
                  time=a.time, cpus_per_task=a.cpus_per_task, mem=a.mem,
                  log_dir=shlex.quote(str(out / "slurm-logs")), sbatch_args=a.sbatch_arg,
                  workdir=shlex.quote(paths["the current directory"]),
                  harness=f"{shlex.quote(sys.executable)} -m harness.cli", config=shlex.quote(paths["--config"]),
                  out=shlex.quote(paths["--out"]), sets="".join(f" --set {shlex.quote(s)}" for s in sets))
    if a.backend in capabilities.REAL:
        ranks = max(cfg.n_workers + (1 if _has_server(cfg) else 0) for cfg in (runs[i - 1] for i in todo))
        per_node = a.ntasks_per_node or -(-ranks // a.nodes)
        if per_node * a.nodes != ranks:
            raise SlurmError(f"--nodes {a.nodes} x --ntasks-per-node {per_node} = {per_node * a.nodes} ranks, "
                             f"but the runs need {ranks}; set --ntasks-per-node so that nodes x tasks = {ranks}")
        fields.update(nodes=a.nodes, ntasks_per_node=per_node, gpus_per_node=a.gpus_per_node, mpi=a.mpi,
                      indices=" ".join(map(str, todo)))
        return a.backend, render(a.backend, **fields)
    fields.update(array=f"{compress(todo)}%{a.max_concurrent}")
    return "array", render("array", **fields)


# -- every value that reaches the script is checked: an sbatch script is a shell script, and
# `#SBATCH` lines are parsed by sbatch itself (no shell quoting there), so a value with a newline
# would start a line of its own (a command, or another #SBATCH option). [issue 21]
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORMATS = {  # option -> (pattern, what it must be)
    "job_name": (r"[A-Za-z0-9._+-]{1,200}", "letters, digits, '.', '_', '+' or '-' (at most 200), e.g. my-sweep"),
    "partition": (r"[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*", "a partition name (or a comma-separated list), e.g. cpu"),
    "time": (r"(\d+|\d+:\d\d?|\d+:\d\d?:\d\d?|\d+-\d+|\d+-\d+:\d\d?|\d+-\d+:\d\d?:\d\d?|UNLIMITED|"
             r"unlimited|INFINITE|infinite)",
             "a SLURM time: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. 01:30:00"),
    "mem": (r"\d+[KMGTkmgt]?", "a size in megabytes or with a unit K, M, G or T, e.g. 4G"),
    "mpi": (r"[A-Za-z0-9_]+", "an srun --mpi plugin name, e.g. pmi2 or pmix"),
}
_COUNTS = {"cpus_per_task": 1, "max_concurrent": 1, "nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 0}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _printable(what: str, text: str) -> None:
    bad = _CONTROL.search(text)
    if bad:
        raise SlurmError(f"{what}: {text!r} contains the control character {bad.group()!r} (a newline would start "
                         "a line of its own in the sbatch script); remove it")


def check_args(a) -> None:
    """Every option that is written into the sbatch script, checked before a line is written:
    one line naming the option and its valid form."""
    for dest, least in _COUNTS.items():
        v = getattr(a, dest, None)
        if v is not None and v < least:
            raise SlurmError(f"{_flag(dest)} {v}: expected a whole number >= {least}")
    for dest, (pattern, what) in _FORMATS.items():
        v = getattr(a, dest, None)
        if v is not None and not re.fullmatch(pattern, v):
            raise SlurmError(f"{_flag(dest)} {v!r}: expected {what}")
    for s in a.sets:  # shlex.quote would keep a newline inside quotes; refused all the same
        _printable("--set", s)
    for line in a.sbatch_arg:
        _printable("--sbatch-arg", line)
        if not line.startswith("-") or not line.strip():
            raise SlurmError(f"--sbatch-arg {line!r}: expected an sbatch option that starts with '-', "
                             "e.g. --sbatch-arg=--qos=low")


def _has_server(cfg) -> bool:
    from harness import algorithms

    return algorithms.get(cfg.algorithm["name"]).has_server


def submit(a) -> int:
    check_args(a)  # before the config is read: a bad option is named even when the config is bad too
    runs = config_mod.load(a.config, a.sets + ([f"backend={a.backend}"] if a.backend else []))
    out = Path(a.out or Path("runs") / runs[0].name)
    todo = pending(runs, out)
    if not todo:
        print(f"nothing to submit: all {len(runs)} run(s) already finished in {out}")
        return 0
    kind, text = script_for(a, runs, todo, out)
    if a.dry_run:
        print(text, end="")
        return 0
    sbatch = _slurm_tool("sbatch")
    if a.partition:
        check_partition(a.partition)
    (out / "slurm-logs").mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(text)
    res = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, timeout=60)
    if res.returncode:
        raise SlurmError(f"sbatch failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    job = res.stdout.strip().split(";")[0]
    print(f"submitted job {job}: {len(todo)} of {len(runs)} run(s) ({path}); results in {out}; "
          f"then `harness report {out}`")
    return 0


def main(argv: list[str], sweep_mode: bool = False) -> int:
    if sweep_mode:  # `harness sweep`: harness/sweep.py (a pool of warm worker processes)
        from harness.sweep import main as sweep_main

        return sweep_main(argv)
    try:
        return submit(parser().parse_args(argv))
    except (ConfigError, SlurmError, ValueError, FileNotFoundError) as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return 2
