"""What a real rank keeps besides its transport: a pausable wall clock, the op watchdog, the
counters of its rows and the recorder that writes them after the run. Split from
:mod:`harness.backends.transport` so that a transport moves bytes only (issue [20]): it imports
neither recording nor supervision.
"""
from __future__ import annotations

import operator
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch

from harness.cost import Traffic
from harness.recording import COUNTERS, Recorder, Stats


class Clock:
    """Wall seconds since ``start``, minus the time spent between ``pause()`` and ``resume()``."""

    def __init__(self):
        self.start()

    def start(self):
        self.t0 = self.base = time.perf_counter()  # base = t0 + paused time so far
        self._frozen = None

    def now(self) -> float:
        return (self._frozen or time.perf_counter()) - self.base

    def pause(self):
        self._frozen = time.perf_counter()

    def resume(self):
        self.base += time.perf_counter() - self._frozen
        self._frozen = None

    @contextmanager
    def paused(self):
        self.pause()
        try:
            yield
        finally:
            self.resume()


class Watchdog:
    """Aborts the job when one communication op blocks longer than ``timeout`` seconds,
    so that a lost peer or mismatched collectives end the run instead of hanging it.

    It also keeps what :mod:`harness.backends.heartbeat` publishes to the other ranks:
    the op this rank is blocked in (``current``), when it last made progress (entered or
    left an op: ``last``, monotonic) and how many ops it has started (``ops``)."""

    def __init__(self, timeout: float, on_timeout):
        self.timeout, self.on_timeout = timeout, on_timeout
        self.current: tuple[str, float] | None = None
        self.last, self.ops, self.last_desc = time.monotonic(), 0, None
        self._stop = threading.Event()
        if timeout > 0:
            threading.Thread(target=self._loop, daemon=True, name="harness-watchdog").start()

    def busy(self, desc: str):
        self.last = now = time.monotonic()
        self.ops += 1
        self.last_desc = desc
        self.current = (desc, now)

    def idle(self):
        self.current = None
        self.last = time.monotonic()

    def stop(self):
        self._stop.set()

    def _loop(self):
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            cur = self.current
            if cur and time.monotonic() - cur[1] > self.timeout:
                t = f"{self.timeout:g}"
                self.on_timeout(f"no progress for {t} s in {cur[0]} (HARNESS_TIMEOUT_S={t})")
                return


COUNTER_VALUES = operator.attrgetter(*COUNTERS)


class Counters:
    """This rank's cumulative counters as Python numbers (cheap to update on every op);
    copied into a :class:`harness.recording.Stats` only when a row is written."""

    __slots__ = COUNTERS

    def __init__(self):
        for c in COUNTERS:
            setattr(self, c, 0 if c == "messages" else 0.0)

    def add_traffic(self, t: Traffic):
        self.bytes_sent += t.sent
        self.bytes_recv += t.recv
        self.messages += t.messages

    def into(self, stats: Stats, k: int) -> Stats:
        for c in COUNTERS:
            getattr(stats, c)[k] = getattr(self, c)
        return stats

    def snapshot(self) -> np.ndarray:
        return np.array([getattr(self, c) for c in COUNTERS], dtype=np.float64)


class DeferredRecorder(Recorder):
    """A Recorder whose consensus rows get their test metrics after the run: the averaged
    model is kept (``d`` numbers per evaluation step, rank 0 only) and evaluated in
    :meth:`finish`. The rows are otherwise exactly :class:`Recorder`'s. Live callbacks get a
    consensus row only once it is complete, after :meth:`finish` (:meth:`take_new`)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._later: list[tuple[dict, torch.Tensor]] = []
        self._evaluate = self.evaluate
        self._done: list[dict] = []  # consensus rows completed by finish(), not yet taken

    def consensus(self, step, rnd, X, counters, E=None):
        self.evaluate = lambda xbar: {}
        try:
            super().consensus(step, rnd, X, counters, E)
        finally:
            self.evaluate = self._evaluate
        self._later.append((self.rows[-1], (X if E is None else E).mean(0)))

    def finish(self):
        for row, xbar in self._later:
            tail = {k: row.pop(k) for k in ("consensus_dist", "valley_width")}
            row.update(self._evaluate(xbar))
            row.update(tail)
        self._done += [row for row, _ in self._later]
        self._later = []

    def take_new(self) -> list[dict]:
        """New rows but the consensus rows still waiting for their test metrics; those come
        with the first call after :meth:`finish`."""
        held = {id(r) for r, _ in self._later}
        new = [r for r in super().take_new() if id(r) not in held] + self._done
        self._done = []
        return new

    def take_done(self) -> list[dict]:
        """Only the consensus rows :meth:`finish` completed (the real ranks' last live delivery:
        their worker rows were handed over as they were logged, harness.live.RankRows)."""
        done, self._done = self._done, []
        return done

    def state_dict(self) -> dict:
        """:meth:`Recorder.state_dict` plus the consensus rows waiting for their test metrics
        (row index, averaged model)."""
        d = super().state_dict()
        at = {id(r): j for j, r in enumerate(self.rows)}
        d["later"] = [{"row": at[id(r)], "xbar": x} for r, x in self._later]
        return d

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self._later = [(self.rows[g["row"]], g["xbar"]) for g in d.get("later", [])]
        self._done = []
