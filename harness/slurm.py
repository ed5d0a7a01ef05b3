"""``harness slurm submit|status`` and the arguments of ``harness sweep``: a config's grid on SLURM.

* Sweeps of simulations become job arrays (``slurm/array.sbatch``): array task ``i`` runs the
  config's run number ``i + offset`` (``harness run CONFIG --only N``; numbered from 1 as
  ``--list`` shows them), at most ``--max-concurrent`` at once. A grid larger than the
  cluster's ``MaxArraySize`` (``scontrol show config``; SLURM's default 1001 without one)
  becomes several arrays, each of task ids ``1..MaxArraySize-1`` with its own offset. Runs
  finished in ``--out`` are left out, so re-submitting the same command runs what is missing;
  finished runs whose code changed since are refused, re-run or kept as ``harness run`` does
  (``--rerun-changed`` / ``--keep-changed``, :func:`harness.codeid.check_runs`).
* Real distributed runs (``--backend mpi|torch``) become one job (``slurm/mpi.sbatch`` /
  ``slurm/torch.sbatch``) whose ranks ``srun`` launches, one run after another; a failed run
  does not stop the others (the job fails at the end, naming them).
* Every template asks for USR1 ``--grace`` seconds before the time limit and requeues the job
  when the run, told by that signal, saved a checkpoint (exit status 75); the contract is in
  ``slurm/run-one.sbatch`` and docs/slurm-cluster-notes.md.
* What was submitted (job ids, run numbers and ids) is appended to ``OUT/slurm-submissions.jsonl``,
  which ``harness slurm status OUT`` (:mod:`harness.slurm_status`) reads.
* ``harness sweep CONFIG --jobs K`` runs the same grid here (:mod:`harness.sweep`, which
  defines its options; they are mounted into the one parser tree here).

This module is imported to build the parser: only light modules at its top.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from harness import capabilities
from harness.slurm_check import SlurmError, check_args, grace_for, printable
from harness.slurm_status import SUBMISSIONS

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize: array task ids 0..1000


def _common(p: argparse.ArgumentParser):
    """The arguments ``harness slurm submit`` and ``harness sweep`` share with ``harness run``."""
    from harness.cli import add_set, dir_arg

    p.add_argument("config", metavar="CONFIG", help="YAML experiment file, e.g. presets/demo.yaml")
    p.add_argument("--out", metavar="DIR", type=dir_arg, help="output directory (default: runs/<config name>)")
    add_set(p)


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """``harness sweep`` or ``harness slurm`` (``name``) on ``p``, a subcommand of the one tree."""
    from harness.cli import _examples, add_changed, dir_arg, subcommand, subcommands

    if name == "sweep":  # its options are defined with the sweep (harness.sweep.parser); mounted here
        from harness.sweep import parser as sweep_parser

        src = sweep_parser()
        p.description, p.epilog = src.description, src.epilog
        for holder in (src, *src._action_groups):  # all but its -h, which p has already
            attr = "_actions" if holder is src else "_group_actions"
            setattr(holder, attr, [x for x in getattr(holder, attr) if not isinstance(x, argparse._HelpAction)])
        p._add_container_actions(src)  # what argparse's parents= does
        p.set_defaults(func=cmd_sweep)
        return
    p.description = "Submit a config's runs to SLURM and follow them."
    p.epilog = _examples("harness slurm submit presets/demo.yaml --partition cpu --time 00:30:00",
                         "harness slurm status runs/demo")
    sub = subcommands(p, "slurm_cmd")
    s = subcommand(sub, "submit", "write an sbatch script for the config's unfinished runs and submit it",
                   "harness slurm submit presets/demo.yaml --partition cpu --time 00:30:00 --dry-run",
                   "harness slurm submit presets/demo.yaml --backend mpi --nodes 2 --ntasks-per-node 8",
                   "harness slurm submit presets/demo.yaml --time 2-00:00:00 --grace 600   # USR1 10 min before",
                   description="Simulations become job arrays (one task per unfinished run, split at the cluster's "
                               "MaxArraySize); --backend mpi|torch becomes one job whose ranks srun launches. Every "
                               "job asks for USR1 --grace seconds before its time limit, passes it on to the run, "
                               "which saves a checkpoint, and requeues itself to resume.")
    s.set_defaults(func=submit)
    _common(s)
    s.add_argument("--backend", choices=list(capabilities.SELECTABLE), default=None,
                   help="override the config's backend (mpi/torch: one multi-rank job; default: the config's)")
    s.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    s.add_argument("--time", default="01:00:00", help="wall-time limit per array task / job")
    s.add_argument("--grace", type=int, default=None, metavar="SECONDS",
                   help="USR1 this long before the time limit, to checkpoint and requeue (default: 300, or a "
                        "tenth of --time when that is less)")
    s.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per array task or rank")
    s.add_argument("--mem", help="memory per node, e.g. 4G (default: the cluster's default)")
    s.add_argument("--max-concurrent", type=int, default=16, help="array tasks running at once")
    s.add_argument("--nodes", type=int, default=1, help="nodes of a real (mpi/torch) job")
    s.add_argument("--ntasks-per-node", type=int, help="ranks per node (real runs; default: n_workers / nodes)")
    s.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node of a real job")
    s.add_argument("--mpi", default="pmi2", help="srun --mpi plugin (real MPI runs)")
    s.add_argument("--sbatch-arg", action="append", default=[],
                   help="extra '#SBATCH' line, e.g. --sbatch-arg=--qos=low; repeatable (default: none)")
    s.add_argument("--job-name", help="SLURM job name (default: the config's name)")
    add_changed(s)
    s.add_argument("--dry-run", action="store_true", help="print the script(s), submit nothing")
    st = subcommand(sub, "status", "say which runs of the submissions to DIR are done, running, pending or failed",
                    "harness slurm status runs/demo", "harness slurm status runs/demo --all")
    st.set_defaults(func=cmd_status)
    st.add_argument("dir", metavar="DIR", type=dir_arg, help="the --out directory of harness slurm submit")
    st.add_argument("--all", action="store_true", help="list every run, not only those that are not done")


def parser() -> argparse.ArgumentParser:
    """The ``harness slurm`` subcommand of the one tree (tests and documentation)."""
    from harness.cli import _parser

    return next(a for a in _parser(["slurm"])._actions if isinstance(a, argparse._SubParsersAction)).choices["slurm"]


def cmd_sweep(a) -> int:
    from harness.sweep import sweep

    return sweep(a)


def cmd_status(a) -> int:
    from harness.slurm_status import status

    return status(Path(a.dir), show_all=a.all)


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


def chunks(todo: list[int], max_array_size: int) -> list[tuple[int, list[int]]]:
    """``[(offset, run numbers)]``: arrays whose task ids ``number - offset`` lie in
    ``1..max_array_size - 1`` (SLURM refuses an index >= MaxArraySize). One chunk, offset 0,
    while every number fits: then task ids are the run numbers themselves."""
    width = max_array_size - 1
    if width < 1:
        raise SlurmError(f"MaxArraySize {max_array_size}: this cluster allows no array task id above 0; run the "
                         "grid with --backend mpi|torch or `harness sweep`")
    groups: dict[int, list[int]] = {}
    for n in todo:
        groups.setdefault((n - 1) // width * width, []).append(n)
    return sorted(groups.items())


def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (``scontrol show config``), else SLURM's default 1001."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            res = subprocess.run([scontrol, "show", "config"], capture_output=True, text=True, timeout=30)
            m = re.search(r"^MaxArraySize\s*=\s*(\d+)", res.stdout, re.M)
            if res.returncode == 0 and m:
                return int(m.group(1))
        except (OSError, subprocess.SubprocessError):
            pass
    return DEFAULT_MAX_ARRAY_SIZE


def template(kind: str) -> str:
    """The text of ``slurm/<kind>.sbatch``. The templates are package data of the ``slurm``
    package, so they are found in a wheel install as in a checkout (docs/design.md, Packaging)."""
    try:
        return resources.files("slurm").joinpath(f"{kind}.sbatch").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise SlurmError(f"sbatch template {kind}.sbatch not found ({e}); reinstall harness "
                         "(`make`, or `pip install .`) so that its slurm package ships the templates") from None


def render(kind: str, **fields) -> str:
    """``slurm/<kind>.sbatch`` filled in; ``{% include "run-one.sbatch" %}`` is another template."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             loader=jinja2.FunctionLoader(lambda name: template(name.removesuffix(".sbatch"))))
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


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def scripts_for(a, runs, todo: list[int], out: Path, array_size: int | None = None) -> list[tuple[str, str, list[int], int]]:
    """``[(kind, script, run numbers, offset)]``: one array per chunk of ``todo``, or one real job."""
    cfg0 = runs[0]
    check_args(a)
    sets = [*a.sets, *([f"backend={a.backend}"] if a.backend else [])]
    paths = {"--config": str(Path(a.config).resolve()), "--out": str(out.resolve()), "the current directory":
             str(Path.cwd()), "the Python interpreter": sys.executable}
    for what, text in paths.items():
        printable(what, text)
    flags = " --rerun-changed" if a.rerun_changed else " --keep-changed" if a.keep_changed else ""
    fields = dict(job_name=a.job_name or _SAFE_NAME.sub("_", f"harness-{cfg0.name}"), partition=a.partition,
                  time=a.time, grace=grace_for(a.time, a.grace), cpus_per_task=a.cpus_per_task, mem=a.mem,
                  log_dir=shlex.quote(str(out / "slurm-logs")), sbatch_args=a.sbatch_arg,
                  workdir=shlex.quote(paths["the current directory"]),
                  harness=f"{shlex.quote(sys.executable)} -m harness.cli", config=shlex.quote(paths["--config"]),
                  out=shlex.quote(paths["--out"]), flags=flags, sets="".join(f" --set {shlex.quote(s)}" for s in sets))
    if a.backend in capabilities.REAL:
        ranks = max(cfg.n_workers + (1 if _has_server(cfg) else 0) for cfg in (runs[i - 1] for i in todo))
        per_node = a.ntasks_per_node or -(-ranks // a.nodes)
        if per_node * a.nodes != ranks:
            raise SlurmError(f"--nodes {a.nodes} x --ntasks-per-node {per_node} = {per_node * a.nodes} ranks, "
                             f"but the runs need {ranks}; set --ntasks-per-node so that nodes x tasks = {ranks}")
        fields.update(nodes=a.nodes, ntasks_per_node=per_node, gpus_per_node=a.gpus_per_node, backend=a.backend,
                      srun_args=f" --mpi={a.mpi}" if a.backend == "mpi" else "", indices=" ".join(map(str, todo)),
                      count=len(todo))
        return [(a.backend, render(a.backend, **fields), todo, 0)]
    parts = chunks(todo, array_size or max_array_size())
    return [("array", render("array", **fields, offset=offset,
                             array=f"{compress([n - offset for n in numbers])}%{a.max_concurrent}"), numbers, offset)
            for offset, numbers in parts]


def _has_server(cfg) -> bool:
    from harness import algorithms

    return algorithms.get(cfg.algorithm["name"]).has_server


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def submit(a) -> int:
    from harness import codeid, config as config_mod
    from harness.cli import _check_out, changed_policy

    check_args(a)  # before the config is read: a bad option is named even when the config is bad too
    grace_for(a.time, a.grace)
    runs = config_mod.load(a.config, a.sets + ([f"backend={a.backend}"] if a.backend else []))
    out = Path(a.out or Path("runs") / runs[0].name)
    _check_out(out, "--out" if a.out else "name")
    rerun = codeid.check_runs(runs, out, changed_policy(a), note=_note)  # [issue 27] one line, before sbatch
    todo = sorted({*pending(runs, out), *(i for i, cfg in enumerate(runs, 1) if cfg.run_id in rerun)})
    if not todo:
        print(f"nothing to submit: all {len(runs)} run(s) already finished in {out}")
        return 0
    size = None if a.backend in capabilities.REAL else max_array_size()
    jobs = scripts_for(a, runs, todo, out, size)
    if len(jobs) > 1:
        _note(f"harness: note: {len(todo)} runs need array task ids up to {todo[-1]}, above this cluster's "
              f"MaxArraySize {size} (scontrol show config): submitting {len(jobs)} arrays of at most {size - 1} "
              "tasks, array task i of each running run i + its offset")
    if a.dry_run:
        print("\n".join(text for _, text, _, _ in jobs), end="")
        return 0
    sbatch = _slurm_tool("sbatch")
    if a.partition:
        check_partition(a.partition)
    (out / "slurm-logs").mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": str(Path(a.config).resolve()), "sets": a.sets,
              "backend": a.backend, "runs": len(runs), "jobs": []}
    try:
        for k, (kind, text, numbers, offset) in enumerate(jobs):
            path = out / f"{kind}-{stamp}{f'-{k + 1}' if len(jobs) > 1 else ''}.sbatch"
            path.write_text(text)
            res = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True, timeout=60)
            if res.returncode:
                why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit status {res.returncode}"
                raise SlurmError(f"sbatch {path} failed: {why}" + (f" ({k} of {len(jobs)} arrays were submitted: "
                                 f"harness slurm status {out})" if k else ""))
            record["jobs"].append({"id": res.stdout.strip().split(";")[0], "kind": kind, "script": str(path),
                                   "offset": offset if kind == "array" else None,
                                   "runs": {str(n): runs[n - 1].run_id for n in numbers}})
    finally:
        if record["jobs"]:
            with open(out / SUBMISSIONS, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
    ids = ", ".join(j["id"] for j in record["jobs"])
    print(f"submitted job{'s' if len(jobs) > 1 else ''} {ids}: {len(todo)} of {len(runs)} run(s); results in {out}; "
          f"`harness slurm status {out}` follows them, then `harness report {out}`")
    return 0


def main(argv: list[str], sweep_mode: bool = False) -> int:
    """``harness slurm ARGV...`` (or ``harness sweep ARGV...``): the same parser and errors."""
    from harness.cli import main as harness_main

    return harness_main(["sweep" if sweep_mode else "slurm", *argv])
