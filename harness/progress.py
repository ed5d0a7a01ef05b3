"""Overall progress of many runs (``harness run``, ``harness sweep``): how many are done, the
wall time elapsed, an ETA, and the simulated time covered so far.

Why: a sweep of dozens of runs printed nothing until each run ended, and in a SLURM log
(stdout not a terminal) a long run printed nothing at all for its whole length.

* On a terminal (stderr is a tty): one tqdm bar over the runs, advanced by the running runs'
  steps, so its ETA moves between runs too.
* Otherwise: one line every ``HARNESS_PROGRESS_EVERY`` seconds (default 30) on stdout, from a
  timer thread, so a log gets lines even while a single long run has nothing to report::

      sweep: 3/8 runs done, 41 s elapsed, ETA 70 s, simulated 12.3 s

The ETA is the elapsed time scaled by the fraction of work left, the work being steps: a
finished run counts 1, a running one ``step / steps``; runs skipped (already finished, or
claimed by another process) count neither way. ``simulated`` sums the simulated seconds of
the runs finished or running here.
"""
from __future__ import annotations

import os
import sys
import threading
import time

EVERY_ENV = "HARNESS_PROGRESS_EVERY"
DEFAULT_EVERY_S = 30.0


def every_s() -> float:
    """Seconds between progress lines when stdout is not a terminal (``HARNESS_PROGRESS_EVERY``)."""
    from harness import envvars  # [issue 21] one checked reader for every variable

    return envvars.get(EVERY_ENV)


def say(text: str) -> None:
    """Print a line to stdout; if stdout was closed (``harness sweep ... | head``), say so once
    on stderr and go on without it: a closed pipe must not stop the runs (it used to end the
    sweep with a BrokenPipeError traceback)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")
        print("harness: stdout was closed; the runs go on without progress lines", file=sys.stderr, flush=True)


def duration(s: float) -> str:
    """``41 s``, ``12.5 min``, ``3.1 h``."""
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


class Progress:
    """Progress over ``total`` runs, labelled ``label`` (``sweep``, ``run``).

    ``update(key, step, steps, sim_s)`` reports a running run (``key``: any hashable, e.g. its
    index); ``finish(key, sim_s, skipped=, failed=)`` ends it; ``write(text)`` prints a line to
    stdout without breaking the bar; ``close()`` stops the bar or the timer. ``quiet``: nothing
    at all; ``bar=False``: no bar on a terminal (``harness run`` has a per-run bar for one run).
    ``every``, ``tty``, ``clock``: override ``HARNESS_PROGRESS_EVERY``, the terminal check and
    the clock (tests)."""

    def __init__(self, total: int, label: str = "sweep", *, quiet: bool = False, bar: bool = True,
                 every: float | None = None, tty: bool | None = None, clock=time.monotonic):
        self.total, self.label = total, label
        self.done = self.skipped = self.failed = 0
        self.sim_done = 0.0
        self._running: dict = {}  # key -> (fraction of its steps, simulated seconds so far)
        self._lock = threading.Lock()
        self._clock = clock
        self._t0 = clock()
        self._bar = self._timer = None
        self._stop = threading.Event()
        tty = sys.stderr.isatty() if tty is None else tty
        if quiet:
            return
        if tty:
            if bar:
                from tqdm import tqdm

                self._bar = tqdm(total=max(total, 1), desc=label, leave=False, dynamic_ncols=True,
                                 bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
                self._refresh()
            return
        self.every = every_s() if every is None else every
        self._timer = threading.Thread(target=self._lines, daemon=True, name="harness-progress")
        self._timer.start()

    # -- what callers report --------------------------------------------------------------
    def update(self, key, step: int, steps: int, sim_s: float) -> None:
        with self._lock:
            self._running[key] = (min(1.0, step / steps) if steps else 0.0, float(sim_s))
        self._refresh()

    def finish(self, key, sim_s: float | None = None, *, skipped: bool = False, failed: bool = False) -> None:
        with self._lock:
            _, last = self._running.pop(key, (0.0, 0.0))
            self.done += 1
            self.skipped += skipped
            self.failed += failed
            if not skipped:
                self.sim_done += last if sim_s is None else float(sim_s)
        self._refresh()

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            with self._lock:
                say(text)

    def close(self) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- what it shows --------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._clock() - self._t0

    def fraction(self) -> float:
        """Fraction of the work (steps of runs not skipped) done; with the lock held."""
        work = self.total - self.skipped
        if work <= 0:
            return 1.0
        return min(1.0, (self.done - self.skipped + sum(f for f, _ in self._running.values())) / work)

    def eta(self) -> float | None:
        with self._lock:
            f = self.fraction()
        return None if f <= 0 else self.elapsed() * (1 - f) / f

    def simulated(self) -> float:
        with self._lock:
            return self.sim_done + sum(s for _, s in self._running.values())

    def line(self) -> str:
        eta = self.eta()
        text = (f"{self.label}: {self.done}/{self.total} runs done, {duration(self.elapsed())} elapsed, "
                f"ETA {'?' if eta is None else duration(eta)}, simulated {self.simulated():.1f} s")
        return text + (f", {self.failed} failed" if self.failed else "")

    def _refresh(self) -> None:
        if self._bar is None:
            return
        with self._lock:
            n = self.fraction() * max(self.total - self.skipped, 1)
            self._bar.total = max(self.total - self.skipped, 1)
        fail = f", {self.failed} failed" if self.failed else ""
        self._bar.set_postfix_str(f"{self.done}/{self.total} runs, simulated {self.simulated():.1f} s{fail}",
                                  refresh=False)
        self._bar.n = n
        self._bar.refresh()

    def _lines(self) -> None:
        while not self._stop.wait(self.every):
            line = self.line()
            with self._lock:
                if not self._stop.is_set():
                    say(line)


__all__ = ["DEFAULT_EVERY_S", "EVERY_ENV", "Progress", "duration", "every_s"]
