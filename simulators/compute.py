"""Compute-time models: seconds for ``cost`` units of work (1 unit = one minibatch gradient).

Base distribution per draw (``model``), mean ``mean_s`` per unit:

* ``constant``: ``mean_s``;
* ``lognormal``: ``mean_s * exp(sigma z - sigma^2/2)``, ``z ~ N(0,1)`` (mean-preserving);
* ``exponential``: ``Exp(mean_s)``; ``shifted_exp``: ``shift_s + Exp(mean_s - shift_s)``;
* ``pareto``: Lomax-free classic Pareto with shape ``alpha > 1`` scaled to mean ``mean_s``
  (``x_m = mean_s (alpha-1)/alpha``): a heavy tail;
* ``trace``: replay ``seconds`` from a CSV with columns ``worker, step, seconds`` (a worker's
  k-th draw reads its k-th step, cycling when the trace is shorter than the run);
* ``calibrated``: ``mean_s`` is *measured* (median real time of this task's gradient on this
  machine), then lognormal noise with ``sigma`` (0: constant).

On top of the base draw: persistent stragglers (a seeded ``round(straggler_fraction n)``
workers are ``straggler_factor`` times slower) and optional Markov on/off slowdowns (per
draw a fast worker turns slow with ``p_slow``, a slow one recovers with ``p_recover``; slow
draws take ``factor`` times longer). Every worker draws from its own seeded stream, so the
times do not depend on the order in which a backend visits workers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class MarkovSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p_slow: float = Field(0.05, ge=0, le=1)
    p_recover: float = Field(0.3, ge=0, le=1)
    factor: float = Field(5.0, ge=1)


class ComputeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Literal["constant", "lognormal", "exponential", "shifted_exp", "pareto", "trace", "calibrated"] = "lognormal"
    mean_s: float = Field(0.01, gt=0, description="mean seconds per compute unit")
    sigma: float = Field(0.25, ge=0, description="lognormal shape")
    shift_s: float = Field(0.0, ge=0, description="shifted_exp: minimum time")
    alpha: float = Field(3.0, gt=1, description="pareto shape (> 1 for a finite mean)")
    trace: str | None = Field(None, description="trace: CSV with worker, step, seconds")
    straggler_fraction: float = Field(0.0, ge=0, le=1)
    straggler_factor: float = Field(4.0, ge=1)
    markov: MarkovSpec | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.model == "shifted_exp" and self.shift_s >= self.mean_s:
            raise ValueError(f"compute.shift_s must be < compute.mean_s ({self.shift_s} >= {self.mean_s})")
        if self.model == "trace" and not self.trace:
            raise ValueError("compute.trace: model 'trace' needs trace: path/to/times.csv (columns worker, step, seconds)")
        return self


class ComputeError(ValueError):
    pass


def load_trace(path: str, n: int) -> list[np.ndarray]:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise ComputeError(f"compute.trace: no such file {path!r}")
    df = pd.read_csv(p)
    missing = {"worker", "step", "seconds"} - set(df.columns)
    if missing:
        raise ComputeError(f"compute.trace: {path} lacks column(s) {sorted(missing)}; need worker, step, seconds")
    out = []
    for w in range(n):
        s = df[df.worker == w].sort_values("step").seconds.to_numpy(dtype=float)
        if len(s) == 0:
            raise ComputeError(f"compute.trace: {path} has no rows for worker {w}; it needs workers 0..{n - 1}")
        out.append(s)
    return out


class ComputeTimes:
    def __init__(self, spec: ComputeSpec, n: int, seed: int, measure: Callable[[], float] | None = None):
        self.spec = spec
        self.mean_s = spec.mean_s
        if spec.model == "calibrated":
            if measure is None:
                raise ComputeError("compute.model: 'calibrated' needs a task to measure")
            self.mean_s = measure()
        self.rngs = [np.random.default_rng([seed, i, 11]) for i in range(n)]
        k = int(round(spec.straggler_fraction * n))
        self.slow = np.sort(np.random.default_rng([seed, 13]).choice(n, size=k, replace=False))
        self.factor = np.ones(n)
        self.factor[self.slow] = spec.straggler_factor
        self.draws = np.zeros(n, dtype=np.int64)
        self.in_slow = np.zeros(n, dtype=bool)
        self.trace = load_trace(spec.trace, n) if spec.model == "trace" else None

    def _base(self, i: int) -> float:
        s, rng, m = self.spec, self.rngs[i], self.mean_s
        if s.model == "constant":
            return m
        if s.model in ("lognormal", "calibrated"):
            return m * float(np.exp(s.sigma * rng.standard_normal() - s.sigma**2 / 2)) if s.sigma else m
        if s.model == "exponential":
            return float(rng.exponential(m))
        if s.model == "shifted_exp":
            return s.shift_s + float(rng.exponential(m - s.shift_s))
        if s.model == "pareto":
            return m * (s.alpha - 1) / s.alpha * float(1 + rng.pareto(s.alpha))
        tr = self.trace[i]  # trace
        return float(tr[(self.draws[i] - 1) % len(tr)])

    def sample(self, i: int, cost: float = 1.0) -> float:
        self.draws[i] += 1
        t = self._base(i) * cost * self.factor[i]
        mk = self.spec.markov
        if mk is not None:
            u = self.rngs[i].random()
            self.in_slow[i] = (u >= mk.p_recover) if self.in_slow[i] else (u < mk.p_slow)
            if self.in_slow[i]:
                t *= mk.factor
        return t


def measure_grad_seconds(task, sampler, repeats: int = 30) -> float:
    """Median wall time of one worker's minibatch gradient on this machine (calibration)."""
    import time

    x = task.init_params(0)
    task.loss_and_grad(x, sampler.worker(0))  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        task.loss_and_grad(x, sampler.worker(0))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))
