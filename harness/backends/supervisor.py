"""The rank's supervisor: the process the launcher started waits for the real rank (a
forked child) and reports it when a signal kills it.

Why: a rank killed by a signal (SIGKILL, the out-of-memory killer) cannot say anything,
and its peers cannot either: ``mpiexec`` (Hydra) SIGKILLs every other rank within a
millisecond of the first death, ``srun --kill-on-bad-exit`` does the same, and torchrun
SIGTERMs them within 0.1 s. Only the dead rank's parent learns, from ``waitpid``, which
signal ended it. So before a real transport starts MPI or a process group,
:func:`supervise` forks: the child returns and is the rank (MPI, torch, the run); the
parent stays behind as the launcher's process:

* child killed by a signal it did not get from the supervisor: the parent marks the
  current run ``failed`` naming the rank and the signal (first report wins, see
  :func:`harness.backends.liveness.claim`), prints one line, exits ``128 + signal``;
  the launcher then ends the job as it does for any failed rank;
* otherwise it exits with the child's status;
* SIGTERM/SIGINT/SIGHUP (a launcher tearing the job down) go to the child, with a
  SIGCONT so that a stopped child ends too (torchrun would wait 30 s for it).

The child dies with its parent (``PR_SET_PDEATHSIG``, Linux). ``HARNESS_SUPERVISE=0``
turns this off; it is also off without ``fork``, outside a multi-rank launch, and once
MPI is initialised (a fork would share it).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import warnings

_PIPE: int | None = None  # child: write end of the pipe to the supervisor
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def active() -> bool:
    return _PIPE is not None


def _launched() -> bool:
    for var in SIZE_VARS:
        try:
            return int(os.environ.get(var, "")) > 1
        except ValueError:
            continue
    return False


def supervise() -> None:
    """Fork once per process, before MPI or torch.distributed start; returns in the child.
    The parent never returns: it exits with the child's status."""
    global _PIPE
    if (_PIPE is not None or os.environ.get("HARNESS_SUPERVISE", "1") == "0" or not hasattr(os, "fork")
            or not _launched() or "mpi4py.MPI" in sys.modules):
        return
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: BLAS threads exist; we only wait
        pid = os.fork()
    if pid == 0:
        os.close(r)
        _PIPE = w
        _die_with(parent)
        return
    os.close(w)
    try:
        code = _watch(pid, r)
    except BaseException:  # noqa: BLE001 - never fall back into the caller's code
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def announce(info: dict) -> None:
    """Child: tell the supervisor which run it is in (``{"dir": None}``: none)."""
    if _PIPE is not None:
        try:
            os.write(_PIPE, (json.dumps(info, default=str) + "\n").encode())
        except OSError:
            pass


def _die_with(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl
        os._exit(1)


def _watch(pid: int, r: int) -> int:
    state = {"info": None, "forwarded": False}

    def forward(sig, _frame):
        state["forwarded"] = True
        for s in (sig, signal.SIGCONT):
            try:
                os.kill(pid, s)
            except ProcessLookupError:
                pass

    for s in FORWARDED:
        signal.signal(s, forward)

    def read():
        buf = b""
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    state["info"] = json.loads(line)
                except ValueError:
                    pass

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 1
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status)
    sig = os.WTERMSIG(status)
    if not state["forwarded"]:
        time.sleep(0.05)  # the last announcement may still be in the pipe
        _report(sig, state["info"])
    return 128 + sig


def _report(sig: int, info: dict | None) -> None:
    from pathlib import Path

    from harness.backends.liveness import claim
    from harness.backends.launch import env_rank

    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    if not info or not info.get("dir"):
        sys.stderr.write(f"harness: error: rank {env_rank()} was killed by signal {sig} ({name}), between runs\n")
        return
    directory, rank = Path(info["dir"]), info["rank"]
    try:
        where = json.loads((directory / f"r{rank}.json").read_bytes())["where"]
    except (OSError, ValueError, KeyError):
        where = "?"
    msg = f"rank {rank} ({where}) was killed by signal {sig} ({name})"
    try:
        first, _ = claim(directory, msg)
    except OSError:
        first = True
    if not first:
        return  # an earlier failure was reported; this death is its consequence
    record = info.get("record") or {}
    sys.stderr.write(f"harness: error: {msg} [run {record.get('run_id', '?')}, {info.get('size', '?')} ranks]\n")
    sys.stderr.flush()
    try:
        from harness.runinfo import run_status
        from results.store import RUN_JSON, write_json

        run_dir = Path(info["run_dir"])
        if record and run_status(run_dir) not in ("failed", "finished"):
            import datetime as dt

            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            write_json({**record, "status": "failed", "error": msg, "finished": now}, run_dir / RUN_JSON)
    except Exception:  # noqa: BLE001 - the line above is said already
        pass
