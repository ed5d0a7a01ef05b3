"""Process liveness on this node and the first-report claim, for the heartbeats and the
supervisor of :mod:`harness.backends.heartbeat` and :mod:`harness.backends.supervisor`.

Why separate: both need them, and they are plain OS facts (``/proc``, atomic ``link``)
with no knowledge of runs or ranks.

* A process on the same node (same host, boot and pid namespace: :func:`node_id`) is
  ``gone`` (no ``/proc`` entry, a zombie, or a new process with a reused pid: its start
  time differs), ``stopped`` (SIGSTOP, a debugger) or ``alive``.
* :func:`claim` links ``claim`` into the job's directory: atomic on local filesystems and
  NFS, so exactly one process reports a job's failure, and the others read its message.
* :func:`end_culprit`: a torch rank that blamed a stopped peer on its node kills it as it
  aborts, so that torchrun neither waits 30 s for it nor calls the reporter the root cause.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

CULPRIT: list[int] = []  # pid of a stopped or frozen peer on this node that this rank blamed


def end_culprit() -> None:
    """SIGKILL the stopped or frozen peer this rank blamed, and give its launcher a moment
    to see it: torchrun then names *that* rank as the root cause, not the reporter."""
    import signal

    for pid in CULPRIT:
        try:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        except OSError:
            pass


def job_dir(run_dir: Path, job: str) -> Path:
    return Path(run_dir) / ".ranks" / (job or "local")


def node_id() -> str:
    """Equal for processes that share a pid namespace: then their pids can be checked."""
    ns = ""
    try:
        ns = str(os.stat("/proc/self/ns/pid").st_ino)
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}:{boot}:{ns}"


def proc_start(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def proc_state(pid: int, start: str) -> str:
    """``gone``, ``stopped`` or ``alive`` for a process on this node."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return "gone"
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return "alive"
        except ProcessLookupError:
            return "gone"
        except OSError:
            return "alive"
    if fields[0] in "ZXx" or (start and fields[19] != start):
        return "gone"
    return "stopped" if fields[0] in "Tt" else "alive"


def claim(directory: Path, msg: str) -> tuple[bool, str]:
    """``(True, msg)`` if this process is the first to report this job's failure, else
    ``(False, the reporter's message)``. ``link`` is atomic, on NFS too."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "claim"
    tmp = directory / f".claim.{os.getpid()}"
    tmp.write_text(msg)
    try:
        os.link(tmp, path)
        return True, msg
    except FileExistsError:
        try:
            return False, path.read_text() or msg
        except OSError:
            return False, msg
    finally:
        tmp.unlink(missing_ok=True)


def claimed(directory: Path) -> str | None:
    try:
        return (directory / "claim").read_text() or None
    except OSError:
        return None
