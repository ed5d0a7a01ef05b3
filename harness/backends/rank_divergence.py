"""Divergence on the real backends: every rank stops at the same point, rows end where the
simulators' end.

Why a separate agreement: in a simulator one process sees every worker and simply stops. Here
each rank sees only itself, and a rank that left the generator on its own would leave its
peers blocked in the next collective. So a worker checks its own loss at every ``Record`` (one
number, already read for its row) and its own model at evaluation steps (``d`` numbers), and
remembers the first divergence as a ``diverged`` row. Under ``on_divergence: stop`` the workers
exchange what they saw at each evaluation step, right after the evaluation gather that every
worker already takes part in (one all-gather of 5 numbers, off the clock, not counted in bytes),
and if anyone diverged every rank leaves the generator there. Rows after the first divergence
(earliest step, then lowest worker) are dropped afterwards, so the table is the one a simulator
writes. Server algorithms have no point where all ranks meet before the end: they run on and
are marked diverged at the end (``runner.run_rank`` picks the earliest over the ranks).
"""
from __future__ import annotations

import math

import torch

WHAT = ("train_loss", "params")


class Stop(Exception):
    """Every rank agreed that the run diverged: leave the generator (on_divergence: stop)."""


class DivergenceChecks:
    """Mixed into :class:`harness.backends.rank.RankDriver` (uses its ``rec``, ``tr``,
    ``dog``, ``ctr``, ``stats``, ``i``, ``k``, ``div``, ``agree``, ``logged``)."""

    def _diverged(self, step, what, values):
        """This rank's first non-finite loss or model: a ``diverged`` row, kept until the end."""
        self.ctr.into(self.stats, self.k)
        self.div = self.rec.mark_diverged(self.i, step, what, values, self.stats, self.k)

    def _agree(self, step):
        """All workers learn each other's first divergence (``[flag, step, worker, what,
        value]`` each); if there is one, every rank raises :class:`Stop` here alike."""
        d = self.div
        value = {"nan": math.nan, "-inf": -math.inf}.get(d["value"], math.inf) if d else 0.0
        mine = [0.0] * 5 if d is None else [1.0, d["step"], d["worker"], WHAT.index(d["what"]), value]
        self.dog.busy(f"the divergence check of step {step}")
        got = self.tr.allgather(torch.tensor(mine, dtype=torch.float64, device=self.tr.device)).cpu()
        self.dog.idle()
        hits = sorted((int(r[1]), int(r[2]), int(r[3]), r[4]) for r in got.tolist() if r[0] == 1.0)
        if hits:
            s, w, what, v = hits[0]
            word = "nan" if math.isnan(v) else ("-inf" if v < 0 else "inf")
            self.div = {"step": s, "worker": w, "what": WHAT[what], "value": word}
            raise Stop()

    def _cut_rows(self):
        """After an agreed stop: keep rows up to the divergence step (the consensus row of
        that step only if the models diverged: a simulator stops before it otherwise) and
        only the agreed worker's ``diverged`` row, as a simulator records them."""
        if not (self.agree and self.div is not None):
            return
        s, w, rec = self.div["step"], self.div["worker"], self.rec
        self.logged = [entry for entry in self.logged if entry[0] <= s]

        def keep(r):
            if r.get("event") == "diverged":
                return r["worker"] == w and r["step"] == s
            return r["step"] < s or r["step"] == s and (r["worker"] != -1 or self.div["what"] == "params")

        rec.rows = [r for r in rec.rows if keep(r)]
        kept = {id(r) for r in rec.rows}
        rec._later = [(r, x) for r, x in rec._later if id(r) in kept]  # deferred test metrics
