"""The warm worker processes of ``harness sweep --jobs K``, talking over pipes only.

Why not ``concurrent.futures.ProcessPoolExecutor`` (used until issue [21]): with the
``spawn`` start method every queue and lock of ``multiprocessing`` is a *named* POSIX
semaphore, a file in /dev/shm that only a finalizer of the sweep or its resource tracker
process removes. A sweep killed together with its tracker (``kill -9`` of its process group,
a SLURM job's cgroup, the out-of-memory killer) left them there for good, and a pool broken by
one killed worker stopped the healthy workers too. Here a worker is a plain subprocess:

* tasks go down its stdin as JSON lines (``{"run": i, "out": DIR, "force": bool}``, then
  ``{"stop": true}``); rows and results come back on a pipe of its own (``{"row": [...]}``,
  ``{"started": i}``, ``{"result": {...}}``). Nothing is created in /dev/shm, and nothing outlives the processes;
* a worker whose stdin ends without ``stop`` knows its sweep is gone (``kill -9``: the kernel
  closes the sweep's end), at once and without polling: it stops as for SIGTERM, marking its
  run failed (naming the dead sweep) and releasing its claim;
* a worker that dies (SIGKILL, out of memory) fails the run it was running and a fresh worker
  takes its place; the other workers go on with theirs;
* workers live in a session of their own: a Ctrl-C at the terminal reaches the sweep only,
  which decides (SIGTERM to each worker: run marked failed, claim released, exit 130).
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

STOP_WAIT_S = 15.0  # a stopped worker marks its run failed within this, else it is SIGKILLed
ASK_S = 2.0  # a worker asked to stop (through stdin) that is still there then gets SIGTERM
ENTRY = "from harness.sweep_pool import worker; worker()"


# -- worker side ---------------------------------------------------------------------------
def worker() -> None:
    """A worker process: ``python -c ENTRY FD`` with the init line first on stdin."""
    import queue
    import threading
    from dataclasses import asdict

    from harness import sweep

    signal.signal(signal.SIGTERM, sweep._on_term)
    sweep._why = "its worker process got SIGTERM, not from the sweep (a person or the system?)"
    init = json.loads(sys.stdin.readline())
    sys.path[:] = init["path"]  # as the sweep sees modules (plugins of imports: included)
    parent, tasks = init["parent"], queue.Queue()

    def gone() -> None:  # the sweep is gone: stop as for SIGTERM, naming it
        sweep._why = f"the sweep process {parent} died (killed?)"
        os.kill(os.getpid(), signal.SIGTERM)

    def read():
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("interrupt"):  # the sweep stops (Ctrl-C, scancel): as for its SIGTERM
                sweep._why = "sweep interrupted"
                os.kill(os.getpid(), signal.SIGTERM)
                continue
            tasks.put(msg)
            if msg.get("stop"):
                return
        gone()  # stdin ended without a stop

    threading.Thread(target=read, daemon=True, name="harness-sweep-stdin").start()
    from harness import config as config_mod

    runs = config_mod.load(init["config"], init["sets"])  # runs the config's imports: plugins register here too
    import torch

    import harness.experiment  # noqa: F401  (the import this worker exists to pay once)

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    out = os.fdopen(int(sys.argv[1]), "w", buffering=1)

    def send(msg: dict) -> None:
        try:
            out.write(json.dumps(msg) + "\n")
        except OSError:  # BrokenPipeError: the sweep is gone
            gone()

    send({"ready": os.getpid()})
    while True:
        msg = tasks.get()
        if msg.get("stop"):
            out.close()
            return
        i = msg["run"]
        send({"started": i})
        r = sweep.run_one(i, runs[i], Path(msg["out"]), force=msg.get("force", False),
                          on_row=lambda i, step, steps, sim: send({"row": [i, step, steps, sim]}))
        send({"result": asdict(r)})


# -- parent side ---------------------------------------------------------------------------
class SweepError(ValueError):
    """The sweep cannot go on (a worker that cannot start); one line, as a config error."""


def how(code: int) -> str:
    """``-9`` -> ``"killed by SIGKILL"``; ``130`` -> ``"exit status 130"``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Worker:
    """One worker process seen from the sweep: its stdin, the read end of its pipe, and the
    run it was given last (None when idle)."""

    def __init__(self, source: tuple[str, list[str]]):
        import harness

        r, w = os.pipe()
        root = str(Path(harness.__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", ENTRY, str(w)], stdin=subprocess.PIPE, pass_fds=(w,),
                                         env=env, start_new_session=True)
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.fd, self.buf, self.run, self.ready, self.started = r, b"", None, False, False
        self.send({"path": sys.path, "config": source[0], "sets": source[1], "parent": os.getpid()})

    def send(self, msg: dict) -> bool:
        try:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except OSError:  # it died: its pipe's end says so
            return False

    def read(self) -> tuple[list[dict], bool]:
        """The messages now in the pipe, and whether it ended (the worker is gone)."""
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:
            chunk = b""
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        msgs = []
        for line in lines:
            try:
                msgs.append(json.loads(line))
            except ValueError:
                pass
        return msgs, not chunk

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            os.close(self.fd)
        except OSError:
            pass


def run_pool(source, runs, todo: list[int], out: Path, jobs: int, progress, end, force=frozenset()) -> None:
    """Run ``runs[i]`` for ``i`` in ``todo`` on ``jobs`` workers; ``end(result)`` as each ends."""
    from harness.sweep import Result, mark_failed

    left, workers, again = deque(todo), [], set()
    sel = selectors.DefaultSelector()

    def give(w: Worker) -> None:
        if not left:
            w.run = None
            w.send({"stop": True})
            return
        w.run, w.started = left.popleft(), False
        w.send({"run": w.run, "out": str(out), "force": runs[w.run].run_id in force})

    def start() -> None:
        w = Worker(source)
        workers.append(w)
        sel.register(w.fd, selectors.EVENT_READ, w)
        give(w)

    def died(w: Worker) -> None:
        sel.unregister(w.fd)
        w.close()
        code = w.proc.wait()
        workers.remove(w)
        if not w.ready:  # it never got to work: a fresh one would fail alike
            raise SweepError(f"a sweep worker process failed to start ({how(code)}; its error is above); "
                             "the runs given to it did not start")
        if w.run is None:
            return
        cfg = runs[w.run]
        if not w.started and w.run not in again:
            again.add(w.run)  # it died before it started the run; given to another once more (not for ever)
            left.appendleft(w.run)
        else:  # it died in the run (SIGKILL, out of memory): that run failed
            why = "died (killed, or out of memory?)" if code == -signal.SIGKILL else f"ended ({how(code)})"
            mark_failed(out / cfg.run_id, f"its sweep worker process {why}")
            end(Result(w.run, cfg.run_id, "failed", f"FAILED: its worker process {why}"))
        if left:
            start()  # a fresh worker takes its place

    try:
        for _ in range(min(jobs, len(left))):
            start()
        while workers:
            for key, _ in sel.select(0.2):
                w = key.data
                msgs, eof = w.read()
                for m in msgs:
                    if "row" in m:
                        progress.update(*m["row"])
                    elif "result" in m:
                        end(Result(**m["result"]))
                        give(w)
                    elif "started" in m:
                        w.started = True
                    elif "ready" in m:
                        w.ready = True
                if eof:
                    died(w)
    except BaseException:
        stop(workers, runs, out)
        raise
    finally:
        sel.close()


def stop(workers: list[Worker], runs, out: Path) -> None:
    """Stop the workers now: each marks its run failed and releases its claim (asked through
    stdin, then SIGTERM after :data:`ASK_S`; a stopped one is continued first); one that has not
    ended within :data:`STOP_WAIT_S` is killed."""
    from harness.sweep import mark_failed

    for w in workers:  # asked through stdin, so that a worker knows who stopped it
        w.send({"interrupt": True})
        try:
            w.proc.send_signal(signal.SIGCONT)  # a stopped one too
        except OSError:
            pass
    deadline, signalled = time.monotonic() + STOP_WAIT_S, time.monotonic() + ASK_S
    for w in workers:
        try:
            w.proc.wait(max(0.0, signalled - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.send_signal(signal.SIGTERM)  # its stdin thread did not get to it (starved, or wedged)
    for w in workers:
        try:
            w.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
            if w.run is not None:
                mark_failed(out / runs[w.run].run_id, "its sweep worker process did not stop within "
                            f"{STOP_WAIT_S:g} s of the sweep's SIGTERM and was killed")
        w.close()
