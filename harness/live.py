"""Live rows: a run hands its rows to its callbacks while it runs (issue [27]).

``live:`` in a config (:class:`LiveSpec`): every ``every_s`` wall seconds (default 10; 0: off)
and at evaluation rows, the rows written since the last time go to the run's callbacks
(:mod:`harness.callbacks`): the built-in ``parquet`` one, whenever ``every_s > 0``, keeps the run's
table so far in ``metrics.live.parquet`` (real backends: ``live/rank-<k>.parquet``, each rank its
own rows) so that ``results.load`` and ``harness report`` show a running run; ``callbacks:`` adds
others (``tensorboard``, a plugin's). The live files are removed once the final
``metrics.parquet`` is written (and at the start of a run, so a re-run never shows a killed
attempt's rows); a failed run keeps them: its rows so far.

Cost: a delivery builds a frame of the new rows and rewrites the live file (a concatenation of
Arrow tables: no row is converted twice). A delivery waits at least ``COST_FACTOR`` times as long
as the last one took, so writing costs at most ~2 % of a run's wall time however many rows it has
(docs/benchmarks.md). Where the rows come from: a simulated run's :class:`harness.recording.Recorder`
(it calls :meth:`Live.tick` as it writes rows); a real rank's driver keeps only counters at a
``Record`` and builds rows after the run, so :class:`RankRows` builds the live copies from them,
with the rank's clock paused (:func:`attach_rank`).

``live`` is not part of a run's identity (``RunConfig.run_id``) nor one of its settings
(``results.load`` leaves it out of the ``cfg.*`` columns): it changes what is written while a run
runs, never a number of its table.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness import callbacks as cbs
from harness.recording import Stats

COST_FACTOR = 50  # a delivery waits >= 50x the last one's duration: < 2 % of wall time


class LiveSpec(BaseModel):
    """``live:`` in a config: when the rows so far are written, and which callbacks see them."""

    model_config = ConfigDict(extra="forbid")
    every_s: float = Field(10.0, ge=0, allow_inf_nan=False,
                           description="hand the new rows to the callbacks every this many wall seconds and at "
                           "evaluation rows; the live table (metrics.live.parquet) is one of them; 0: off")
    callbacks: list[str] = Field(default_factory=list,
                                 description="extra callbacks by name (tensorboard, or a plugin's; harness.callbacks)")

    @field_validator("callbacks")
    @classmethod
    def _known(cls, v):
        return [cbs.check_name(n) for n in v]


class Live:
    """Hands new rows to ``callbacks`` (started with ``info``) every ``every_s`` s and at
    evaluation rows; :meth:`close` delivers the rest and ends them."""

    def __init__(self, callbacks: dict[str, cbs.Callback], every_s: float, info: cbs.RunInfo):
        self.callbacks, self.every_s, self.info = callbacks, every_s, info
        self.last, self.gap = time.monotonic(), 0.0
        for name in list(self.callbacks):
            self._call(name, "on_start", info)

    def due(self, eval_row: bool) -> bool:
        if self.every_s <= 0:
            return False
        waited = time.monotonic() - self.last
        return waited >= self.gap and (eval_row or waited >= self.every_s)

    def tick(self, source, eval_row: bool) -> None:
        """A row was written (``eval_row``: a consensus row): deliver ``source.take_new()`` if due."""
        if self.due(eval_row):
            self.flush(source.take_new())

    def flush(self, rows: list[dict], skip=()) -> None:
        t0 = time.monotonic()
        if rows and self.callbacks:
            import pandas as pd

            frame = pd.DataFrame(rows)
            for name in [n for n in self.callbacks if n not in skip]:
                self._call(name, "on_rows", frame)
        self.last = time.monotonic()
        self.gap = COST_FACTOR * (self.last - t0)

    def hold(self, rows: list[dict]) -> None:
        """Rows for :meth:`close` to deliver (the run's last, before its status is known)."""
        self.rest = [*getattr(self, "rest", []), *rows]

    def close(self, rows: list[dict], status: str) -> None:
        """The rows not delivered yet (held and ``rows``), then ``on_end(status)``. A run that
        wrote its final table (finished, diverged) skips the callbacks it supersedes (the live
        table: one write fewer)."""
        ended = status in ("finished", "diverged")
        self.flush([*getattr(self, "rest", []), *rows],
                   skip=[n for n, cb in self.callbacks.items() if ended and getattr(cb, "superseded", False)])
        self.rest = []
        for name in list(self.callbacks):
            self._call(name, "on_end", status)
        self.callbacks = {}

    def _call(self, name: str, what: str, arg) -> None:
        try:
            getattr(self.callbacks[name], what)(arg)
        except Exception as e:  # noqa: BLE001 - live output never ends a run; said once, then off
            del self.callbacks[name]
            who = "" if self.info.rank is None else f" (rank {self.info.rank})"
            print(f"harness: warning: live callback {name!r} failed in {what}{who}: {type(e).__name__}: {e}; it is "
                  f"off for the rest of run {self.info.run_id}", file=sys.stderr, flush=True)


def clear(run_dir: Path) -> None:
    """Remove a run directory's live files (the final table is written, or a run starts)."""
    from results.load import LIVE_DIR, LIVE_FILE

    Path(run_dir, LIVE_FILE).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir, LIVE_DIR), ignore_errors=True)


def open_live(cfg, run_dir: Path, rank: int | None = None) -> Live | None:
    """The run's :class:`Live`, or None when it has no callbacks (``every_s: 0`` and none listed).
    A simulated run (``rank`` None) and rank 0 first remove live files of an earlier attempt."""
    if not rank:
        clear(run_dir)
    spec = cfg.live
    names = list(dict.fromkeys([*(["parquet"] if spec.every_s > 0 else []), *spec.callbacks]))
    if not names:
        return None
    info = cbs.RunInfo(cfg.run_id, Path(run_dir), rank, cfg.model_dump())
    return Live({n: cbs.make(n) for n in names}, spec.every_s, info)


class RankRows:
    """A real rank's rows for the live callbacks: its recorder's new rows (``diverged``/``update``
    rows; consensus rows once complete) and copies of the worker rows its driver will build from
    ``drv.logged`` after the run, built now with :meth:`Recorder.worker_row`."""

    def __init__(self, drv):
        self.drv, self.done = drv, 0
        self.stats = Stats(drv.stats.n)

    def take_new(self) -> list[dict]:
        drv = self.drv
        rows = drv.rec.take_new()
        from harness.recording import COUNTERS

        for step, rnd, values, loss, metrics in drv.logged[self.done:]:
            for c, v in zip(COUNTERS, values):
                getattr(self.stats, c)[drv.k] = v
            rows.append(drv.rec.worker_row(drv.i, step, rnd, self.stats, loss, metrics, drv.k))
        self.done = len(drv.logged)
        return rows


def attach_rank(live: Live | None, drv) -> None:
    """Deliver a real rank's rows after its ``Record`` ops (the driver's handler, wrapped): when
    due, at evaluation steps, and always at its last step or a stop, with its clock paused. Rows a
    rank writes after its last ``Record`` (a server method's late ``diverged`` row) and the real
    backends' summed counters of server methods are only in the final table."""
    if live is None:
        return
    from harness.backends.rank_divergence import Stop

    src, record, last = RankRows(drv), drv.handlers["record"], drv.cfg.steps

    def deliver():
        with drv.clock.paused():
            live.flush(src.take_new())

    def handler(op):
        try:
            out = record(op)
        except Stop:
            deliver()
            raise
        step = getattr(op, "step", 0)
        final = step == last and getattr(op, "staleness", None) is None  # not a server's update row
        if final or live.due(drv.rec.is_eval(step)):
            deliver()
        return out

    drv.handlers["record"] = handler
