"""Slowdown injection for the real backends (issue [17]): known stragglers on real ranks.

``slowdown: {workers: [2], model: exponential, mean_s: 0.004}`` makes each listed worker
sleep a drawn time after every ``Grad`` (counted as its compute time, as a slower device
would be), so a calibration (``harness calibrate``) can be checked against stragglers whose
size is known. Draws come from ``numpy.random.default_rng([seed, worker, 23])``: the same
sleeps on every launch of a seed. The simulators do not read this section; there, stragglers
are ``compute:`` (``straggler_fraction``, ``worker_factors``, ``markov``).

Models of one sleep (seconds): ``constant`` (``mean_s``), ``exponential`` (mean ``mean_s``),
``lognormal`` (mean-preserving, shape ``sigma``), ``uniform`` (on ``[0, 2 mean_s]``).
"""
from __future__ import annotations

import time
from typing import Callable, Literal

import numpy as np

from harness import streams
from pydantic import BaseModel, ConfigDict, Field


class SlowdownSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workers: list[int] = Field(..., min_length=1, description="worker indices that sleep after every Grad")
    model: Literal["constant", "exponential", "lognormal", "uniform"] = "constant"
    mean_s: float = Field(..., ge=0, allow_inf_nan=False, description="mean sleep per Grad (seconds)")
    sigma: float = Field(0.5, ge=0, allow_inf_nan=False, description="lognormal shape")

    def check_workers(self, n: int) -> None:
        bad = [w for w in self.workers if not 0 <= w < n]
        if bad:
            raise ValueError(f"slowdown.workers: {bad} not in 0..{n - 1} (worker indices)")

    def draws(self, seed: int, worker: int) -> Callable[[], float] | None:
        """Worker ``worker``'s next sleep (seconds) on each call, or None if it never sleeps."""
        if worker not in self.workers:
            return None
        rng, m, s = streams.rng("slowdown", seed, worker), self.mean_s, self.sigma
        draw = {"constant": lambda: m,
                "exponential": lambda: float(rng.exponential(m)),
                "lognormal": lambda: m * float(np.exp(s * rng.standard_normal() - s * s / 2)),
                "uniform": lambda: float(rng.uniform(0.0, 2.0 * m))}[self.model]
        return draw


def sleeper(cfg, worker: int) -> Callable[[], None] | None:
    """What a real rank calls after each ``Grad``: sleeps its next drawn time (None: no slowdown)."""
    spec = getattr(cfg, "slowdown", None)
    draw = None if spec is None or worker < 0 else spec.draws(cfg.seed, worker)
    if draw is None:
        return None
    return lambda: time.sleep(draw())
