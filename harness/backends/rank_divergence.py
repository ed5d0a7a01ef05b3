"""Divergence on the real backends: every rank stops at the same point, rows end where the
simulators' end.

Why a separate agreement: in a simulator one process sees every worker and simply stops. Here
each rank sees only itself, and a rank that left the generator on its own would leave its
peers blocked in the next collective. So a worker checks its own loss at every ``Record`` (one
number, already read for its row: non-finite, or above ``divergence.loss_factor`` times its
first loss, :class:`harness.recording.LossWatch`) and its own model at evaluation steps (``d``
numbers), and remembers the first divergence as a ``diverged`` row.

Lock-step methods: under ``on_divergence: stop`` the workers exchange what they saw at each
evaluation step, right after the evaluation gather that every worker already takes part in
(one all-gather of 6 numbers, off the clock, not counted in bytes), and if anyone diverged
every rank leaves the generator there. Rows after the first divergence (earliest step, then
lowest worker) are dropped afterwards, so the table is the one a simulator writes.

Server methods (issue [21]) have no point where all ranks meet before the end, so the ranks
tell each other by message. Every rank ends its run by sending an ``END`` message (tag
:data:`END_TAG`, payload: its first divergence or none) to every other rank and then receives
until it has every peer's ``END``, discarding what else arrives (messages to a rank that
stopped): no send is left unmatched, so MPI's and gloo's sends complete and the job ends
cleanly. A rank whose loss or model diverges under ``stop`` ends its run at once; the others
are told by its ``END``, which :class:`EndAwareTransport` finds in their next receive (whatever
source and tag that receive asked for) and turns into :class:`Stop`. Every rank then knows the
run's first divergence and keeps only that ``diverged`` row; the other rows are kept as they
were logged (each rank stopped soon after, in wall time, as SimPy stops "in time"). Cost of a
run that does not diverge: ``size - 1`` small messages per rank after the clock has stopped.
"""
from __future__ import annotations

import math

import torch

from harness.recording import LossWatch

WHAT = ("train_loss", "params")
END_TAG = 32767  # the largest tag every MPI accepts (MPI_TAG_UB >= 32767); algorithms use small tags
WIDTH = 6  # [flag (1: non-finite, 2: blown up), step, worker, what, value, first]


class Stop(Exception):
    """Every rank agreed that the run diverged: leave the generator (on_divergence: stop)."""


def encode(d: dict | None) -> list[float]:
    """A divergence ``info`` as :data:`WIDTH` numbers (all zero: none)."""
    if d is None:
        return [0.0] * WIDTH
    blown = "first" in d
    value = float(d["value"]) if blown else {"nan": math.nan, "-inf": -math.inf}.get(d["value"], math.inf)
    return [2.0 if blown else 1.0, d["step"], d["worker"], WHAT.index(d["what"]), value,
            float(d["first"]) if blown else 0.0]


def decode(r: list[float], factor: float | None) -> dict | None:
    """The inverse of :func:`encode` (``factor``: the run's ``divergence.loss_factor``)."""
    if r[0] == 0.0:
        return None
    v = r[4]
    if r[0] == 2.0:
        return {"step": int(r[1]), "worker": int(r[2]), "what": WHAT[int(r[3])], "value": f"{v:.3g}",
                "first": f"{r[5]:.3g}", "factor": factor}
    word = "nan" if math.isnan(v) else ("-inf" if v < 0 else "inf")
    return {"step": int(r[1]), "worker": int(r[2]), "what": WHAT[int(r[3])], "value": word}


def first_of(infos) -> dict | None:
    """The run's divergence: the earliest step, then the lowest worker (the server is -1)."""
    hits = sorted((d for d in infos if d), key=lambda d: (d["step"], d["worker"]))
    return hits[0] if hits else None


class EndAwareTransport:
    """A server method's transport: ``recv`` always takes the next message from anyone and
    matches source and tag itself (one sender's messages stay in order, as MPI matches), so
    that a peer's ``END`` is seen whatever this rank waits for. Everything else is the
    wrapped transport's."""

    def __init__(self, tr, stop: bool, factor: float | None):
        self._tr, self._stop, self._factor = tr, stop, factor
        self.early: list[tuple] = []  # (src, tag, x, nbytes) received before they were asked for
        self.ended: dict[int, dict | None] = {}  # peer rank -> its first divergence (None: none)

    def __getattr__(self, name):
        return getattr(self._tr, name)

    def recv(self, src, tag):
        def match(s, t):
            return (src < 0 or s == src) and (tag is None or t == tag)

        for k, (s, t, x, nbytes) in enumerate(self.early):
            if match(s, t):
                del self.early[k]
                return s, t, x, 0.0, nbytes
        waited = 0.0
        while True:
            s, t, x, w, nbytes = self._tr.recv(-1, None)
            waited += w
            if t == END_TAG:
                self.ended[s] = decode(x.tolist(), self._factor)
                if self._stop and self.ended[s] is not None:
                    raise Stop()
                continue
            if match(s, t):
                return s, t, x, waited, nbytes
            self.early.append((s, t, x, nbytes))

    def end(self, mine: dict | None) -> dict | None:
        """Send ``END`` to every peer, receive every peer's; return the run's first divergence."""
        tr = self._tr
        payload = torch.tensor(encode(mine), dtype=torch.float64)
        for r in range(tr.size):
            if r != tr.rank:
                tr.send(r, payload, END_TAG)
        self.early = []  # meant for a generator that has ended: nobody will ask for them
        while len(self.ended) < tr.size - 1:
            s, t, x, _, _ = tr.recv(-1, None)
            if t == END_TAG:
                self.ended[s] = decode(x.tolist(), self._factor)
        return first_of([mine, *self.ended.values()])


class DivergenceChecks:
    """Mixed into :class:`harness.backends.rank.RankDriver` (uses its ``rec``, ``tr``,
    ``dog``, ``ctr``, ``stats``, ``i``, ``k``, ``n``, ``div``, ``agree``, ``logged``,
    ``server_alg``)."""

    def _divergence_setup(self, cfg, tr):
        """``__init__``: the loss rule on the recorder (its ``info`` names the factor) and,
        for a server method, the transport that sees ``END`` messages."""
        self.rec.watch = LossWatch(self.n, cfg.divergence.loss_factor)
        if not self.server_alg:
            return tr
        return EndAwareTransport(tr, cfg.on_divergence == "stop", cfg.divergence.loss_factor)

    def _check_loss(self, step, loss):
        """``Record``: this worker's loss; the first bad one becomes this rank's divergence."""
        hit = self.rec.watch.bad_one(self.i, loss, ())
        if hit is not None:
            self._diverged(step, "train_loss", torch.tensor([loss]), hit[1])

    def _diverged(self, step, what, values, first=None):
        """This rank's first non-finite loss or model: a ``diverged`` row, kept until the end."""
        self.ctr.into(self.stats, self.k)
        self.div = self.rec.mark_diverged(self.i, step, what, values, self.stats, self.k, first)

    def _stop_if_diverged(self):
        """End of a server method's ``Record``: under ``stop`` a rank that diverged leaves now
        (its ``END`` tells the others, :meth:`_end_run`)."""
        if self.server_alg and self.agree and self.div is not None:
            raise Stop()

    def _end_run(self):
        """After the generator: server methods exchange ``END`` messages (module docstring)."""
        if not self.server_alg:
            return
        self.dog.busy("the END messages after the run")
        try:
            self.div = self.tr.end(self.div)
        finally:
            self.dog.idle()

    def _agree(self, step):
        """All workers learn each other's first divergence (:data:`WIDTH` numbers each); if
        there is one, every rank raises :class:`Stop` here alike."""
        self.dog.busy(f"the divergence check of step {step}")
        got = self.tr.allgather(torch.tensor(encode(self.div), dtype=torch.float64, device=self.tr.device)).cpu()
        self.dog.idle()
        first = first_of(decode(r, self.rec.watch.factor) for r in got.tolist())
        if first is not None:
            self.div = first
            raise Stop()

    def _cut_rows(self):
        """After an agreed stop: keep rows up to the divergence step (the consensus row of
        that step only if the models diverged: a simulator stops before it otherwise) and
        only the agreed worker's ``diverged`` row, as a simulator records them. Server
        methods keep their rows (each rank stopped soon after) but one ``diverged`` row."""
        if self.div is None or not (self.agree or self.server_alg):
            return
        s, w, rec = self.div["step"], self.div["worker"], self.rec
        if self.server_alg:
            rec.rows = [r for r in rec.rows if r.get("event") != "diverged" or (r["worker"], r["step"]) == (w, s)]
            return
        self.logged = [entry for entry in self.logged if entry[0] <= s]

        def keep(r):
            if r.get("event") == "diverged":
                return r["worker"] == w and r["step"] == s
            return r["step"] < s or r["step"] == s and (r["worker"] != -1 or self.div["what"] == "params")

        rec.rows = [r for r in rec.rows if keep(r)]
        kept = {id(r) for r in rec.rows}
        rec._later = [(r, x) for r, x in rec._later if id(r) in kept]  # deferred test metrics
