"""Checkpoints: a run saves its whole state at a step boundary and resumes from it (issue [27]).

**What is saved.** A part-based algorithm (:mod:`harness.parts`) holds all its state in one
tree beside the step's carry, so :func:`harness.parts.run` can hand both to the backend after
every step (the ``Checkpoint`` op). The backend saves that carry together with *its own* state:
every worker's clock and counters, the random streams (data, compute times, faults, ``Rand``),
keyed rows, the recorder's rows so far. The backend's state is saved **whole**, by pickling the
interpreter object, not through a list of fields someone has to keep current: a new counter or
stream is saved the day it is added. What is not data is not pickled: the task (data and model
code, rebuilt from the config), functions made at run time (lambdas, closures) and live
machinery (threads, transports, the SimPy event loop). Each of those is written as its *path*
in the object graph (``run.sampler.gens.make``) and, on resume, replaced by the object at the
same path of a freshly built backend for the same config (:func:`dumps`, :func:`loads`). A
path the fresh build lacks is a :class:`CheckpointError`, never a silent substitute.

**When.** Every ``checkpoint.every_steps`` steps and every ``checkpoint.every_s`` wall seconds
(default 300: a short run never pays), and at once when the process gets SIGTERM or SIGUSR1
(SLURM's warning before a time limit or preemption): the run saves at its next step boundary
where the backend is *quiescent*, then ends with status ``preempted`` and exit status 75
(:data:`PREEMPTED_EXIT`); the same command resumes it. A step boundary is quiescent when no
message is in flight and every worker is at the same point: always on the stacked backend (one
generator), on SimPy right after a collective over all workers (lock-step methods, once per
round), on real ranks at every step of a lock-step method (they agree on saving with one small
control all-reduce). Methods without declared state (asynchronous server methods, plain
generator plugins) never checkpoint: a preempted run of one says it restarts from step 0.

**Identical tables.** A resumed run's table equals an uninterrupted run's, bit for bit on the
simulators (the same numbers are drawn in the same order; tests kill runs with SIGTERM and
SIGKILL and compare). Real backends measure wall time, so their time columns continue from the
saved clock; everything else equals.
"""
from __future__ import annotations

import functools
import io
import os
import pickle
import signal
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again": the same command resumes (slurm/*.sbatch requeue on it)
FILE = "checkpoint.pt"


class CheckpointSpec(BaseModel):
    """``checkpoint:`` in a config. Not part of a run's identity: saving never changes a number."""

    model_config = ConfigDict(extra="forbid")
    every_steps: int = Field(0, ge=0, description="save every this many steps (0: off)")
    every_s: float = Field(300.0, ge=0, allow_inf_nan=False,
                           description="save every this many wall seconds at a quiescent step (0: off)")
    grace_s: float = Field(30.0, ge=0, allow_inf_nan=False,
                           description="after SIGTERM/SIGUSR1, how long to wait for a quiescent step before "
                                       "ending without a new checkpoint (the last one still resumes)")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read back faithfully; one line naming why."""


class Preempted(Exception):
    """The run stopped on SIGTERM/SIGUSR1; ``step``: the saved step (None: nothing new was saved)."""

    def __init__(self, step: int | None, why: str = ""):
        super().__init__(step, why)
        self.step, self.why = step, why


# -- the signal ---------------------------------------------------------------------------------
_requested = threading.Event()
_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


_armed = threading.Event()  # a run that offers Checkpoint ops is executing in this process


def _on_signal(sig, _frame):
    if _armed.is_set():
        _requested.set()
        return
    signal.signal(sig, signal.SIG_DFL)  # no run here can save: the signal does what it always did
    os.kill(os.getpid(), sig)


def install_signals() -> None:
    """SIGTERM and SIGUSR1 ask the running run to save and stop, when the run can (a backend
    :func:`arm` s it on its first ``Checkpoint`` op); otherwise they end the process as before.
    Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in _SIGNALS:
        signal.signal(s, _on_signal)


def arm(on: bool = True) -> None:
    (_armed.set if on else _armed.clear)()


def say(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def requested() -> bool:
    return _requested.is_set()


def clear_request() -> None:
    _requested.clear()


class Policy:
    """When to save: a backend asks :meth:`due` at each step boundary (``quiescent``: can it save now)."""

    def __init__(self, spec: CheckpointSpec | None, path: Path | None, meta: dict | None = None):
        self.spec, self.path, self.meta = spec or CheckpointSpec(), path, meta or {}
        self.last = time.monotonic()
        self.waiting_since: float | None = None

    @property
    def on(self) -> bool:
        return self.path is not None

    def due(self, step: int, quiescent: bool) -> bool:
        """Save at this boundary? Raises :class:`Preempted` (nothing saved) once a requested stop
        waited ``grace_s`` without a quiescent step."""
        if not self.on:
            return False
        _armed.set()
        now = time.monotonic()
        if requested():
            self.waiting_since = self.waiting_since or now
            if quiescent:
                return True
            if now - self.waiting_since >= self.spec.grace_s:
                raise Preempted(None, "no quiescent step within checkpoint.grace_s after the signal")
            return False
        if not quiescent:
            return False
        sp = self.spec
        return bool((sp.every_steps and step % sp.every_steps == 0) or (sp.every_s and now - self.last >= sp.every_s))

    def failed(self, e: Exception) -> None:
        """Saving cannot be done faithfully: say so once, run on without checkpoints (a requested
        stop still stops, with nothing saved)."""
        import sys

        print(f"harness: note: {e}", file=sys.stderr, flush=True)
        self.path = None
        if requested():
            raise Preempted(None, str(e))

    def reset(self) -> None:
        """A save was made: the next interval starts now."""
        self.last = time.monotonic()

    def saved(self, step: int) -> None:
        """Called after a save: a requested stop ends the run now."""
        self.reset()
        if requested():
            raise Preempted(step)


# -- pickling a backend whole, code by path -------------------------------------------------------
_LEAVES = (torch.Tensor, np.ndarray, np.generic, str, bytes, int, float, bool, complex, type(None),
           torch.Generator, np.random.Generator, torch.dtype, torch.device, range, slice)
_LIVE = (types.ModuleType, threading.Thread, type(threading.Lock()), type(threading.RLock()), threading.Event,
         threading.Condition, io.IOBase, types.GeneratorType)


def _fixed(obj) -> bool:
    """Rebuilt from the config, not saved: the task, models, live machinery, run-time functions."""
    from harness.tasks.base import Task  # the data and the model's code

    if isinstance(obj, (Task, torch.nn.Module, functools._lru_cache_wrapper) + _LIVE):  # a cache is rebuilt
        return True
    if isinstance(obj, types.FunctionType):
        return "<lambda>" in obj.__qualname__ or "<locals>" in obj.__qualname__
    return type(obj).__module__.startswith(("simpy", "mpi4py", "torch.distributed")) or hasattr(obj, "_checkpoint_fixed")


def _children(obj):
    if isinstance(obj, dict):
        return [(repr(k), v) for k, v in obj.items()]
    if isinstance(obj, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(obj)]
    if isinstance(obj, functools.partial):
        return [("func", obj.func), ("args", obj.args), ("keywords", obj.keywords)]
    if isinstance(obj, types.MethodType):
        return [("__self__", obj.__self__), ("__func__", obj.__func__)]
    if isinstance(obj, types.FunctionType):
        cells = obj.__closure__ or ()
        return [(f"<cell{i}>", c.cell_contents) for i, c in enumerate(cells) if _filled(c)]
    out = list(vars(obj).items()) if hasattr(obj, "__dict__") else []
    for cls in type(obj).__mro__:
        out += [(s, getattr(obj, s)) for s in getattr(cls, "__slots__", ()) if hasattr(obj, s)]
    return out


def _filled(cell) -> bool:
    try:
        cell.cell_contents
        return True
    except ValueError:
        return False


def paths(root, wired: dict | None = None) -> dict[int, tuple[str, Any]]:
    """``id(obj) -> (path, obj)`` for every fixed object reachable from ``root`` (first path, a
    deterministic walk: attributes and dict entries in insertion order). ``wired`` (if given)
    gets ``path -> obj`` of the objects whose class names ``CHECKPOINT_WIRING``: attributes that
    connect an object to this process (a progress callback, a live writer), taken from the fresh
    build on resume instead of saved."""
    found: dict[int, tuple[str, Any]] = {}
    seen: set[int] = set()
    stack = [("", root)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, _LEAVES) or isinstance(obj, type) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if _fixed(obj):
            found.setdefault(id(obj), (path, obj))
            continue
        skip = getattr(type(obj), "CHECKPOINT_WIRING", ())
        if skip and wired is not None:
            wired[path] = obj
        stack.extend((f"{path}.{name}", child) for name, child in reversed(_children(obj)) if name not in skip)
    return found


def dumps(root) -> bytes:
    """Pickle ``root`` with every fixed object written as its path (wiring left out)."""
    wired: dict[str, Any] = {}
    fixed = paths(root, wired)
    held = {path: {a: vars(o).pop(a) for a in type(o).CHECKPOINT_WIRING if a in vars(o)} for path, o in wired.items()}
    try:
        return _dump(root, fixed)
    finally:
        for path, attrs in held.items():
            vars(wired[path]).update(attrs)


def _dump(root, fixed) -> bytes:

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            hit = fixed.get(id(obj))
            return hit[0] if hit is not None and hit[1] is obj else None

    buf = io.BytesIO()
    try:
        P(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(root)
    except (pickle.PicklingError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint: cannot save the backend's state ({e}); the run goes on without "
                              "checkpoints") from None
    return buf.getvalue()


def loads(data: bytes, fresh):
    """Unpickle with each path replaced by the object at that path of ``fresh`` (a new build)."""
    fresh_wired: dict[str, Any] = {}
    by_path = {p: o for p, o in paths(fresh, fresh_wired).values()}

    class U(pickle.Unpickler):
        def persistent_load(self, pid):
            if pid not in by_path:
                raise CheckpointError(f"checkpoint: {pid} is not in a fresh build of this run; the code that "
                                      "builds it changed")
            return by_path[pid]

    out = U(io.BytesIO(data)).load()
    wired: dict[str, Any] = {}
    paths(out, wired)
    for path, obj in wired.items():  # this process's wiring, from the fresh build
        twin = fresh_wired.get(path)
        for a in type(obj).CHECKPOINT_WIRING:
            setattr(obj, a, getattr(twin, a, None))
    return out


# -- files -------------------------------------------------------------------------------------
def write(path: Path, payload: dict) -> None:
    """Atomically: a temporary file, fsync, rename (a kill mid-way leaves the previous checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def meta(cfg) -> dict:
    """What a checkpoint must match to be resumed: the run and the code that defines it."""
    from harness.runinfo import code_record

    code = code_record(cfg)
    return {"run_id": cfg.run_id, "files": code.get("files"), "version": code.get("version")}


def mismatch(payload: dict, want: dict) -> str | None:
    """Why ``payload`` cannot be resumed by a run with ``want`` (:func:`meta`), or None."""
    if payload.get("run_id") != want["run_id"]:
        return f"it belongs to run {payload.get('run_id')}"
    changed = sorted(f for f in set(payload.get("files") or {}) | set(want["files"] or {})
                     if (payload.get("files") or {}).get(f) != (want["files"] or {}).get(f))
    if changed or payload.get("version") != want["version"]:
        return f"the code changed since it was saved ({', '.join(changed) or 'harness version'})"
    return None


def read(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint is not worth a crash: start over, say so
        raise CheckpointError(f"checkpoint: {path} cannot be read ({type(e).__name__}); delete it to start over") from None
