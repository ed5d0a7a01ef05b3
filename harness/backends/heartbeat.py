"""Heartbeats: which rank stopped making progress, so that a hung or broken job names it.

Why: when one rank dies or freezes, the *other* ranks are the ones that notice (a broken
connection, an op that never completes), and their own error would name the wrong rank.
So every rank publishes, when its step changes (looked at every 0.1 s) and at least every
``HARNESS_TIMEOUT_S / 10`` (0.25 to 2 s), a fixed-size record rewritten in place in
``<run dir>/.ranks/<job>/r<rank>.json`` (removed when the run ends): its pid and node, the op it is
blocked in, when it last entered or left an op, and where it is (``worker 2, after step
3``). Files, not a side communicator, because they need no thread support from the MPI,
work the same for every backend and launcher, and on a cluster's shared filesystem reach
every node. ``<job>`` is an id the ranks agree on at start, so files of an earlier attempt
of the same run never count.

* **Monitor**: the heartbeat thread also reads its peers' records. A peer with no
  heartbeat for ``HARNESS_TIMEOUT_S`` (stopped, frozen, node down), or whose process is
  gone while no supervisor reports it, ends the job.
* **Blame** (:meth:`Heartbeat.blame`): when a rank fails (its watchdog fired, a
  connection closed, an op timed out), the culprit is, in order: a peer whose process is
  gone, is stopped (``/proc``, same node), or sent no heartbeat lately; for a timeout,
  the peer not in this rank's op (or, failing that, any peer) that made no progress the
  longest. ``None``: the rank itself is the cause.
* **Claim** (:mod:`harness.backends.liveness`): the first rank (or supervisor,
  :mod:`harness.backends.supervisor`) to link ``claim`` reports; every other rank waits
  until ``run.json`` says ``failed`` and ends without a second line.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

from harness.backends import supervisor
from harness.backends.liveness import CULPRIT, claim, claimed, job_dir, node_id, proc_start, proc_state

RECORD_BYTES = 2048  # fixed-size records, rewritten in place: readers never see a half file
TIMEOUT_WORDS = re.compile(r"no progress for|timed out|timeout", re.I)
CONNECTION_WORDS = re.compile(r"connection|closed|reset|broken pipe|peer|socket|mpi", re.I)


def _short(cause: str) -> str:
    line = cause.strip().splitlines()[0] if cause.strip() else cause
    return line if len(line) <= 160 else line[:157] + "..."


class Heartbeat:
    """This rank's heartbeat for one run; ``driver()`` returns the RankDriver (or None)
    and ``on_failure(cause)`` ends the job (``run_rank``'s ``fail``)."""

    def __init__(self, run_dir, tr, record: dict, driver, on_failure, timeout: float):
        self.rank, self.size, self.timeout, self.run_dir = tr.rank, tr.size, timeout, Path(run_dir)
        self.dir = job_dir(run_dir, getattr(tr, "job", ""))
        self.path = self.dir / f"r{self.rank}.json"
        self.driver, self.on_failure = driver, on_failure
        self.interval = min(2.0, max(0.25, timeout / 10)) if timeout > 0 else 2.0
        self.stale_s = max(3 * self.interval, 2.0)  # no beat for this long: frozen (for blame)
        self.pid, self.node, self.host = os.getpid(), node_id(), socket.gethostname()
        self.start = proc_start(self.pid)
        self.peers: dict[int, dict] = {}  # last good record of every peer
        self.t0 = time.monotonic()
        self._stop, self._fired = threading.Event(), False
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            self.beat()
        except OSError:  # cannot write here: no heartbeat, failures name the failing rank
            self._fd = None
            return
        supervisor.announce({"dir": str(self.dir), "run_dir": str(run_dir), "rank": self.rank,
                             "size": self.size, "record": record})
        self._thread = threading.Thread(target=self._loop, daemon=True, name="harness-heartbeat")
        self._thread.start()

    # -- publishing ----------------------------------------------------------------------
    def _dog(self):
        drv = self.driver()
        return drv, getattr(drv, "dog", None)

    def beat(self) -> None:
        drv, dog = self._dog()
        now, mono = time.time(), time.monotonic()
        cur = getattr(dog, "current", None)
        last = getattr(dog, "last", self.t0)
        rec = {"rank": self.rank, "pid": self.pid, "start": self.start, "node": self.node, "host": self.host,
               "supervised": supervisor.active(), "beat": now, "progress": now - (mono - last),
               "op": cur[0][:200] if cur else None, "since": now - (mono - cur[1]) if cur else None,
               "ops": getattr(dog, "ops", 0), "where": (drv.where if drv is not None else "starting")[:200]}
        data = json.dumps(rec).encode()
        os.pwrite(self._fd, data.ljust(RECORD_BYTES), 0)

    def _loop(self) -> None:
        tick = min(0.1, self.interval)  # a new step shows within 0.1 s; the rest every interval
        last, where = time.monotonic(), None
        while not self._stop.wait(tick):
            drv = self.driver()
            now = time.monotonic()
            w = drv.where if drv is not None else None
            full = now - last >= self.interval
            if w == where and not full:
                continue
            where = w
            try:
                self.beat()
                why = self._watch() if full else None
            except Exception:  # noqa: BLE001 - a full disk must not kill the run; blame() copes
                continue
            if full:
                last = now
            if why and not self._fired:
                self._fired = True
                self.on_failure(why)
                return

    def close(self) -> None:
        """The run ended on every rank (after the final barrier): stop, remove the record."""
        if self._fd is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)
        for d in (self.dir, self.dir.parent):
            try:
                d.rmdir()
            except OSError:
                break
        supervisor.announce({"dir": None})

    # -- reading -------------------------------------------------------------------------
    def read_peers(self) -> dict[int, dict]:
        for k in range(self.size):
            if k == self.rank:
                continue
            try:
                self.peers[k] = json.loads((self.dir / f"r{k}.json").read_bytes())
            except FileNotFoundError:
                self.peers.pop(k, None)  # not started, closed (its run ended), or not shared with this node
            except (OSError, ValueError):
                pass  # caught mid-write: keep the last good record
        return self.peers

    def _state(self, b: dict) -> str:
        if b["node"] == self.node:
            st = proc_state(b["pid"], b["start"])
            if st != "alive":
                return st
        return "frozen" if time.time() - b["beat"] > self.stale_s else "alive"

    def _watch(self) -> str | None:
        """What the monitor acts on: a peer without heartbeat for the timeout, or gone."""
        now = time.time()
        for k, b in self.read_peers().items():
            age = now - b["beat"]
            if self.timeout > 0 and age > self.timeout:
                return f"no heartbeat from rank {k} for {age:.0f} s (HARNESS_TIMEOUT_S={self.timeout:g})"
            if b["node"] == self.node and proc_state(b["pid"], b["start"]) == "gone":
                if not b.get("supervised") or age > max(3.0, 2 * self.interval):  # else its supervisor says it
                    return f"the process of rank {k} is gone"
        return None

    # -- blame ---------------------------------------------------------------------------
    def suspect(self, timeout: bool) -> tuple[int, str, dict] | None:
        """``(rank, what happened, its record)`` of the peer to blame, or None."""
        peers = self.read_peers()
        now = time.time()
        by_state: dict[str, list] = {}
        for k, b in peers.items():
            by_state.setdefault(self._state(b), []).append((k, b))
        for st in ("gone", "stopped", "frozen"):
            if by_state.get(st):
                k, b = min(by_state[st], key=lambda kb: kb[1]["beat"])
                what = {"gone": f"died: its process {b['pid']} on {b['host']} is gone (killed by a signal?)",
                        "stopped": f"stopped making progress: its process {b['pid']} on {b['host']} is stopped "
                                   "(SIGSTOP, or a debugger)",
                        "frozen": f"stopped making progress: no heartbeat for {now - b['beat']:.0f} s (process "
                                  f"{b['pid']} on {b['host']} frozen, or its node is down)"}[st]
                return k, what, b
        if not timeout or not peers:
            return None
        _, dog = self._dog()
        mine = getattr(dog, "current", None) or (getattr(dog, "last_desc", None), None)
        others = [(k, b) for k, b in peers.items() if b["op"] != mine[0]]
        k, b = min(others or list(peers.items()), key=lambda kb: kb[1]["progress"])
        my_since = time.time() - (time.monotonic() - (mine[1] or getattr(dog, "last", self.t0)))
        if b["progress"] > my_since:  # it moved on after this rank blocked: this rank is the odd one
            return None
        where = "outside any communication op" if b["op"] is None else f"blocked in {b['op']}"
        return k, f"stopped making progress: none for {now - b['progress']:.0f} s, {where}", b

    def blame(self, cause: str) -> str | None:
        if self._fd is None:
            return None
        try:
            return self._blame(cause)
        except Exception:  # noqa: BLE001 - a torn or foreign record: the failing rank is named
            return None

    def _blame(self, cause: str) -> str | None:
        """The message naming the rank that caused this rank's failure ``cause``, or None
        when it is this rank. If another rank already reported, its message. Waits up to
        3 s for evidence after a broken connection (a dead peer's supervisor, or a peer's
        heartbeat going stale on another node)."""
        timeout = bool(TIMEOUT_WORDS.search(cause))
        wait = 3.0 if CONNECTION_WORDS.search(cause) else 0.0
        end = time.monotonic() + wait
        while True:
            told = claimed(self.dir)
            if told:
                self.await_record()
                return told
            s = self.suspect(timeout)
            if s and not (s[2].get("supervised") and self._state(s[2]) == "gone" and time.monotonic() < end):
                break  # a supervised dead peer: give its supervisor the word (it knows the signal)
            if time.monotonic() >= end:
                break
            time.sleep(0.1)
        if s is None:
            return None
        k, what, b = s
        if b["node"] == self.node and self._state(b) in ("stopped", "frozen"):
            CULPRIT[:] = [b["pid"]]  # a transport's abort may end it first (end_culprit)
        return f"rank {k} ({b['where']}) {what}; noticed by rank {self.rank}: {_short(cause)}"

    def await_record(self, limit: float = 5.0) -> None:
        """Let the reporter finish writing ``run.json`` before this rank ends the job
        (``MPI_Abort`` kills every rank at once), and let its abort come first."""
        from harness.runinfo import run_status

        if self._fd is None:
            return
        end = time.monotonic() + limit
        while run_status(self.run_dir) != "failed" and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(1.0)  # the reporter's abort usually ends this rank now, without a second abort message

    def claim(self, msg: str) -> bool:
        if self._fd is None:
            return True
        try:
            return claim(self.dir, msg)[0]
        except OSError:
            return True
