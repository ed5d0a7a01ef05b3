"""The rank's supervisor: the process the launcher started waits for the real rank (a
forked child) and reports it when a signal kills it, or when the launcher goes.

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
* SIGTERM/SIGINT/SIGHUP (a launcher tearing the job down, or a person) go to the child,
  with a SIGCONT so that a stopped child ends too (torchrun would wait 30 s for it); the
  child's end is then reported as well, after a grace of :data:`GRACE_S` so that a rank
  with a real cause claims first (a teardown after a failure stays silent);
* the launcher gone (its parent changed: torchrun SIGKILLed) ends the child the same way,
  naming the launcher;
* otherwise it exits with the child's status.

The child watches its supervisor (:func:`_watch_parent`): a supervisor killed by hand
leaves the rank orphaned, and Hydra waits for the rank's pipes to close, so the rank
reports ``its supervisor died`` itself and exits. Rank 0's supervisor also starts an
undertaker (:mod:`harness.backends.undertaker`) outside the job's process group, for the
one case no process of the job survives: the launcher SIGKILLed or cut off (its stdout
closed: SIGPIPE), when Hydra SIGKILLs every rank's group at once.
``HARNESS_SUPERVISE=0`` turns all this off; it is also off without ``fork``, outside a
multi-rank launch, and once MPI is initialised (a fork would share it).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import warnings

from harness import envvars as _envvars

_PIPE: int | None = None  # child: write end of the pipe to the supervisor
_INFO: dict = {}  # child: the last announcement (which run this rank is in)
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS")
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)  # USR1: SLURM asks for a checkpoint (issue 27)
GRACE_S = 0.5  # a signal from outside: let a rank with a real cause claim the report first
POLL_S = 0.05  # how often the child and the supervisor look at their parent


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
    if (_PIPE is not None or _envvars.get("HARNESS_SUPERVISE") == "0" or not hasattr(os, "fork")
            or not _launched() or "mpi4py.MPI" in sys.modules):
        return
    from harness.backends.launch import env_rank

    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    parent, launcher = os.getpid(), os.getppid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: BLAS threads exist; we only wait
        pid = os.fork()
    if pid == 0:
        os.close(r)
        _PIPE = w
        _watch_parent(parent)
        return
    os.close(w)
    relay = None
    if env_rank() == 0:
        from harness.backends import undertaker

        relay = undertaker.start(pid, launcher)
    try:
        code = _watch(pid, r, launcher, relay)
    except BaseException:  # noqa: BLE001 - never fall back into the caller's code
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def announce(info: dict) -> None:
    """Child: tell the supervisor which run it is in (``{"dir": None}``: none)."""
    _INFO.clear()
    _INFO.update(info)
    if _PIPE is not None:
        try:
            os.write(_PIPE, (json.dumps(info, default=str) + "\n").encode())
        except OSError:
            pass


def _watch_parent(parent: int) -> None:
    """Child: if the supervisor dies (killed by hand), report it and end this rank.
    A thread polls ``getppid`` (a death signal would be run only between bytecodes, and
    the main thread may sit in MPI for minutes)."""
    if os.getppid() != parent:  # the supervisor died before this line
        os._exit(1)

    def loop():
        while os.getppid() == parent:
            time.sleep(POLL_S)
        report(_INFO, f"its supervisor process {parent} died (killed?), so the rank ended", who="rank")
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=loop, daemon=True, name="harness-parent-watch").start()


def proc_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f"{f.read().strip()} (pid {pid})"
    except OSError:
        return f"pid {pid}"


def _watch(pid: int, r: int, launcher: int, relay: int | None) -> int:
    state = {"info": None, "why": None}  # why: how the supervisor ended the child (or None)

    def end_child(why: str):
        state["why"] = state["why"] or why
        for s in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.kill(pid, s)
            except ProcessLookupError:
                pass

    def forward(sig, _frame):
        state["why"] = state["why"] or f"its supervisor got {signal.Signals(sig).name} (from the launcher or a person)"
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
            if relay is not None:
                try:
                    os.write(relay, chunk)
                except OSError:
                    pass
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    state["info"] = json.loads(line)
                except ValueError:
                    pass

    def launcher_watch():
        while os.getppid() == launcher:
            time.sleep(POLL_S)
        end_child(f"its launcher {proc_name(launcher)} is gone")

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=launcher_watch, daemon=True).start()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 1
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status)
    sig = os.WTERMSIG(status)
    time.sleep(0.05)  # the last announcement may still be in the pipe
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    if state["why"] is None:
        report(state["info"], f"was killed by signal {sig} ({name})", who="supervisor")
    else:
        report(state["info"], f"was ended by {name}: {state['why']}", who="supervisor", grace=GRACE_S)
    return 128 + sig


def report(info: dict | None, what: str, who: str, grace: float = 0.0) -> bool:
    """Say ``rank K (where) <what>`` once per job and mark the run failed, unless another
    process reported first (``grace``: give it that long). True if this one reported."""
    from pathlib import Path

    from harness.backends.launch import env_rank
    from harness.backends.liveness import claim, claimed

    if not info or not info.get("dir"):
        # between runs there is nothing to mark; a signal the launcher forwarded (grace > 0) follows
        # another rank's own error line (e.g. a wrong rank count), so only a direct kill is said
        if who != "undertaker" and not grace:
            sys.stderr.write(f"harness: error: rank {env_rank()} {what}, between runs\n")
        return True
    directory, rank = Path(info["dir"]), info["rank"]
    end = time.monotonic() + grace
    while time.monotonic() < end and not claimed(directory):
        time.sleep(0.05)
    try:
        where = json.loads((directory / f"r{rank}.json").read_bytes())["where"]
    except (OSError, ValueError, KeyError):
        where = "?"
    msg = f"rank {rank} ({where}) {what}"
    try:
        first, _ = claim(directory, msg)
    except OSError:
        first = True
    if not first:
        return False  # an earlier failure was reported; this death is its consequence
    record = info.get("record") or {}
    sys.stderr.write(f"harness: error: {msg} [run {record.get('run_id', '?')}, {info.get('size', '?')} ranks]\n")
    sys.stderr.flush()
    mark_failed(info, msg)
    return True


def mark_failed(info: dict, msg: str) -> None:
    """``run.json`` of the announced run says ``failed`` with ``msg``, unless it has ended."""
    from pathlib import Path

    try:
        from harness.runinfo import run_status
        from results.store import RUN_JSON, write_json

        run_dir, record = Path(info["run_dir"]), info.get("record") or {}
        if record and run_status(run_dir) not in ("failed", "finished", "diverged"):
            import datetime as dt

            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            write_json({**record, "status": "failed", "error": msg, "finished": now}, run_dir / RUN_JSON)
    except Exception:  # noqa: BLE001 - the line is said already
        pass
