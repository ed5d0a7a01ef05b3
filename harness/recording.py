"""Per-worker counters and the recorder that turns ``Record`` ops into table rows.

Every backend owns one :class:`Stats` (a struct of ``[n]`` arrays: clock and cumulative
compute/comm/idle seconds, bytes, messages) and one :class:`Recorder`. Worker rows are
written every ``log_every`` steps. At evaluation steps (every ``eval_every`` steps, the
first and the last) the recorder averages the workers' models into the consensus model
(evaluating the models an algorithm names with ``Record(eval_x=...)``: EASGD's centre,
LSGD's leader) once all workers have reported that step, and writes a ``worker = -1`` row with test
metrics, the consensus distance ``mean_i ||x_i - x_bar||^2``, the valley width
``mean_i ||x_i - x_bar||``, counters summed over
workers and the latest worker clock.

Spread at every step (issue [15]): evaluating the consensus distance only every ``eval_every``
steps aliases against an algorithm's period (every 20 steps against ``period: 8`` draws a
zig-zag that is not there), so the simulators also give every logged worker row its own
squared distance to the workers' mean at that step, ``dist_to_mean = ||x_i - x_bar||^2``
(the mean over a step's workers is the consensus distance). SimPy hands each worker's model
to :meth:`Recorder.offer` at every step (kept until every live worker has reported that step),
the stacked backend hands ``[n, d]`` to :meth:`Recorder.spread`; both compute it with the same
tensor ops, so their tables stay equal. Real backends leave it NaN (it would need a gather
per step).

Divergence (``on_divergence``, issue [14]): a run whose loss or parameters stop being finite
has no accuracy to report, so the recorder watches for it where it is cheap. The backends
hand every ``Record``'s loss (a scalar per worker, ``[n]`` stacked) to :meth:`Recorder.check_loss`;
the parameters are checked at evaluation steps only, on the stacked models the consensus row
averages anyway. The first divergence becomes a ``diverged`` event row (worker, step, the bad
value in ``train_loss``) and :attr:`Recorder.diverged`; under ``stop`` :class:`Diverged` is
raised so the simulator ends at once, with the rows so far kept on the exception.

A finite blow-up is a divergence too (issue [21]): SGD at lr 1000 drives the loss from 2.3 to
1e10 and accuracy to chance without ever producing a NaN. :class:`LossWatch` keeps each
worker's first recorded loss and flags a loss above ``divergence.loss_factor`` times it
(:class:`DivergenceSpec`). Why the loss and not "test accuracy at chance": the loss is seen by
every backend at every ``Record`` (the real backends compute test metrics only after the run,
off the clock), and per worker, so a rank decides alone, as it does for a NaN.

Live rows and restarts (issue [27]): a recorder with a :class:`harness.live.Live` attached
(``recorder.live``) hands its rows to the run's callbacks during the run (:meth:`Recorder.take_new`
gives each row once; :mod:`harness.live` decides when). :meth:`Recorder.state_dict` /
:meth:`Recorder.load_state_dict` hold everything kept between ``Record`` ops as plain data, so a
run restarted from a step boundary continues the very same table; the live attachment is no part
of it (a restored recorder hands all its rows to the new process's callbacks again).
"""
from __future__ import annotations

from typing import Callable

import math

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from harness.cost import Traffic

COUNTERS = ("time", "compute_s", "comm_s", "idle_s", "bytes_sent", "bytes_recv", "messages")
ON_DIVERGENCE = ("stop", "continue")


class DivergenceSpec(BaseModel):
    """``divergence:`` in a config: when a finite loss counts as diverged (issue [21])."""

    model_config = ConfigDict(extra="forbid")
    loss_factor: float | None = Field(
        1000.0, gt=1, description="a worker's train loss above this many times its first recorded loss (absolute "
        "value) marks the run diverged, as a NaN does; null: only NaN/inf")


class Diverged(Exception):
    """A non-finite loss or parameter, or a blown-up loss, under ``on_divergence: stop``.
    ``info``: ``{"step", "worker", "what": "train_loss" | "params", "value": "nan" | "inf" |
    "-inf" | "6.1e+03"}``, plus ``"first"`` and ``"factor"`` for a blow-up (the worker's first
    loss and the rule's factor); ``frame``: the rows recorded up to then (set by
    ``harness.experiment``)."""

    def __init__(self, info: dict):
        super().__init__(info)  # one plain arg: SimPy may re-create exceptions from their args
        self.info, self.frame = info, None

    def __str__(self) -> str:
        return describe(self.info)


def describe(info: dict) -> str:
    """``diverged at step 17 (worker 3: train_loss is nan)``: the words of the one-line error."""
    who = "server" if info["worker"] < 0 else f"worker {info['worker']}"
    what = f"{info['what']} is {info['value']}" if info["what"] == "train_loss" else f"params contain {info['value']}"
    if "first" in info:
        what += f", over {info['factor']:g} x its first value {info['first']}"
    return f"diverged at step {info['step']} ({who}: {what})"


def divergence_line(run_id: str, info: dict) -> str:
    """The one line on stderr: ``harness: error: run <id> diverged at step 17 (worker 3: ...)``."""
    more = "" if info.get("stopped", True) else "; it kept going (on_divergence: continue)"
    return f"harness: error: run {run_id} {describe(info)}{more}"


def bad_word(values: torch.Tensor) -> str:
    """How a non-finite tensor is non-finite, in one word: ``nan``, ``inf`` or ``-inf``;
    a finite (blown-up) value as 3 significant digits."""
    if torch.isnan(values).any():
        return "nan"
    if bool(torch.isfinite(values).all()):
        return f"{float(values.reshape(-1)[0]):.3g}"
    return "-inf" if bool((values == -math.inf).any()) else "inf"


class LossWatch:
    """Which of the workers' losses is bad: non-finite, or above ``factor`` times that
    worker's first finite non-zero loss (``|l0|``; ``factor`` None: non-finite only). Shared
    by the simulators' :class:`Recorder` and the real ranks, so both flag the same step."""

    def __init__(self, n: int, factor: float | None):
        self.factor = factor
        self.first = [math.nan] * n  # scalar path (SimPy, real ranks)
        self.first_t: np.ndarray | None = None  # [n] float64, vector path (stacked)

    def bad(self, workers: list[int], loss: torch.Tensor, skip=()) -> tuple[int, float | None] | None:
        """``(j, first)``: the first bad entry of ``loss`` (``[k]``, for ``workers``) and the
        worker's first loss if it blew up (None: non-finite); None if all are fine. Workers in
        ``skip`` are not looked at. One read-back per call."""
        if loss.numel() == 1:
            return self.bad_one(workers[0], float(loss.reshape(-1)[0]), skip)
        # one read-back, then numpy on k numbers: a dozen small torch ops per step cost ~15 % of a
        # stacked digits run (benchmarks/stacked_methods.py)
        v = loss.detach().to(torch.float64).cpu().numpy().reshape(-1)
        ok = np.isfinite(v)
        bad = ~ok
        live = None if not skip else np.array([w not in skip for w in workers])
        if self.factor is not None:
            if self.first_t is None:
                self.first_t = np.full(len(self.first), np.nan)
                self.limit = np.full(len(self.first), np.inf)  # factor x first loss; inf until there is one
                self._idx = {}
            key = tuple(workers)
            idx = self._idx.get(key)
            if idx is None:
                idx = self._idx[key] = np.asarray(workers)
            bad |= v > self.limit[idx]  # NaN > x is False: non-finite losses are bad through ~ok
            unset = np.isnan(self.first_t[idx])
            if unset.any():  # only until every worker has its first loss
                new = unset & ok & (v != 0) if live is None else unset & ok & (v != 0) & live
                self.first_t[idx[new]] = np.abs(v[new])
                self.limit[idx[new]] = self.factor * np.abs(v[new])
        if live is not None:
            bad &= live
        if not bad.any():
            return None
        j = int(np.flatnonzero(bad)[0])
        return j, (None if not ok[j] else float(self.first_t[workers[j]]))

    def bad_one(self, w: int, v: float, skip=()) -> tuple[int, float | None] | None:
        """:meth:`bad` for one worker's loss ``v`` as a number (no tensor ops: SimPy and the
        real ranks call this at every ``Record``)."""
        if w in skip:
            return None
        if not math.isfinite(v):
            return 0, None
        if self.factor is None:
            return None
        ref = self.first[w]
        if v > self.factor * ref:  # False while ref is NaN
            return 0, ref
        if math.isnan(ref) and v != 0:
            self.first[w] = abs(v)
        return None


class Stats:
    def __init__(self, n: int):
        self.n = n
        for c in COUNTERS:
            setattr(self, c, np.zeros(n, dtype=np.int64 if c == "messages" else np.float64))

    def counters(self) -> dict[str, np.ndarray]:
        return {c: getattr(self, c) for c in COUNTERS}

    def add_traffic(self, i, t: Traffic):
        self.bytes_sent[i] += t.sent
        self.bytes_recv[i] += t.recv
        self.messages[i] += t.messages

    def finish_comm(self, i, arrived, finished, cost):
        """A worker that reached a communication op at ``arrived`` and left it at
        ``finished``: up to ``cost`` seconds of that were communication, the rest waiting."""
        elapsed = finished - arrived
        comm = np.minimum(cost, elapsed)
        self.comm_s[i] += comm
        self.idle_s[i] += elapsed - comm
        self.time[i] = finished


class Recorder:
    CHECKPOINT_WIRING = ("on_eval", "live")  # this process's callbacks: never saved in a checkpoint (harness.checkpoint)

    def __init__(self, meta: dict, n: int, steps: int, evaluate: Callable[[torch.Tensor], dict],
                 eval_every: int = 25, log_every: int = 1, on_eval: Callable[[dict], None] | None = None,
                 on_divergence: str | None = None, loss_factor: float | None = DivergenceSpec().loss_factor):
        self.meta, self.n, self.steps = meta, n, steps
        self.evaluate, self.eval_every, self.log_every = evaluate, eval_every, log_every
        self.on_eval = on_eval
        # None: no checks (the real backends' ranks check and agree themselves, harness.backends.rank)
        self.on_divergence = on_divergence
        self.watch = LossWatch(n, loss_factor)  # non-finite or blown-up losses
        self.diverged: dict | None = None  # the first divergence, see mark_diverged
        self.rows: list[dict] = []
        self.alive = set(range(n))
        self._pending: dict[int, dict[int, torch.Tensor]] = {}
        self._last: dict[int, dict] = {}  # worker -> its latest row (dist_to_mean is filled in later)
        self._spread: dict[int, dict[int, tuple[torch.Tensor, dict]]] = {}  # step -> worker -> (x, row)
        self.live = None  # harness.live.Live: hands rows to the run's callbacks during the run
        self._sent = 0  # rows[:_sent] were handed to the live callbacks (take_new)

    def is_eval(self, step: int) -> bool:
        return step == 0 or step == self.steps or step % self.eval_every == 0

    def worker(self, i: int, step: int, rnd: int, stats: Stats, loss=None, metrics: dict | None = None,
               slot: int | None = None):
        """A row for worker ``i``; ``slot`` is its index in ``stats`` (its rank) if different."""
        if step % self.log_every and step != self.steps:
            return
        row = self.worker_row(i, step, rnd, stats, loss, metrics, slot)
        self.rows.append(row)
        self._last[i] = row
        if self.live is not None:
            self.live.tick(self, False)

    def worker_row(self, i: int, step: int, rnd: int, stats: Stats, loss=None, metrics: dict | None = None,
                   slot: int | None = None) -> dict:
        """The row :meth:`worker` writes, without writing it (the real ranks' live rows are built
        from their logged counters with it, :mod:`harness.live`)."""
        k = i if slot is None else slot
        row = {**self.meta, "worker": i, "event": "step", "step": step, "round": rnd,
               "time_s": float(stats.time[k])}
        for c in COUNTERS[1:]:
            row[c] = stats.__dict__[c][k].item()
        row["train_loss"] = float(loss) if loss is not None else np.nan
        row["dist_to_mean"] = np.nan
        if metrics:
            row.update({k: float(v) for k, v in metrics.items()})
        return row

    def event(self, i: int, kind: str, time_s: float, stats: Stats, slot: int | None = None):
        """A fault row (``failed``/``recovered``) for worker ``i`` at ``time_s``."""
        k = i if slot is None else slot
        row = {**self.meta, "worker": i, "event": kind, "step": -1, "round": -1, "time_s": float(time_s)}
        row.update({c: stats.__dict__[c][k].item() for c in COUNTERS[1:]})
        self.rows.append(row)

    # -- divergence ----------------------------------------------------------------------
    def check_loss(self, workers, step: int, loss, stats: Stats, slots=None, skip=()):
        """Every ``Record``: ``loss`` of ``workers`` (a number, or a ``[k]`` tensor for ``k``
        workers; one fused check and one read-back per call). Workers in ``skip`` sat out
        their last ``Grad`` (``members=``), whose NaN loss is by design, not a divergence.
        Bad: non-finite, or blown up (:class:`LossWatch`)."""
        if self.on_divergence is None or self.diverged is not None or loss is None:
            return
        loss = torch.tensor([float(loss)]) if isinstance(loss, (float, int)) else loss.detach().reshape(-1)
        workers = [workers] if isinstance(workers, int) else list(workers)
        hit = self.watch.bad(workers, loss, skip)
        if hit is None:
            return
        j, first = hit
        slots = workers if slots is None else ([slots] if isinstance(slots, int) else list(slots))
        self._diverge(workers[j], step, "train_loss", loss[j:j + 1], stats, slots[j], first)

    def check_params(self, step: int, X: torch.Tensor, counters: dict, ids, E: torch.Tensor | None = None):
        """Evaluation steps: the models ``X`` (``[k, d]``, workers ``ids``) and ``E``."""
        if self.on_divergence is None or self.diverged is not None:
            return
        ok = torch.isfinite(X).all(-1) if E is None else torch.isfinite(X).all(-1) & torch.isfinite(E).all(-1)
        if bool(ok.all()):
            return
        j = int(torch.nonzero(~ok).flatten()[0])
        bad = X[j] if not bool(torch.isfinite(X[j]).all()) else E[j]
        snap = Stats(1)
        for c in COUNTERS:
            getattr(snap, c)[0] = counters[c][j]
        self._diverge(ids[j], step, "params", bad, snap, 0)

    def mark_diverged(self, i: int, step: int, what: str, values: torch.Tensor, stats: Stats, slot: int,
                      first: float | None = None) -> dict:
        """Record a divergence of worker ``i`` (``-1``: the server) at ``step`` as a ``diverged``
        row and return its ``info`` (see :class:`Diverged`); ``first``: the worker's first loss
        when a finite loss blew up. Never raises."""
        info = {"step": int(step), "worker": int(i), "what": what, "value": bad_word(values)}
        if first is not None:
            info.update(first=f"{first:.3g}", factor=self.watch.factor)
        row = {**self.meta, "worker": int(i), "event": "diverged", "step": int(step), "round": -1,
               "time_s": float(stats.time[slot])}
        row.update({c: stats.__dict__[c][slot].item() for c in COUNTERS[1:]})
        if what == "train_loss":
            row["train_loss"] = float(values.reshape(-1)[0])
        self.rows.append(row)
        self.diverged = info
        return info

    def _diverge(self, i, step, what, values, stats, slot, first=None):
        info = self.mark_diverged(i, step, what, values, stats, slot, first)
        if self.on_divergence == "stop":
            raise Diverged(info)

    def drop(self, i: int, stats: Stats):
        """Worker ``i`` is gone for good: consensus rows average the others from now on."""
        self.alive.discard(i)
        for step in sorted(self._pending):
            self._complete(step, stats)
        for step in sorted(self._spread):
            self._spread_done(step)

    def spread(self, step: int, X: torch.Tensor):
        """Stacked models ``[n, d]`` at ``step`` (workers ``0..n-1``, rows just written):
        fill their ``dist_to_mean``."""
        rows = [self._last.get(i) for i in range(len(X))]
        if all(r is not None and r["step"] == step for r in rows):
            self._write_spread(X, rows)

    def _write_spread(self, X: torch.Tensor, rows: list[dict]):
        sq = ((X - X.mean(0)) ** 2).sum(-1)
        for r, v in zip(rows, sq.tolist()):
            r["dist_to_mean"] = v

    def _spread_done(self, step: int):
        got = self._spread[step]
        if not self.alive <= set(got):
            return
        del self._spread[step]
        live = sorted(self.alive)
        self._write_spread(torch.stack([got[j][0] for j in live]), [got[j][1] for j in live])

    def offer(self, i: int, step: int, rnd: int, x: torch.Tensor, stats: Stats, e: torch.Tensor | None = None):
        """Worker ``i`` reached ``step`` with model ``x`` (and model to evaluate ``e``);
        evaluate once all have (and fill the step's ``dist_to_mean`` once all have)."""
        row = self._last.get(i)
        if row is not None and row["step"] == step and i in self.alive:
            self._spread.setdefault(step, {})[i] = (x, row)
            self._spread_done(step)
        if not self.is_eval(step):
            return
        # Snapshot the counters now: other workers may already be further on when the
        # last one arrives, and the row must not depend on the backend's visiting order.
        got = self._pending.setdefault(step, {})
        got[i] = (x, [stats.__dict__[c][i].item() for c in COUNTERS], rnd, x if e is None else e)
        self._complete(step, stats)

    def _complete(self, step, stats):
        got = self._pending[step]
        if not self.alive <= set(got):
            return
        del self._pending[step]
        live = sorted(self.alive)
        X = torch.stack([got[j][0] for j in live])
        snap = np.array([got[j][1] for j in live]).T
        E = torch.stack([got[j][3] for j in live])
        self.consensus(step, got[live[0]][2], X, dict(zip(COUNTERS, snap)), E, ids=live)

    def update(self, i: int, step: int, staleness: float, stats: Stats, slot: int):
        """An ``update`` row: the server applied worker ``i``'s contribution, ``staleness``
        versions old (server counters ``slot``)."""
        row = {**self.meta, "worker": i, "event": "update", "step": step, "round": -1,
               "time_s": float(stats.time[slot]), "staleness": float(staleness)}
        row.update({c: stats.__dict__[c][slot].item() for c in COUNTERS[1:]})
        self.rows.append(row)

    def consensus(self, step: int, rnd: int, X: torch.Tensor, counters: dict, E: torch.Tensor | None = None,
                  ids=None):
        """Consensus row from the stacked models, per-worker counters ``[n]`` each and the
        models to evaluate ``E`` (default ``X``); ``ids``: the workers of ``X``'s rows
        (default ``0..k-1``; ``[-1]`` for a server's model), named if their model diverged."""
        xbar = X.mean(0)
        ebar = xbar if E is None else E.mean(0)
        row = {**self.meta, "worker": -1, "event": "eval", "step": step, "round": rnd,
               "time_s": float(np.max(counters["time"]))}
        for c in COUNTERS[1:]:
            row[c] = float(np.sum(counters[c]))
        row.update(self.evaluate(ebar))
        sq = ((X - xbar) ** 2).sum(-1)
        row["consensus_dist"] = sq.mean().item()
        row["valley_width"] = sq.sqrt().mean().item()
        self.rows.append(row)
        self.check_params(step, X, counters, range(len(X)) if ids is None else list(ids), E)
        if self.on_eval:
            self.on_eval(row)
        if self.live is not None:
            self.live.tick(self, True)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def take_new(self) -> list[dict]:
        """The rows written since the last call (each row once), for the live callbacks. A row
        may still change after it was taken (a SimPy step's ``dist_to_mean`` is filled in once
        every worker reached it): the final table is the one to trust."""
        new = self.rows[self._sent:]
        self._sent = len(self.rows)
        return new

    # -- restarts (checkpoints) ----------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything this recorder keeps between ``Record`` ops, as plain data (dicts, lists,
        tensors; ``torch.save``-able): the rows so far, the evaluation steps still waiting for
        workers (``pending``), the steps whose ``dist_to_mean`` is not filled in yet (``spread``),
        each worker's latest row (``last``), the live workers, the loss watch's first losses and
        the first divergence. Rows held elsewhere are named by their index in ``rows``, so that
        a restored recorder fills in the very rows it restored. The config-given settings
        (``meta``, ``n``, ``steps``, ...) are not state: a fresh recorder of the same config has them."""
        at = {id(r): j for j, r in enumerate(self.rows)}
        w = self.watch
        return {
            "version": 1, "n": self.n,
            "rows": [dict(r) for r in self.rows],
            "alive": sorted(self.alive),
            "pending": {s: {i: {"x": g[0], "counters": list(g[1]), "round": g[2], "e": g[3]} for i, g in got.items()}
                        for s, got in self._pending.items()},
            "last": {i: at[id(r)] for i, r in self._last.items()},
            "spread": {s: {i: {"x": x, "row": at[id(r)]} for i, (x, r) in got.items()}
                       for s, got in self._spread.items()},
            "watch": {"first": list(w.first),
                      "first_t": None if w.first_t is None else torch.from_numpy(w.first_t.copy()),
                      "limit": None if w.first_t is None else torch.from_numpy(w.limit.copy())},
            "diverged": None if self.diverged is None else dict(self.diverged),
        }

    def load_state_dict(self, d: dict) -> None:
        """Continue from :meth:`state_dict`'s ``d`` (taken from a recorder of the same config)."""
        if d.get("version") != 1 or d.get("n") != self.n:
            raise ValueError(f"recorder state: made for {d.get('n')} workers (version {d.get('version')}), "
                             f"this run has {self.n}; resume a checkpoint with the config that wrote it")
        self.rows = [dict(r) for r in d["rows"]]
        self.alive = set(d["alive"])
        self._pending = {s: {i: (g["x"], list(g["counters"]), g["round"], g["e"]) for i, g in got.items()}
                         for s, got in d["pending"].items()}
        self._last = {i: self.rows[j] for i, j in d["last"].items()}
        self._spread = {s: {i: (g["x"], self.rows[g["row"]]) for i, g in got.items()} for s, got in d["spread"].items()}
        w, ws = self.watch, d["watch"]
        w.first = list(ws["first"])
        if ws["first_t"] is not None:
            w.first_t, w.limit, w._idx = ws["first_t"].numpy().copy(), ws["limit"].numpy().copy(), {}
        else:
            w.first_t = None
        self.diverged = None if d["diverged"] is None else dict(d["diverged"])
        self._sent = 0  # the new process's callbacks get every row

    def __getstate__(self) -> dict:
        """Pickling (a checkpoint of the whole backend) leaves the live callbacks out: they hold
        files and belong to the process that writes them."""
        state = dict(self.__dict__)
        state.update(live=None, _sent=0)
        return state
