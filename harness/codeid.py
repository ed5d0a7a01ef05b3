"""The code in a run's identity (issue [27]): which source files define a run, their hashes,
the package version and the git commit, recorded in ``run.json`` under ``code``.

Why: a run id hashes the resolved *config* only, so after an edit of an algorithm a re-run
used to say "already finished, skipped" and report the old numbers. A run now carries a
fingerprint of the code that defines it, and ``harness run`` compares it before skipping
(:func:`changed_files`; the policy is in ``docs/design.md``, "The researcher's workflow").

The fingerprinted files, kept short and documented on purpose (not the whole import graph):

* the file that defines the algorithm's registered function (a plugin file of ``imports:``
  when the algorithm is a plugin's), the task's class and the topology's builder;
* ``harness/ops.py`` and ``harness/parts.py`` (the language every algorithm is written in);
* the backend's interpreter: its registered module (``harness/capabilities.py``), plus
  ``simulators/base.py`` for a simulated backend and ``harness/backends/rank.py`` for a real one.

A file's hash is SHA-256 of its bytes (first 16 hex digits): any edit counts, comments
included, because "the same numbers" cannot be proven from a diff. Files of the package are
named relative to the checkout (``harness/ops.py``); others (plugins) by absolute path.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout (or site-packages) holding the package
CORE = ("harness/ops.py", "harness/parts.py")
INTERPRETER = {"simulated": ("simulators/base.py",), "real": ("harness/backends/rank.py",)}
GIT_TIMEOUT_S = 2.0


def _name(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _path(name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else ROOT / p


def file_hash(path: Path) -> str | None:
    """16 hex digits of SHA-256 of the file's bytes; None if it cannot be read (gone). Cached by
    (path, mtime, size): checking a 6,000-run grid hashes each file once, an edit is seen."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _hash(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _hash(path: str, _mtime_ns: int, _size: int) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _source_file(obj) -> Path | None:
    """The file defining a function or class. A class's file is taken from its own methods'
    code first: a plugin loaded from a path is not in ``sys.modules``, where ``inspect`` looks."""
    obj = inspect.unwrap(getattr(obj, "factory", obj))
    if isinstance(obj, type):
        for v in vars(obj).values():
            f = getattr(getattr(inspect.unwrap(v) if callable(v) else v, "__code__", None), "co_filename", None)
            if f and Path(f).is_file():
                return Path(f)
    try:
        f = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except (TypeError, OSError):
        f = getattr(getattr(obj, "__code__", None), "co_filename", None)
    return Path(f) if f and Path(f).is_file() else None


def _module_file(module: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and Path(spec.origin).is_file() else None


def _code_hash(obj) -> str:
    """A function defined where no file holds it (a notebook cell): hash its source if
    ``inspect`` finds it (IPython keeps cells in ``linecache``), else its byte code."""
    obj = inspect.unwrap(getattr(obj, "factory", obj))
    try:
        text = inspect.getsource(obj).encode()
    except (TypeError, OSError):
        code = getattr(obj, "__code__", None)
        text = b"" if code is None else code.co_code + repr(code.co_consts).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def _definers(cfg) -> list[tuple[str, object]]:
    """``(what, object)`` of the run's algorithm, task and topology."""
    from harness import algorithms, tasks

    out = [(f"algorithm {cfg.algorithm['name']}", algorithms.get(cfg.algorithm["name"]))]
    if cfg.task["name"] in tasks.TASKS:
        out.append((f"task {cfg.task['name']}", tasks.TASKS[cfg.task["name"]]))
    if cfg.topology:
        from topologies import catalog

        fn = catalog.STATIC.get(cfg.topology["name"]) or catalog.DYNAMIC.get(cfg.topology["name"])
        if fn is not None:
            out.append((f"topology {cfg.topology['name']}", fn))
    return out


def defining_files(cfg) -> list[Path]:
    """The source files that define ``cfg``'s run (see the module docstring), in a fixed order."""
    from harness import capabilities

    files: list[Path | None] = [_source_file(obj) for _, obj in _definers(cfg)]
    files += [ROOT / f for f in CORE]
    backend = capabilities.BACKENDS[cfg.backend]
    files.append(_module_file(backend.impl.split(":")[0]))
    files += [ROOT / f for f in INTERPRETER.get(backend.kind, ())]
    out: list[Path] = []
    for f in files:
        if f is not None and f.resolve() not in out:
            out.append(f.resolve())
    return out


def fingerprint(cfg) -> dict[str, str]:
    """``{file name: hash}`` of :func:`defining_files`; an algorithm, task or topology with no
    source file (defined in a notebook) appears as ``"<algorithm NAME>": hash of its source``."""
    out = {_name(f): file_hash(f) or "unreadable" for f in defining_files(cfg)}
    for what, obj in _definers(cfg):
        if _source_file(obj) is None:
            out[f"<{what}>"] = _code_hash(obj)
    return out


@functools.lru_cache(maxsize=1)
def git() -> dict | None:
    """``{"sha", "dirty"}`` of the checkout holding the package; None when it is not a git
    checkout (an installed wheel) or git is missing or slow (one call each, ``GIT_TIMEOUT_S``).
    Cached per process: a sweep asks once."""
    if not (ROOT / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S)
        st = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return {"sha": sha.stdout.strip(), "dirty": bool(st.stdout.strip()) if st.returncode == 0 else None}


def record(cfg) -> dict:
    """The ``code`` entry of ``run.json``: version, git (or None) and the file fingerprint."""
    from harness.runinfo import harness_version

    return {"version": harness_version(), "git": git(), "files": fingerprint(cfg)}


def recorded(run_dir: Path) -> dict | None:
    """The ``code.files`` a run recorded; None for a run.json without it (written before
    issue [27]) or unreadable."""
    try:
        rec = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return None
    files = (rec.get("code") or {}).get("files") if isinstance(rec, dict) else None
    return files if isinstance(files, dict) else None


def changed_files(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Names of files whose hash differs, that were added or that are gone, sorted."""
    return sorted(k for k in {*old, *new} if old.get(k) != new.get(k))


def short(name: str) -> str:
    """A file name for a message: relative to the working directory when it is below it."""
    if name.startswith("<"):
        return name
    try:
        return str(_path(name).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return name


POLICIES = ("refuse", "rerun", "keep")
FLAGS = {"rerun": "--rerun-changed", "keep": "--keep-changed"}


def check_runs(runs, out: Path, policy: str = "refuse", note=None) -> set[str]:
    """Compare each finished run in ``out`` with the code that would run it now; returns the
    run ids to run again. ``policy``: ``refuse`` (default) raises one ``ConfigError`` line naming
    the changed files and the flags, before anything runs; ``rerun`` re-runs those runs (their
    old results are replaced); ``keep`` keeps them (one note line). A run.json without a
    fingerprint (written before issue [27]) is unknown: one note line, kept as it is."""
    from harness import claims
    from harness.config import ConfigError

    note = note or claims._stderr
    changed: dict[str, list[str]] = {}
    unknown = 0
    for cfg in runs:
        run_dir = Path(out) / cfg.run_id
        if claims.status(run_dir) not in claims.DONE:
            continue  # not finished: it runs anyway (damage is noted by is_done when it starts)
        old = recorded(run_dir)
        if old is None:
            unknown += 1
            continue
        files = changed_files(old, fingerprint(cfg))
        if files:
            changed[cfg.run_id] = files
    if unknown:
        note(f"harness: note: {unknown} finished run(s) in {out} have no code fingerprint (run.json written before "
             "harness recorded one), so whether their code changed is unknown; they are kept (--force runs them again)")
    if not changed:
        return set()
    names = sorted({short(f) for fs in changed.values() for f in fs})
    what = f"{len(changed)} finished run(s) in {out} were made by code that has changed since ({', '.join(names)})"
    if policy == "refuse":
        raise ConfigError(f"{what}; run again with {FLAGS['rerun']} to replace their results, or {FLAGS['keep']} to "
                          "keep them (or give --out another directory)")
    if policy == "keep":
        note(f"harness: note: {what}; kept as they are ({FLAGS['keep']})")
        return set()
    note(f"harness: note: {what}; running them again ({FLAGS['rerun']})")
    return set(changed)


__all__ = ["POLICIES", "changed_files", "check_runs", "defining_files", "file_hash", "fingerprint", "git", "record", "recorded", "short"]
