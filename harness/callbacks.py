"""Live callbacks: code that sees a run's rows while it runs (issue [27]).

A callback is a :class:`Callback` subclass registered by name; a config lists the ones it wants
(``live: {callbacks: [tensorboard]}``, :class:`harness.live.LiveSpec`). :mod:`harness.live`
makes one instance per run (per rank on the real backends) and calls

* ``on_start(info)``: once, before the first rows (:class:`RunInfo`: run id, run directory,
  rank, resolved config);
* ``on_rows(frame)``: with the rows written since the last call (a pandas frame of the tidy
  table's rows, :mod:`results.schema`), every ``live.every_s`` seconds, at evaluation rows and
  at the end. Each row comes once; a value filled in later (a SimPy step's ``dist_to_mean``, the
  real backends' test metrics, which come with the consensus rows after the run) is only in the
  final ``metrics.parquet``;
* ``on_end(status)``: once, ``finished``, ``diverged`` or ``failed``.

The live table (``metrics.live.parquet``, what ``results.load`` reads of a running run) is one
such callback, ``parquet``; ``tensorboard`` writes event files under the run's ``tb/``. A plugin
(``imports:``) adds its own with :func:`register_callback`; docs/results.md shows a W&B and an
MLflow one. A callback that raises is switched off for the rest of the run with one line on
stderr: live output must never end a run that is computing correctly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RunInfo:
    run_id: str
    run_dir: Path
    rank: int | None  # None: a simulated run (one process); else this process's rank
    config: dict = field(default_factory=dict)  # the resolved config (RunConfig.model_dump())


class Callback:
    """Base class: override what you need; the defaults do nothing."""

    def on_start(self, info: RunInfo) -> None:
        self.info = info

    def on_rows(self, frame) -> None:
        pass

    def on_end(self, status: str) -> None:
        pass


CALLBACKS: dict[str, type[Callback]] = {}


def register_callback(name: str, replace: bool = False):
    """Class decorator: make ``live.callbacks: [name]`` use this :class:`Callback` subclass
    (made with no arguments). A name that exists is refused unless ``replace=True`` (the same
    class registered again, a plugin imported twice, is no conflict)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_callback({name!r}): expected a non-empty name")

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Callback)):
            raise TypeError(f"register_callback({name!r}): expected a Callback subclass, got {cls!r}")
        old = CALLBACKS.get(name)
        same = old is not None and (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
        if old is not None and not replace and not same:
            raise ValueError(f"register_callback({name!r}): a callback of that name exists already "
                             f"({old.__module__}.{old.__qualname__}); choose another name, or "
                             f"register_callback({name!r}, replace=True)")
        CALLBACKS[name] = cls
        return cls

    return deco


def check_name(name: object) -> str:
    """``name`` if a callback is registered under it; else ValueError, one line with did-you-mean."""
    if isinstance(name, str) and name in CALLBACKS:
        return name
    from harness.cli import did_you_mean

    raise ValueError(f"unknown callback {name!r}{did_you_mean(name, CALLBACKS)}; registered: {', '.join(sorted(CALLBACKS))} "
                     "(a plugin adds one with harness.callbacks.register_callback)")


def make(name: str) -> Callback:
    return CALLBACKS[check_name(name)]()


# -- built-in callbacks -----------------------------------------------------------------------
@register_callback("parquet")
class LiveTable(Callback):
    """The rows so far as ``metrics.live.parquet`` (a simulated run) or ``live/rank-<k>.parquet``
    (each rank of a real run: its own rows), rewritten atomically at every delivery. Each
    delivery becomes one Arrow table kept in memory, so a rewrite is a concatenation and a
    parquet write, not a conversion of every row again; schema columns a delivery lacks are
    added as typed nulls (``results.load`` casts the rest as it does for a final table). The last
    rows of a run that ends with its final table are not written here (``superseded``): that
    table replaces this file at once."""

    superseded = True  # Live.close skips this callback's last on_rows when the final table is written

    def on_start(self, info):
        from results.load import LIVE_DIR, LIVE_FILE

        super().on_start(info)
        self.path = (info.run_dir / LIVE_FILE if info.rank is None
                     else info.run_dir / LIVE_DIR / f"rank-{info.rank}.parquet")
        self.tables = []

    def on_rows(self, frame):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from results.load import _TARGET
        from results.store import atomic_write

        t = pa.Table.from_pandas(frame, preserve_index=False)
        for c in (c for c in _TARGET if c not in t.column_names):
            t = t.append_column(c, pa.nulls(len(t), _TARGET[c]))
        self.tables.append(t)
        table = pa.concat_tables(self.tables, promote_options="permissive")
        self.tables = [table]
        atomic_write(self.path, lambda tmp: pq.write_table(table, tmp))


@register_callback("tensorboard")
class TensorBoard(Callback):
    """Scalars for TensorBoard under the run's ``tb/`` (``tb/rank-<k>/`` per rank of a real run):
    per step, the workers' mean ``train/loss``, summed ``train/bytes_sent`` and latest
    ``train/time_s``, written once every worker has reached that step (or at the end);
    per evaluation, ``test/acc``, ``test/loss``, ``test/ppl`` (text tasks), ``eval/bytes_sent``
    (all workers), ``eval/time_s`` and ``eval/consensus_dist``. Open with
    ``tensorboard --logdir DIR`` (every run below DIR)."""

    EVAL = {"test_acc": "test/acc", "test_loss": "test/loss", "test_ppl": "test/ppl",
            "bytes_sent": "eval/bytes_sent", "time_s": "eval/time_s", "consensus_dist": "eval/consensus_dist"}

    def on_start(self, info):
        from harness.tbevents import EventWriter

        super().on_start(info)
        logdir = info.run_dir / "tb" if info.rank is None else info.run_dir / "tb" / f"rank-{info.rank}"
        self.w = EventWriter(logdir)
        self.steps: dict[int, list[tuple[float, float, float]]] = {}  # step -> (loss, bytes, time) per row
        self.latest: dict[int, int] = {}  # worker -> its latest step
        self.expect = int(info.config.get("n_workers", 1)) if info.rank is None else 1  # workers in these rows

    def on_rows(self, frame):
        ev = frame.get("event")
        if ev is None or not len(frame):
            return
        for r in frame[ev == "eval"].to_dict("records"):
            self.w.scalars(int(r["step"]), {tag: float(r[c]) for c, tag in self.EVAL.items()
                                            if c in r and r[c] is not None and np.isfinite(float(r[c]))})
        work = frame[(ev == "step") & (frame["worker"] >= 0)]
        for w, s, loss, b, t in zip(work["worker"], work["step"], work["train_loss"], work["bytes_sent"],
                                    work["time_s"]):
            self.steps.setdefault(int(s), []).append((float(loss), float(b), float(t)))
            self.latest[int(w)] = max(int(s), self.latest.get(int(w), -1))
        if len(self.latest) >= self.expect:
            self._write(min(self.latest.values()))
        self.w.flush()

    def _write(self, upto: float):
        for s in sorted(k for k in self.steps if k <= upto):
            got = np.array(self.steps.pop(s))
            loss = got[:, 0][np.isfinite(got[:, 0])]
            values = {"train/bytes_sent": got[:, 1].sum(), "train/time_s": got[:, 2].max()}
            if len(loss):
                values["train/loss"] = loss.mean()
            self.w.scalars(s, values)

    def on_end(self, status):
        self._write(float("inf"))
        self.w.close()
