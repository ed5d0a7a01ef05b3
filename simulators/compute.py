"""Compute-time models: seconds for ``cost`` units of work (1 unit = one minibatch gradient).

* ``constant``: ``mean_s * cost``.
* ``lognormal``: ``mean_s * cost * exp(sigma z - sigma^2 / 2)``, ``z ~ N(0, 1)`` per draw
  (mean-preserving: the expected time is ``mean_s * cost``).
* persistent stragglers: a seeded choice of ``round(straggler_fraction * n)`` workers is
  ``straggler_factor`` times slower on every draw.

Each worker draws from its own generator seeded by (seed, worker), so the times a worker
sees do not depend on the order in which a backend visits workers.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class ComputeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Literal["constant", "lognormal"] = "lognormal"
    mean_s: float = Field(0.01, gt=0, description="mean seconds per compute unit")
    sigma: float = Field(0.25, ge=0, description="lognormal shape")
    straggler_fraction: float = Field(0.0, ge=0, le=1)
    straggler_factor: float = Field(4.0, ge=1)


class ComputeTimes:
    def __init__(self, spec: ComputeSpec, n: int, seed: int):
        self.spec = spec
        self.rngs = [np.random.default_rng([seed, i, 11]) for i in range(n)]
        k = int(round(spec.straggler_fraction * n))
        self.slow = np.sort(np.random.default_rng([seed, 13]).choice(n, size=k, replace=False))
        self.factor = np.ones(n)
        self.factor[self.slow] = spec.straggler_factor

    def sample(self, i: int, cost: float = 1.0) -> float:
        t = self.spec.mean_s * cost * self.factor[i]
        if self.spec.model == "lognormal" and self.spec.sigma > 0:
            s = self.spec.sigma
            t *= float(np.exp(s * self.rngs[i].standard_normal() - s * s / 2))
        return t
