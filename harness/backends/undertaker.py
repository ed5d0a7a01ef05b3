"""The undertaker: marks rank 0's run ``failed`` when every process of the job was killed
at once and nobody could say so.

Why: when ``mpiexec`` itself is SIGKILLed, or dies of SIGPIPE because its stdout was
closed (``mpiexec ... | head``), Hydra's proxy SIGKILLs every rank's process group
together: the rank, its supervisor (:mod:`harness.backends.supervisor`) and its peers go
in the same instant and ``run.json`` said ``running`` for ever. So rank 0's supervisor
double-forks this small process in a session of its own (a group kill does not reach it),
with nothing open but a pipe on which the supervisor relays the rank's announcements
(which run it is in). When the pipe closes (the supervisor ended, however), it waits for
the rank to be gone and for :data:`WAIT_S` more, so that any reporter with a real cause
speaks first; if the run it was in still says ``running``, it claims the report and marks
the run failed, naming what it saw (the launcher gone or not). MPICH's shared-memory
segments of SIGKILLed ranks stay in /dev/shm (4 MB each, and a later job of the same name
would attach to them): the undertaker notes the ``/dev/shm`` files the rank maps once it is in
a run, and after its death removes those no live process maps. Then it exits: it never
outlives the job by more than a few seconds, and it keeps no file of the job open.
"""
from __future__ import annotations

import json
import os
import time

WAIT_S = 1.5
# How long the segments may stay mapped by the other ranks after rank 0 died. It was 1.5 s, and
# under load (the kill soak at load ~20: the launcher ended the other ranks up to 5 s later) a
# segment was left in 1 of 20 trials; the loop ends once no process maps them, so waiting longer
# costs nothing when they go at once, and the cap only bounds a segment some other process holds.
SHM_WAIT_S = 30.0


def start(child: int, launcher: int) -> int | None:
    """Start the undertaker for ``child`` (the rank) and return the pipe's write end, or
    None if it could not start."""
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # intermediate: a new session, then the undertaker itself
        try:
            os.setsid()
            if os.fork() == 0:
                _detach(r)
                _run(r, child, launcher)
        finally:
            os._exit(0)
    os.close(r)
    os.waitpid(pid, 0)
    return w


def _detach(r: int) -> None:
    """Keep only ``r``: the job's stdout/stderr pipes and MPI sockets must close with the job."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, r)
    os.closerange(r + 1, 65536)


def _run(r: int, child: int, launcher: int) -> None:
    from harness.backends.liveness import proc_start, proc_state

    start = proc_start(child)
    info, buf, shm = None, b"", set()
    while True:
        try:
            chunk = os.read(r, 65536)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            try:
                info = json.loads(line)
            except ValueError:
                pass
            shm |= _mapped(f"/proc/{child}/maps")
    end = time.monotonic() + 30
    while proc_state(child, start) != "gone" and time.monotonic() < end:
        time.sleep(0.05)
    end = time.monotonic() + SHM_WAIT_S  # the launcher kills the other ranks (which map them too) later
    while shm and time.monotonic() < end:  # ends as soon as no process maps them (see SHM_WAIT_S)
        shm = _sweep_shm(shm)
        time.sleep(0.1)
    if not info or not info.get("dir"):
        return  # between runs: nothing to mark
    _bury(info, launcher)


def _mapped(maps: str) -> set[str]:
    """The /dev/shm files in a ``/proc/<pid>/maps``."""
    try:
        with open(maps) as f:
            return {ln.split(None, 5)[5].strip() for ln in f if "/dev/shm/" in ln and len(ln.split(None, 5)) == 6}
    except OSError:
        return set()


def _sweep_shm(files: set[str]) -> set[str]:
    """Remove those of ``files`` that no live process maps or holds open; return the rest."""
    held = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            held |= _mapped(f"/proc/{d}/maps")
            try:
                held.update(os.readlink(f"/proc/{d}/fd/{fd}") for fd in os.listdir(f"/proc/{d}/fd"))
            except OSError:
                pass
    for f in files - held:
        try:
            os.unlink(f)
        except OSError:
            pass
    return {f for f in files & held if os.path.exists(f)}


def _bury(info: dict, launcher: int) -> None:
    from pathlib import Path

    from harness.backends.supervisor import proc_name, report
    from harness.runinfo import run_status

    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        if run_status(Path(info["run_dir"])) != "running":
            return
        time.sleep(0.1)
    gone = not Path(f"/proc/{launcher}").exists()
    whose = f"its launcher {proc_name(launcher)} {'is gone' if gone else 'is still there'}"
    report(info, f"was killed together with its supervisor, without a word ({whose}: the launcher killed, "
                 "or cut off by a closed stdout?)", who="undertaker")
