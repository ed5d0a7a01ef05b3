"""Worker crashes and recoveries, as a deterministic schedule per worker.

Crashes come from a list (``crashes: [{worker, at_s}]``) and/or a Poisson process per
worker (``crash_rate_per_s``), drawn from the worker's own seeded stream. A crash takes
effect while the worker computes (a crash that falls in a communication wait is applied at
its next computation).

* ``policy: wait``: the worker is down for ``recover_after_s`` and then goes on with its
  state intact (checkpoint-restart); collectives wait for it. Its computation simply takes
  longer, so the stacked backend's max-plus clocks model it exactly like SimPy.
* ``policy: continue``: the worker is gone for good. Survivors see
  :class:`harness.ops.WorkerFailed` thrown at the yield point of their next collective that
  needed it; the algorithm decides (``harness.ops.retrying`` re-issues the op among the
  survivors). SimPy backend only.

Each crash and recovery appears in the results table as a row with ``event`` ``failed`` or
``recovered``.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from harness import streams
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Crash(BaseModel):
    model_config = ConfigDict(extra="forbid")
    worker: int = Field(ge=0)
    at_s: float = Field(ge=0)


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    crashes: list[Crash] = Field(default_factory=list)
    crash_rate_per_s: float = Field(0.0, ge=0, description="Poisson crash rate per worker per simulated second")
    recover_after_s: float | None = Field(None, gt=0, description="downtime before the worker is back (policy wait)")
    policy: Literal["wait", "continue"] = "wait"

    @model_validator(mode="after")
    def _check(self):
        if self.policy == "wait" and (self.crashes or self.crash_rate_per_s) and self.recover_after_s is None:
            raise ValueError("faults.recover_after_s: policy 'wait' needs a downtime, e.g. recover_after_s: 2.0 "
                             "(or policy: continue for permanent crashes)")
        return self

    def check_workers(self, n: int) -> None:
        for c in self.crashes:
            if c.worker >= n:
                raise ValueError(f"faults.crashes: worker {c.worker} does not exist (workers 0..{n - 1})")


class FaultSchedule:
    """Next crash time per worker; ``inf`` when none is left."""

    def __init__(self, spec: FaultSpec | None, n: int, seed: int):
        self.spec = spec or FaultSpec()
        self.rngs = [streams.rng("faults", seed, i) for i in range(n)]
        self.listed = [sorted(c.at_s for c in self.spec.crashes if c.worker == i) for i in range(n)]
        self.poisson = [self._draw(i, 0.0) for i in range(n)]

    @property
    def active(self) -> bool:
        return bool(self.spec.crashes or self.spec.crash_rate_per_s)

    def _draw(self, i, after):
        rate = self.spec.crash_rate_per_s
        return after + self.rngs[i].exponential(1 / rate) if rate else np.inf

    def next_crash(self, i: int) -> float:
        return min(self.listed[i][0] if self.listed[i] else np.inf, self.poisson[i])

    def consume(self, i: int, at: float, back: float) -> None:
        """The crash scheduled at ``at`` happened; the next one comes after ``back``."""
        if self.listed[i] and self.listed[i][0] == at:
            self.listed[i].pop(0)
        else:
            self.poisson[i] = np.inf
        self.listed[i] = [t for t in self.listed[i] if t >= back]
        if self.spec.crash_rate_per_s and self.poisson[i] == np.inf:
            self.poisson[i] = self._draw(i, back)

    def downtime(self, i: int, start: float, dt: float) -> list[float]:
        """Crashes of worker ``i`` during a computation of ``dt`` from ``start`` under
        policy ``wait``: the crash times; the computation is longer by the downtimes."""
        hits, end = [], start + dt
        while self.next_crash(i) <= end:
            raw = self.next_crash(i)
            at = max(raw, start)  # a crash during a communication wait hits the next computation
            self.consume(i, raw, at + self.spec.recover_after_s)
            hits.append(at)
            end += self.spec.recover_after_s
        return hits
