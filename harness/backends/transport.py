"""What every real backend shares below the interpreter: the point-to-point message header,
the :class:`Transport` interface a backend implements, the wall clock (pausable during
evaluation), the watchdog that aborts a blocked op, per-rank counters, and the recorder that
defers test metrics until after the run."""
from __future__ import annotations

import operator
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch

from harness.cost import Traffic
from harness.recording import COUNTERS, Recorder, Stats


# dtype codes in point-to-point message headers
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
MAX_DIMS = 8
HEADER_LEN = 4 + MAX_DIMS  # tag, dtype code, wire bytes, ndim, shape...


def header(x: torch.Tensor, tag: int, nbytes: int | None = None) -> list[int]:
    """``nbytes``: the payload's size on the wire (its codec's), counted by the receiver."""
    if x.dim() > MAX_DIMS:
        raise ValueError(f"Send: tensors of at most {MAX_DIMS} dimensions, got {x.dim()}")
    if x.dtype not in DTYPES:
        raise ValueError(f"Send: unsupported dtype {x.dtype}")
    nbytes = x.numel() * x.element_size() if nbytes is None else nbytes
    return [int(tag), DTYPES.index(x.dtype), int(nbytes), x.dim(), *x.shape, *[0] * (MAX_DIMS - x.dim())]


def from_header(h) -> tuple[int, torch.dtype, tuple[int, ...], int]:
    """``(tag, dtype, shape, wire bytes)``."""
    h = [int(v) for v in h]
    return h[0], DTYPES[h[1]], tuple(h[4:4 + h[3]]), h[2]


class Transport:
    """What a real backend provides. Ranks are world ranks; collectives and ``gather_eval``
    span the *workers* (ranks ``setup`` was given; the root of ``gather_eval`` is the first
    worker). Every method may block; ``abort`` never returns."""

    name = "?"
    rank = 0
    size = 1
    job = ""  # an id every rank of this launch agrees on (names the heartbeat directory)
    device = torch.device("cpu")

    def setup(self, workers: list[int]) -> None: ...
    def barrier(self) -> None: ...
    def bcast_obj(self, obj): ...
    def gather_obj(self, obj) -> list | None: ...
    def allreduce_sum(self, x: torch.Tensor) -> torch.Tensor: ...
    def allgather(self, x: torch.Tensor) -> torch.Tensor: ...
    def exchange(self, x: torch.Tensor, outs: dict[int, int], ins: dict[int, int]) -> dict[int, torch.Tensor]:
        """Send ``x`` to every rank of ``outs`` and receive a tensor shaped like ``x`` from
        every rank of ``ins``; each edge has its own tag (``{rank: tag}``)."""
    def send(self, dst: int, x: torch.Tensor, tag: int, nbytes: int | None = None) -> None: ...
    def recv(self, src: int, tag: int | None) -> tuple[int, int, torch.Tensor, float, int]:
        """``(src, tag, x, seconds waited, wire bytes)``."""
    def win_create(self, x: torch.Tensor) -> None:
        """Collective over all ranks: every rank exposes a window holding one tensor like ``x``."""
        raise NotImplementedError(f"backend {self.name}: no one-sided windows; use backend mpi or simpy")
    def win_update(self, ranks: list[int], fn) -> list[torch.Tensor]:
        """Lock the windows of ``ranks`` (ascending), read them, write ``fn(values)`` unless
        ``fn`` is None, unlock; return what was written (or read). Atomic per window."""
        raise NotImplementedError(f"backend {self.name}: no one-sided windows; use backend mpi or simpy")
    def gather_eval(self, x: torch.Tensor, counters: np.ndarray): ...
    def finish(self) -> None: ...
    def close(self) -> None: ...
    def abort(self, msg: str) -> None: ...


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
    :meth:`finish`. The rows are otherwise exactly :class:`Recorder`'s."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._later: list[tuple[dict, torch.Tensor]] = []
        self._evaluate = self.evaluate

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
        self._later = []
