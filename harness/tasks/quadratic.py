"""A deterministic quadratic task for hand-checked tests (no sampling noise).

Worker ``i`` minimises ``f_i(x) = 1/2 sum_k a_ik (x_k - c_ik)^2`` with a diagonal
curvature ``a_i`` (uniform in ``[a_min, a_max]``; ``a_min = a_max = 1`` gives
``1/2 ||x - c_i||^2``) and a centre ``c_i ~ N(0, spread^2 I)``, both drawn from
``centers_seed`` (not the run seed, so every seed solves the same problem). The global
objective is ``F(x) = (1/n) sum_i f_i(x)``, minimised at ``x* = sum_i a_i c_i / sum_i a_i``.

The "data" is one row per worker, ``[a_i, c_i]``, and worker ``i``'s shard holds only
its own row, so every minibatch is that row repeated and ``Grad`` returns the exact
``grad f_i(x) = a_i (x - c_i)`` whatever the batch size. The initial model is
``init_scale * N(0, I)`` from the run seed.

``evaluate`` is not a classifier's: ``train_loss = F(x)``, ``test_loss = F(x) - F(x*)``
(the optimality gap, >= 0) and ``test_acc = exp(-||x - x*||)`` (1 at the optimum, in
(0, 1]), so accuracy-based summaries stay meaningful. ``segments`` cut ``x`` into
``layers`` near-equal blocks, for per-layer methods.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from harness.tasks.base import Task, TaskParams


class QuadraticParams(TaskParams):
    name: Literal["quadratic"] = "quadratic"
    dtype: str = "float64"
    batch_size: int = Field(1, ge=1, description="any value: every row of a shard is the same")
    dim: int = Field(8, ge=1)
    spread: float = Field(1.0, ge=0, description="std of the worker centres c_i")
    a_min: float = Field(1.0, ge=0)
    a_max: float = Field(1.0, ge=0)
    init_scale: float = Field(1.0, ge=0)
    layers: int = Field(2, ge=1, description="number of segments ('layers') of x")
    centers_seed: int = 0

    @field_validator("a_max", "layers")
    @classmethod
    def _at_least(cls, v, info: ValidationInfo):
        low = info.data.get("a_min" if info.field_name == "a_max" else "dim")
        if low is not None and (v < low if info.field_name == "a_max" else v > low):
            raise ValueError(f"must be {'>= a_min' if info.field_name == 'a_max' else '<= dim'} ({low}), got {v}")
        return v


class QuadraticTask(Task):
    name = "quadratic"
    Params = QuadraticParams

    def __init__(self, params: QuadraticParams, n_workers: int, seed: int):
        self.dtype = getattr(torch, params.dtype)
        self.batch_size, self.partition, self.dim = params.batch_size, "quadratic", params.dim
        self.init_scale = params.init_scale
        parts = params.n_parts(n_workers)  # one row (a_i, c_i) per part
        g = torch.Generator().manual_seed(params.centers_seed)
        u = torch.rand(parts, params.dim, generator=g, dtype=torch.float64)
        a = params.a_min + (params.a_max - params.a_min) * u
        c = params.spread * torch.randn(parts, params.dim, generator=g, dtype=torch.float64)
        self.a, self.c = a.to(self.dtype), c.to(self.dtype)
        self.optimum = ((a * c).sum(0) / a.sum(0).clamp_min(1e-300)).to(self.dtype)
        self.x_train = self.x_test = torch.cat([self.a, self.c], dim=1)
        self.y_train = self.y_test = torch.arange(parts)
        self.shards = [np.array([i]) for i in range(parts)]
        cuts = np.linspace(0, params.dim, params.layers + 1).round().astype(int)
        self.segments = [(int(s), int(e)) for s, e in zip(cuts[:-1], cuts[1:])]

    def init_params(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return (self.init_scale * torch.randn(self.dim, generator=g, dtype=torch.float64)).to(self.dtype)

    def loss(self, p, xb, yb):
        a, c = xb[..., : self.dim], xb[..., self.dim :]
        return 0.5 * (a * (p.unsqueeze(-2) - c) ** 2).sum(-1).mean(-1)

    def predict(self, p, xb):
        return p.unsqueeze(-2).expand(*p.shape[:-1], xb.shape[-2], self.dim)

    @torch.no_grad()
    def evaluate(self, p: torch.Tensor) -> dict[str, float]:
        f = self.loss(p, self.x_train, self.y_train).item()
        f_star = self.loss(self.optimum, self.x_train, self.y_train).item()
        return {"train_loss": f, "test_loss": f - f_star,
                "test_acc": float(np.exp(-(p - self.optimum).norm().item()))}
