"""``harness``: run experiments, report on them, inspect topologies.

    harness run CONFIG [--backend simpy|stacked|mpi|torch] [--out DIR] [--set key=value ...]
    harness run CONFIG --list | --print-config | --only 1,3        (runs numbered from 1)
    mpiexec -n 4 harness run CONFIG --backend mpi          (real backends: docs/real-backends.md)
    torchrun --nproc-per-node 4 --no-python harness run CONFIG --backend torch
    harness report DIR [--target 0.9] [--out DIR/report]
    harness list [algorithms|tasks|topologies|compute|codecs]     (names, descriptions, defaults)
    harness --version
    harness topology NAME --n 16 [--out graph.png]
    harness sweep CONFIG --jobs K
    harness slurm submit CONFIG [--partition P --time T | --backend mpi|torch --nodes N ...] [--dry-run]
    harness slurm status DIR
    mpiexec -n 4 harness calibrate CONFIG --backend mpi [--only I];  harness predict RUNS --calibration F

One parser tree: every command is a subparser of ``_parser()`` built by :func:`subcommand`
(same formatter, error style and ``examples:`` epilog); commands whose module is heavy to
import (``MOUNTED``) get their arguments from that module's ``add_arguments(p, name)`` only
when they are the command parsed.
Every user mistake ends with one line ``harness: error: ...`` and exit status 2 (argparse's
usage errors included, with "did you mean" for a misspelt choice or option), before anything is run or
written. ``--help`` of every command shows each option's default and examples (plain text:
help strings carry no docstring markup). ``--help`` and ``--version`` import neither torch nor
pandas (issue [27]: < 0.5 s): this module imports only light modules at its top, and the
config and results packages are imported by the commands that need them.
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from pathlib import Path

from harness.capabilities import SELECTABLE as BACKENDS


def _config_error(message: str) -> Exception:
    from harness.config import ConfigError

    return ConfigError(message)


class _UsageError(ValueError):
    """A command-line mistake found by argparse (unknown option, bad choice, missing argument).
    A ``ValueError`` like ``ConfigError``, so every command's handler prints it as one line."""


def did_you_mean(word: str, choices) -> str:
    """``"; did you mean 'stacked'?"`` for a close match among ``choices``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Parser(argparse.ArgumentParser):
    """argparse that raises one line instead of printing a usage block and exiting; every
    subcommand of the tree is one too (argparse builds subparsers of the parent's class). An
    unknown option is reported by the subcommand that was chosen (its ``--help`` named), with a
    "did you mean" among that command's options."""

    def parse_args(self, args=None, namespace=None):
        a, extras = self.parse_known_args(args, namespace)
        if extras:  # argparse would report these from the top parser; the chosen command says it
            getattr(a, "_parser", self).error(f"unrecognized arguments: {' '.join(extras)}")
        return a

    def error(self, message):
        cmds = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
        message = message.replace("argument COMMAND: ", "command: ").replace(
            "required: COMMAND", f"required: command ({', '.join(cmds)})")
        if message.startswith("argument "):  # "argument --backend: invalid choice ..." -> "--backend: ..."
            message = message[len("argument "):]
        bad = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if bad:
            message += did_you_mean(bad.group(1), re.findall(r"'([^']*)'", bad.group(2)))
        unknown = re.match(r"unrecognized arguments: (-\S+)", message)
        if unknown:
            options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            message += did_you_mean(unknown.group(1).split("=")[0], options)
        arg_names = {"config": "CONFIG", "dir": "DIR"}
        for name, shown in arg_names.items():
            message = message.replace(f"required: {name}", f"required: {shown}")
        raise _UsageError(f"{message}; see {self.prog} --help")


def dir_arg(text: str) -> str:
    """argparse type of ``--out``: an empty text would silently mean the default directory [issue 21]."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a directory, e.g. --out runs/demo (leave --out out for the "
                                         "default)")
    return text


class _Help(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples kept as written; an option's default appended to its help
    unless the text already says it or the option is a flag."""

    def _get_help_string(self, action):
        text = action.help or ""
        none = action.default is None or action.default is False or action.default == [] or \
            action.default is argparse.SUPPRESS  # identity: a default of 0 is shown (0 == False)
        if "default" in text or not action.option_strings or none:
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    """The installed package's version (``importlib.metadata``), else ``harness.__version__``."""
    from importlib import metadata

    try:
        return metadata.version("harness")
    except metadata.PackageNotFoundError:
        import harness

        return getattr(harness, "__version__", "unknown (not installed)")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def subcommand(sub, name: str, what: str, *examples: str, description: str | None = None):
    """A subcommand of the tree: one-line ``help`` in its parent's list, the same formatter and
    error style everywhere, an ``examples:`` epilog. ``_parser`` in its defaults names it, so an
    unknown option is reported by (and with the options of) the command that was chosen."""
    p = sub.add_parser(name, help=what, description=description or what[0].upper() + what[1:] + ".",
                       formatter_class=_Help, epilog=_examples(*examples) if examples else None)
    p.set_defaults(_parser=p)
    return p


def subcommands(p: argparse.ArgumentParser, dest: str = "cmd"):
    """The subparsers action of ``p`` (required; ``COMMAND`` in usage lines and errors)."""
    return p.add_subparsers(dest=dest, required=True, metavar="COMMAND")


# Commands whose arguments live in their own module, which may be heavy to import (topologies
# imports torch): ``harness --help`` lists them from this table, and a module's
# ``add_arguments(p, name)`` fills in its command only when that command is the one parsed
# (``_parser(argv)``) or the whole tree is asked for (``_parser()``: tests, documentation).
MOUNTED = {
    "topology": ("print a graph's degree, diameter and spectral gap; draw it", "topologies.cli"),
    "sweep": ("run a config's grid locally, K runs at a time, on K warm worker processes", "harness.slurm"),
    "slurm": ("submit a config's runs to SLURM (job arrays, or srun for mpi/torch); show their status",
              "harness.slurm"),
    "calibrate": ("measure compute and communication on a real launch; fit compute: and network:",
                  "harness.calibration.cli"),
    "predict": ("replay real runs on simpy with a calibration; predicted vs measured time", "harness.calibration.cli"),
}


def _command_of(argv: list[str] | None) -> str | None:
    """The command word of ``argv`` (its first word that is not an option), if any."""
    return next((w for w in argv if not w.startswith("-")), None) if argv is not None else None


def _parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The one parser tree of ``harness``. With ``argv``, only the mounted command that ``argv``
    names gets its arguments (imports stay light for ``--help`` and the other commands)."""
    import importlib

    from harness.catalog import KINDS

    p = _Parser(prog="harness", formatter_class=_Help,
                description="harness: run experiments, report on them, list what exists, inspect topologies.",
                epilog=_examples("harness run presets/demo.yaml --out runs/demo", "harness report runs/demo",
                                 "harness list algorithms", "harness COMMAND --help    (options, defaults, examples)"))
    p.add_argument("--version", action="version", version=f"harness {_version()}",
                   help="print the installed version and exit")
    sub = subcommands(p)

    def command(name, what, *examples, **kw):
        return subcommand(sub, name, what, *examples, **kw)

    r = command("run", "run every experiment a config describes",
                "harness run presets/demo.yaml --out runs/demo",
                "harness run presets/demo.yaml --backend stacked --set steps=100 --set grid.seed=[0,1,2]",
                "harness run presets/demo.yaml --set cases.2.algorithm.period=16 --list",
                "harness run presets/demo.yaml --only 1,3 --print-config   # runs 1 and 3 as resolved, nothing run",
                "mpiexec -n 4 harness run my.yaml --backend mpi    (docs/real-backends.md)")
    r.set_defaults(func=cmd_run)
    r.add_argument("config", metavar="CONFIG", help="YAML experiment file, e.g. presets/demo.yaml")
    r.add_argument("--backend", choices=BACKENDS, help="override the config's backend (default: the config's, "
                   "else simpy)")
    r.add_argument("--out", metavar="DIR", type=dir_arg, help="output directory (default: runs/<config name>)")
    add_set(r)
    r.add_argument("--only", metavar="I,J,...", help="run only these expanded runs, numbered from 1 as --list shows "
                   "them (like cases.N), comma separated; default: all")
    r.add_argument("--list", action="store_true", help="list the expanded runs, numbered from 1, and exit")
    r.add_argument("--print-config", action="store_true",
                   help="print each selected run's resolved config as YAML (every default filled in) and exit")
    r.add_argument("--force", action="store_true", help="re-run runs that already finished in DIR")
    add_changed(r)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--save-params", action="store_true",
                   help="also write each run's final parameters to DIR/<run_id>/final_params.pt")
    rep = command("report", "summary table, plots and index.html for a directory of runs",
                  "harness report runs/demo", "harness report runs/demo --target 0.85 --out /tmp/demo-report")
    rep.set_defaults(func=cmd_report)
    rep.add_argument("dir", metavar="DIR", help="a directory written by harness run (or sweep, slurm submit)")
    rep.add_argument("--target", type=float, default=None, metavar="ACC", help="target test accuracy (default: the runs' target_acc)")
    rep.add_argument("--out", metavar="DIR2", type=dir_arg, help="write the report into this directory (default: DIR/report)")
    ls = command("list", "list algorithms, tasks, topologies, compute models and codecs with their parameters",
                 "harness list", "harness list algorithms", "harness list topologies",
                 "harness list algorithms --config my_experiment.yaml   # with the algorithms its imports: register")
    ls.set_defaults(func=cmd_list)
    ls.add_argument("kind", nargs="?", choices=KINDS, metavar="KIND",
                    help=f"one of {', '.join(KINDS)} (default: all of them)")
    ls.add_argument("--config", metavar="CONFIG", help="also list what this config's imports: register (plugin "
                    "algorithms, tasks, topologies; the config is validated too; default: the built-in ones only)")
    wanted = _command_of(argv)
    for name, (what, module) in MOUNTED.items():
        c = command(name, what)
        if argv is None or name == wanted:
            importlib.import_module(module).add_arguments(c, name)
    return p


def add_set(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` as every command that reads a config takes it."""
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field in every run (dotted key; value parsed as YAML); repeatable; "
                   "cases.N.KEY=VALUE sets it in case N only (1 = the first case; wins over a plain --set of the same "
                   "key), grid.KEY=[v1,v2] sets a grid axis (default: none)")


def add_changed(p: argparse.ArgumentParser) -> None:
    """``--rerun-changed`` / ``--keep-changed``: what to do with finished runs whose code changed
    (:func:`harness.codeid.check_runs`; ``harness run`` and ``harness slurm submit``)."""
    changed = p.add_mutually_exclusive_group()
    changed.add_argument("--rerun-changed", action="store_true",
                         help="re-run finished runs whose code (algorithm, task, plugin, op or backend files) changed "
                         "since; without it or --keep-changed such runs stop the command with one line")
    changed.add_argument("--keep-changed", action="store_true",
                         help="keep finished runs whose code changed since, as they are")


def changed_policy(a) -> str:
    """``rerun``, ``keep`` or ``refuse`` (the default) from ``--rerun-changed``/``--keep-changed``."""
    return "rerun" if a.rerun_changed else "keep" if a.keep_changed else "refuse"


def select(runs: list, only: str | None) -> list:
    """The runs ``--only I,J`` picks, numbered from 1 as ``--list`` shows them (and as
    ``cases.N`` counts); one line for 0, a number out of range, or text."""
    if only is None:
        return runs
    try:
        picked = [int(s) for s in only.split(",")]
    except ValueError:
        picked = None
    if picked is not None and 0 in picked:
        raise _config_error(f"--only {only}: runs are numbered from 1 (as --list shows them, like cases.N); "
                            f"the first run is --only 1")
    if picked is None or not all(1 <= i <= len(runs) for i in picked):
        raise _config_error(f"--only {only}: expected run numbers in 1..{len(runs)} (as --list shows them), "
                            "comma separated")
    return [runs[i - 1] for i in picked]


def print_configs(runs: list, numbers: dict[str, int]) -> None:
    """The resolved configs as YAML documents, each headed by its number (as ``--list``) and run id."""
    import json

    import yaml

    for k, cfg in enumerate(runs, 1):
        doc = json.loads(json.dumps(cfg.model_dump(), default=str))
        print(f"# run {numbers[cfg.run_id]}: {cfg.run_id}\n" + yaml.safe_dump(doc, sort_keys=False),
              end="---\n" if k < len(runs) else "")


def cmd_run(a) -> int:
    from harness import checkpoint, codeid, config
    from harness.experiment import run_to_dir

    sets = list(a.sets) + ([f"backend={a.backend}"] if a.backend else [])
    runs = config.load(a.config, sets)
    numbers = {cfg.run_id: i for i, cfg in enumerate(runs, 1)}
    runs = select(runs, a.only)
    out = Path(a.out or Path("runs") / runs[0].name)
    _check_out(out, "--out" if a.out else "name")  # --list checks it too: it validates the whole command
    if a.print_config:
        if _is_root():
            print_configs(runs, numbers)
        return 0
    if a.list:
        for cfg in runs if _is_root() else []:
            print(f"{numbers[cfg.run_id]:4d}  {cfg.run_id}")
        return 0
    policy = changed_policy(a)
    note = (lambda line: print(line, file=sys.stderr, flush=True)) if _is_root() else (lambda line: None)
    rerun = set() if a.force else codeid.check_runs(runs, out, policy, note=note)  # [issue 27] before any run
    root = _is_root()  # real backends: every rank runs this loop; only rank 0 prints
    checkpoint.install_signals()  # SIGTERM/SIGUSR1 (SLURM before a time limit): save, stop, exit 75
    t0 = time.perf_counter()
    diverged = []  # [issue 14] runs that diverged, now or before: the sweep goes on, exit status 1
    from harness.progress import Progress  # [issue 15] overall line with ETA (periodic without a terminal)

    overall = Progress(len(runs), "run", quiet=a.quiet or not root, bar=len(runs) > 1)
    for k, cfg in enumerate(runs, 1):
        label = f"[{k}/{len(runs)}] {cfg.run_id}"
        bar = _progress(cfg, label, a.quiet or not root)

        def on_eval(row, bar=bar, k=k, steps=cfg.steps):
            if bar:
                bar.update(row)
            overall.update(k, row["step"], steps, row["time_s"])
        t1 = time.perf_counter()
        try:
            run_dir, ran = run_to_dir(cfg, out, on_eval=on_eval, force=a.force or cfg.run_id in rerun,
                                      save_params=a.save_params)
        except checkpoint.Preempted as e:  # [issue 27] SIGTERM/SIGUSR1: exit 75, the same command resumes
            overall.close()
            if root:
                saved = f"saved at step {e.step}" if e.step is not None else f"no new checkpoint ({e.why})"
                print(f"harness: preempted: run {cfg.run_id}: {saved}; run the same command again to resume "
                      f"(exit status {checkpoint.PREEMPTED_EXIT})", file=sys.stderr, flush=True)
            return checkpoint.PREEMPTED_EXIT
        except BaseException:
            overall.close()
            raise
        if bar:
            bar.close()
        if root:
            from harness.claims import status

            st = status(run_dir)
            diverged += [cfg.run_id] if st == "diverged" else []
            said = ("diverged" if st == "diverged" else "done") if ran else {
                "finished": "already finished, skipped", "diverged": "diverged before, skipped"}.get(
                st, "being run by another process, skipped")
            overall.finish(k, skipped=not ran)
            overall.write(f"{label}: {said} ({time.perf_counter() - t1:.1f} s)")
    overall.close()
    if root:
        print(f"{len(runs)} run(s) in {out} ({time.perf_counter() - t0:.0f} s)")
        _print_summary(out, runs[0].target_acc)
        if diverged:
            print(f"harness: error: {len(diverged)} of {len(runs)} run(s) diverged: {', '.join(diverged)} "
                  f"(step and worker in their run.json)", file=sys.stderr)
            return 1
    return 0


def _check_out(out: Path, field: str, existing: str = "one written by harness run") -> None:
    """The output directory can be (or already is) a directory: one line before any run."""
    if out.exists() and not out.is_dir():
        raise _config_error(f"{field}: {str(out)!r} is a file, not a directory; give --out a directory "
                          f"(new or {existing})")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise _config_error(f"{field}: {str(parent)!r} is a file, so {str(out)!r} cannot be a directory; "
                                  "give --out another path")
            break


def os_error_line(e: BaseException) -> str:
    """One line for any error; an ``OSError`` (full disk, read-only file system, permissions, a
    symlink loop, a file where a directory must be) as "PATH: cause" plus the fix, one rule for
    every errno. Paths come from the error itself (``results.store.naming`` adds them to writes)."""
    if not isinstance(e, OSError) or e.filename is None:
        return str(e)
    import os

    cause = os.strerror(e.errno) if e.errno else (e.strerror or type(e).__name__)
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else f"{e.filename}"
    return (f"{where}: {cause}; free space or fix that path (permissions, a file or link in the way), "
            "or give --out another directory; then run the same command again")


def _is_root() -> bool:
    from harness.backends import env_rank

    return env_rank() == 0


class _progress:
    """A tqdm bar over steps, updated at evaluation rows; off when not on a terminal."""

    def __new__(cls, cfg, label, quiet):
        if quiet or not sys.stderr.isatty():
            return None
        return super().__new__(cls)

    def __init__(self, cfg, label, quiet):
        from tqdm import tqdm

        self.bar = tqdm(total=cfg.steps, desc=label, unit="step", leave=False, dynamic_ncols=True)

    def update(self, row):
        self.bar.n = row["step"]
        self.bar.set_postfix(acc=f"{row['test_acc']:.3f}", sim_t=f"{row['time_s']:.2f}s", refresh=True)

    def close(self):
        self.bar.close()


def _print_summary(out: Path, target: float) -> None:
    import results
    from results.report import format_summary
    from results.stats import summary

    try:
        df = results.load(out, finished_only=True)
    except results.ResultsError:  # [issue 14] none ended yet: another process may be running them
        print(f"\nNo run in {out} has ended yet; nothing to summarise.")
        return
    print(f"\nSummary (target accuracy {target:.0%}):")
    print(format_summary(summary(df, target_acc=target)))


def cmd_report(a) -> int:
    import results
    from results.report import write_report

    if not Path(a.dir).is_dir():
        what = ("is a file, not a directory" if Path(a.dir).exists() else "a broken or looping symbolic link"
                if Path(a.dir).is_symlink() else "no such directory")
        raise _config_error(f"DIR: {str(a.dir)!r}: {what}; give a directory of runs "
                          f"(harness run CONFIG --out {a.dir} writes one)")
    target = a.target
    if target is not None and not 0 < target <= 1:
        raise _config_error(f"--target: expected a test accuracy in (0, 1], got {target}")
    _check_out(Path(a.out or Path(a.dir) / "report"), "--out", "an earlier report")
    try:
        if target is None:
            df = results.load(a.dir)
            col = "cfg.target_acc"
            target = float(df[col].dropna().iloc[0]) if col in df and df[col].notna().any() else 0.9
        path = write_report(a.dir, target_acc=target, out=a.out)
    except results.ResultsError as e:
        raise _config_error(f"DIR: {e}") from None
    print(f"report written to {path}")
    return 0


def cmd_list(a) -> int:
    from harness import catalog

    if a.config:
        from harness.config import load

        load(a.config)  # runs its imports: (plugins register themselves); one line if it is bad
    print(catalog.text([a.kind] if a.kind else catalog.KINDS))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            a = _parser(argv).parse_args(argv)
        except SystemExit as e:  # --help, --version: printed; mistakes raise _UsageError instead
            return int(e.code or 0)
        from results.errors import ResultsError  # after parsing: --help and --version stay light

        try:
            return a.func(a)
        except ResultsError as e:
            raise _config_error(str(e)) from None
    except (ValueError, OSError) as e:  # ConfigError, TopologyError, SlurmError are ValueErrors
        if _is_root():  # under a parallel launcher every rank fails alike; say it once
            print(f"harness: error: {' '.join(os_error_line(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; the run in progress is marked 'failed' in its run.json; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
