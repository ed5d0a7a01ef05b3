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
  machine), then lognormal noise with ``sigma`` (0: constant);
* ``measured``: the same for any task, model-size aware: the task's real training step
  (``loss_and_grad`` on one worker's minibatch, on the task's device, CUDA synchronised;
  ``task.time_grad`` where a task has it) is timed once per process and task and cached,
  times ``scale`` (e.g. 0.1 to model a 10x faster device), with lognormal spread ``sigma``.

More models: ``@register_compute("name")`` on ``draw(times, i) -> seconds per unit`` in a
module listed in a config's ``imports:`` (``times.spec.params`` holds the model's options,
``times.rngs[i]`` worker ``i``'s stream, ``times.mean_s`` the mean).

On top of the base draw: persistent stragglers (a seeded ``round(straggler_fraction n)``
workers are ``straggler_factor`` times slower; ``worker_factors`` gives each worker its own
factor, as ``harness calibrate`` fits them) and optional Markov on/off slowdowns (per
draw a fast worker turns slow with ``p_slow``, a slow one recovers with ``p_recover``; slow
draws take ``factor`` times longer). Every worker draws from its own seeded stream, so the
times do not depend on the order in which a backend visits workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness import streams
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


@dataclass(frozen=True)
class ComputeModel:
    """A registered compute model: ``draw(times, i)`` gives worker ``i``'s base seconds per
    unit; ``measured`` models get ``times.mean_s`` from timing the task first."""

    draw: Callable[["ComputeTimes", int], float]
    measured: bool = False
    setup: Callable[["ComputeTimes"], None] | None = None
    params: frozenset[str] | None = None  # the keys of compute.params it reads (None: not declared)


COMPUTE_MODELS: dict[str, ComputeModel] = {}


def register_compute(name: str, *, measured: bool = False, setup: Callable | None = None, params=None):
    """Decorator: ``@register_compute("mine")`` on ``draw(times, i) -> float`` makes
    ``compute: {model: mine, params: {...}}`` available. ``params=("p", ...)`` declares the keys
    of ``compute.params`` it reads: any other key is then one error line [issue 21] (undeclared:
    any params are accepted, as the model may read them; the built-ins take none)."""

    def deco(fn):
        COMPUTE_MODELS[name] = ComputeModel(fn, measured, setup, None if params is None else frozenset(params))
        return fn

    return deco


class MarkovSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p_slow: float = Field(0.05, ge=0, le=1)
    p_recover: float = Field(0.3, ge=0, le=1)
    factor: float = Field(5.0, ge=1)


class ComputeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("lognormal", description="a registered compute model (COMPUTE_MODELS)")
    mean_s: float = Field(0.01, gt=0, description="mean seconds per compute unit")
    sigma: float = Field(0.25, ge=0, description="lognormal shape")
    shift_s: float = Field(0.0, ge=0, description="shifted_exp: minimum time")
    alpha: float = Field(3.0, gt=1, description="pareto shape (> 1 for a finite mean)")
    trace: str | None = Field(None, description="trace: CSV with worker, step, seconds")
    straggler_fraction: float = Field(0.0, ge=0, le=1)
    straggler_factor: float = Field(4.0, ge=1)
    markov: MarkovSpec | None = None
    worker_factors: list[float] | None = Field(
        None, description="persistent per-worker slowdown factors (one per worker, > 0), e.g. fitted by harness calibrate")
    scale: float = Field(1.0, gt=0, description="measured: factor on the measured step time")
    params: dict[str, Any] = Field(default_factory=dict, description="options of a registered model")

    @field_validator("model")
    @classmethod
    def _known(cls, v):
        if v not in COMPUTE_MODELS:
            raise ValueError(f"unknown compute model {v!r}; choose one of {sorted(COMPUTE_MODELS)} "
                             "or register one with harness.models.compute.register_compute")
        return v

    def check_workers(self, n: int) -> None:
        f = self.worker_factors
        if f is not None and (len(f) != n or any(v <= 0 for v in f)):
            raise ValueError(f"compute.worker_factors: needs {n} values > 0 (one per worker), got {f}")
        if self.model == "trace":  # [issue 21] read (and checked) with the config, before anything runs
            load_trace(self.trace, n)

    @model_validator(mode="after")
    def _check(self):
        m = COMPUTE_MODELS[self.model]  # [issue 21] a param the model never reads is a mistake
        if m.params is not None:
            unknown = sorted(set(self.params) - m.params, key=str)
            if unknown:
                raise ValueError(f"compute.params.{unknown[0]}: model {self.model!r} takes "
                                 f"{'the params ' + ', '.join(sorted(m.params)) if m.params else 'no params'}")
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
    seconds = pd.to_numeric(df.seconds, errors="coerce")  # [issue 21] text, negative, inf: named here
    bad = ~(np.isfinite(seconds) & (seconds >= 0))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ComputeError(f"compute.trace: {path} row {row + 2} (worker {df.worker.iloc[row]}, step "
                           f"{df.step.iloc[row]}): seconds {df.seconds.iloc[row]!r} is not a finite number >= 0")
    df = df.assign(seconds=seconds)
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
        self.model = COMPUTE_MODELS[spec.model]
        if self.model.measured:
            if measure is None:
                raise ComputeError(f"compute.model: {spec.model!r} needs a task to measure")
            self.mean_s = measure() * (spec.scale if spec.model == "measured" else 1.0)
        self.rngs = streams.PerId(n, lambda i: streams.rng("compute", seed, i))  # made when a client first computes
        k = int(round(spec.straggler_fraction * n))
        self.slow = np.sort(streams.rng("stragglers", seed).choice(n, size=k, replace=False))
        self.factor = np.ones(n)
        self.factor[self.slow] = spec.straggler_factor
        if spec.worker_factors is not None:
            self.factor *= np.asarray(spec.worker_factors, dtype=float)[:n]
        self.draws = np.zeros(n, dtype=np.int64)
        self.in_slow = np.zeros(n, dtype=bool)
        self.trace = None
        if self.model.setup is not None:
            self.model.setup(self)

    def sample(self, i: int, cost: float = 1.0) -> float:
        self.draws[i] += 1
        t = self.model.draw(self, i) * cost * self.factor[i]
        mk = self.spec.markov
        if mk is not None:
            u = self.rngs[i].random()
            self.in_slow[i] = (u >= mk.p_recover) if self.in_slow[i] else (u < mk.p_slow)
            if self.in_slow[i]:
                t *= mk.factor
        return t


# -- the built-in models ------------------------------------------------------------------
def _lognormal(t: ComputeTimes, i: int) -> float:
    s = t.spec.sigma
    return t.mean_s * float(np.exp(s * t.rngs[i].standard_normal() - s**2 / 2)) if s else t.mean_s


def _trace_setup(t: ComputeTimes):
    t.trace = load_trace(t.spec.trace, len(t.rngs))


# the built-ins take no params (their options are fields of the compute section)
register_compute("constant", params=())(lambda t, i: t.mean_s)
register_compute("lognormal", params=())(_lognormal)
register_compute("calibrated", measured=True, params=())(_lognormal)
register_compute("measured", measured=True, params=())(_lognormal)
register_compute("exponential", params=())(lambda t, i: float(t.rngs[i].exponential(t.mean_s)))
register_compute("shifted_exp", params=())(
    lambda t, i: t.spec.shift_s + float(t.rngs[i].exponential(t.mean_s - t.spec.shift_s)))
register_compute("pareto", params=())(
    lambda t, i: t.mean_s * (t.spec.alpha - 1) / t.spec.alpha * float(1 + t.rngs[i].pareto(t.spec.alpha)))
register_compute("trace", setup=_trace_setup, params=())(lambda t, i: float(t.trace[i][(t.draws[i] - 1) % len(t.trace[i])]))

_MEASURED: dict = {}  # (task timing key, batch size) -> seconds: time a task once per process


def measure_grad_seconds(task, sampler, repeats: int = 30) -> float:
    """Median wall time of one worker's minibatch gradient on this machine (calibration).
    Tasks with ``time_grad`` (torch-module tasks) time their real step on their device,
    once per process (cached by ``task.timing_key``)."""
    import time

    if hasattr(task, "time_grad"):
        key = (getattr(task, "timing_key", id(task)), sampler.batch_size)
        if key not in _MEASURED:
            _MEASURED[key] = task.time_grad(sampler.worker(0))
        return _MEASURED[key]
    x = task.init_params(0)
    task.loss_and_grad(x, sampler.worker(0))  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        task.loss_and_grad(x, sampler.worker(0))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))
