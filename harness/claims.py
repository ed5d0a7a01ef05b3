"""Claims: two processes given the same output directory never run the same run twice.

Why: sweeps are started more than once on purpose (``harness run`` in two terminals, SLURM
array tasks, a requeued task, a re-run after a crash), and skipping *finished* runs is not
enough: a run that another process is still running must be skipped too, or it runs twice
and the second writer's table silently replaces the first's.

Before a run starts, its directory gets ``claim.json`` holding ``host``, ``pid``, ``started``,
``token`` and, under SLURM, ``slurm_job``. The content is written to a temp file first and then
hard-linked to ``claim.json`` (``link`` fails if the name exists: ``O_EXCL`` semantics, so
exactly one process succeeds), so the claim appears whole or not at all: a full disk fails the
write with one error and leaves no empty claim that would block the run later. (On a file
system without hard links the file is created ``O_EXCL`` and written in place, and removed if
the write fails.) A thread of the owner touches the file every minute (its mtime is a
heartbeat) and the file is removed when the run ends, however it ends. A process that finds
a claim skips the run unless the claim is *stale*:

* its owner ran on this host and that pid is gone (killed, crashed, out of memory);
* it belongs to this very SLURM job (a requeued task: SLURM runs a job id once at a time);
* it was not touched for ``HARNESS_CLAIM_STALE_S`` seconds (default 900; an owner on another
  host that died, or a hung file system);
* it is empty or not a claim (left by a write that failed or was killed, e.g. on a full disk, by
  an older harness) and older than ``UNREADABLE_GRACE_S`` (no writer takes that long).

A stale claim is taken over with a one-line note on stderr. Takeovers are serialised by a
second ``O_EXCL`` file (``claim.json.takeover``), so two processes never take over together.
After claiming, the caller checks the run's status again: another process may have finished
it between the first check and the claim.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from results.store import METRICS, RUN_JSON, damage, naming

CLAIM = "claim.json"
STALE_ENV = "HARNESS_CLAIM_STALE_S"
DEFAULT_STALE_S = 900.0
DONE = ("finished", "diverged")  # runs that ended with a table: skipped by re-runs
UNREADABLE_GRACE_S = 2.0  # an empty or garbled claim older than this is stale (see why_stale)


def stale_after_s() -> float:
    from harness import envvars  # [issue 21] one checked reader for every variable

    return envvars.get(STALE_ENV)


def status(run_dir: Path) -> str | None:
    try:
        rec = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return None
    return rec.get("status") if isinstance(rec, dict) else None


_NOTED: set[str] = set()  # damaged runs already named by this process (is_done runs twice a run)


def is_done(run_dir: Path, note=None) -> bool:
    """The run ended with its table written (finished, or stopped as diverged) and its files
    are readable. A damaged one (truncated ``metrics.parquet``, garbled ``run.json``) is not
    done: it runs again, and one note line (``note``, default stderr) says why."""
    run_dir = Path(run_dir)
    why = damage(run_dir)
    if why is not None:
        if why not in _NOTED:
            _NOTED.add(why)
            (note or _stderr)(f"harness: note: {run_dir.name}: its results are damaged ({why}); running it again")
        return False
    return status(run_dir) in DONE and (run_dir / METRICS).exists()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Claim:
    """A held claim; :meth:`release` (idempotent) stops the heartbeat and removes the file."""

    def __init__(self, path: Path, info: dict, beat_s: float):
        self.path, self.info = path, info
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(beat_s,), daemon=True, name="harness-claim")
        self._beat.start()

    def _heartbeat(self, every: float):
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        owner = read(self.path)
        if owner is not None and owner.get("token") == self.info["token"]:  # never remove a successor's claim
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def _me() -> dict:
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "token": uuid.uuid4().hex}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return info


def read(path: Path) -> dict | None:
    """A claim's content; ``{}`` if it exists but is not (yet) valid JSON; None if absent."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        obj = json.loads(text)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _create(path: Path, beat_s: float) -> Claim | None:
    """Create the claim whole (temp file, then ``link``); None if one exists. A failed write
    (full disk, read-only) raises ``OSError`` naming ``path`` and leaves nothing behind."""
    info = _me()
    text = json.dumps(info) + "\n"
    tmp = path.with_name(f".{path.name}.{info['token']}.tmp")
    try:
        with naming(path):
            _write_new(tmp, text)
            try:
                os.link(tmp, path)  # fails if path exists, like O_EXCL; the claim appears whole
            except FileExistsError:
                return None
            except OSError as e:
                if e.errno not in _NO_LINKS:
                    raise
                return _create_in_place(path, text, info, beat_s)
    finally:
        try:
            os.unlink(tmp)
        except OSError:  # never written (read-only, full), or already gone
            pass
    return Claim(path, info, beat_s)


_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}  # FAT, some FUSE/SMB


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise


def _create_in_place(path: Path, text: str, info: dict, beat_s: float) -> Claim | None:
    """No hard links here: ``O_EXCL`` create and write; a reader may see it empty for a moment
    (hence ``UNREADABLE_GRACE_S``)."""
    try:
        _write_new(path, text)
    except FileExistsError:
        return None
    return Claim(path, info, beat_s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def why_stale(owner: dict, age_s: float, limit_s: float) -> str | None:
    """Why a claim with content ``owner``, last touched ``age_s`` ago, is stale; None if live."""
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
        return "its process is gone"
    job = os.environ.get("SLURM_JOB_ID")
    if job and owner.get("slurm_job") == job and owner.get("pid") != os.getpid():
        return f"it is an earlier run of this SLURM job {job} (requeued)"
    if age_s > limit_s:
        return f"not touched for {age_s:.0f} s > {STALE_ENV}={limit_s:g}"
    if not owner and age_s > UNREADABLE_GRACE_S:
        return "it is empty or not a claim (a write that never completed, e.g. on a full disk)"
    return None


def _who(owner: dict) -> str:
    if not owner:
        return "an unreadable claim"
    return f"host {owner.get('host')}, pid {owner.get('pid')}, started {owner.get('started')}"


def acquire(run_dir: Path, run_id: str, note=None) -> Claim | None:
    """Claim ``run_dir`` for this process, taking over a stale claim; None if another process
    holds it (one note line says who). ``note``: where notes go (default: stderr)."""
    note = note or _stderr
    limit = stale_after_s()
    beat = max(0.05, min(60.0, limit / 4))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM
    for _ in range(3):  # the claim may vanish (released) between our attempts
        got = _create(path, beat)
        if got is not None:
            return got
        owner = read(path)
        if owner is None:
            continue
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            continue
        why = why_stale(owner, age, limit)
        if why is None:
            note(f"harness: note: run {run_id} is being run elsewhere ({_who(owner)}); skipped "
                 f"(remove {path} if that is wrong)")
            return None
        got = _take_over(path, owner, beat)
        if got is not None:
            note(f"harness: note: run {run_id}: took over a stale claim ({_who(owner)}: {why})")
            return got
    note(f"harness: note: run {run_id}: another process claimed it first; skipped")
    return None


def _take_over(path: Path, owner: dict, beat_s: float) -> Claim | None:
    lock = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a takeover lasts milliseconds; an old lock is left by a process that died in one
            if time.time() - lock.stat().st_mtime > 60:
                lock.unlink()
        except FileNotFoundError:
            pass
        return None
    try:
        if read(path) != owner:  # changed since we judged it: someone else got there first
            return None
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return _create(path, beat_s)
    finally:
        os.close(fd)
        lock.unlink()


__all__ = ["CLAIM", "DONE", "Claim", "acquire", "is_done", "read", "stale_after_s", "status", "why_stale"]
