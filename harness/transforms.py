"""Optimizer maths as ``(init, update)`` pairs, in the spirit of Optax.

``state = t.init(params)``; ``update, state = t.update(grad, state, params)``;
``params = params + update``. All maths is elementwise, so it works unchanged on one
worker's ``[d]`` vector and on the stacked ``[n, d]`` matrix. State is explicit data
(tuples of tensors), easy to checkpoint and to compare across backends.

* SGD with momentum (PyTorch convention): ``m <- mu m + g + wd p``;
  ``u = -lr (g' + mu m)`` with Nesterov, else ``u = -lr m``.
* AdamW (Loshchilov & Hutter, arXiv 1711.05101):
  ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
  ``u = -lr (m_hat / (sqrt(v_hat) + eps) + wd p)``.

:class:`Optimizer` is the one hyper-parameter spec of an algorithm's optimizer (name,
learning rate or schedule, momentum, ...): an algorithm declares it once in its signature,
``inner: Optimizer = Optimizer(lr=0.1)``, and the registry splices it into flat config keys
(see ``harness.algorithms``).
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from harness import schedules
from harness.schedules import LR


class Transform(NamedTuple):
    init: Callable[[torch.Tensor], Any]
    update: Callable[[torch.Tensor, Any, torch.Tensor], tuple[torch.Tensor, Any]]


def sgd(lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> Transform:
    def init(p):
        return (torch.zeros_like(p),) if momentum else ()

    def update(g, state, p):
        if weight_decay:
            g = g + weight_decay * p
        if not momentum:
            return -lr * g, state
        (m,) = state
        m = momentum * m + g
        step = g + momentum * m if nesterov else m
        return -lr * step, (m,)

    return Transform(init, update)


def adamw(lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> Transform:
    b1, b2 = betas

    def init(p):
        return (torch.zeros_like(p), torch.zeros_like(p), 0)

    def update(g, state, p):
        m, v, t = state
        t = t + 1  # never in place: a tensor count (masked or keyed state) may be shared
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        u = -lr * (m_hat / (v_hat.sqrt() + eps) + weight_decay * p)
        return u, (m, v, t)

    return Transform(init, update)


def chain(*ts: Transform) -> Transform:
    """Apply transforms in order, each one's update feeding the next as its gradient."""

    def init(p):
        return tuple(t.init(p) for t in ts)

    def update(g, state, p):
        new = []
        for t, s in zip(ts, state):
            g, s = t.update(g, s, p)
            new.append(s)
        return g, tuple(new)

    return Transform(init, update)


OPTIMIZERS = {"sgd": sgd, "adamw": adamw}


def make_optimizer(name: str, **kw) -> Transform:
    """Build an optimizer transform by name (``sgd`` or ``adamw``)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer: unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kw)


class Built(NamedTuple):
    """An :class:`Optimizer` made runnable: ``transform`` has unit learning rate, ``lr(t)``
    is the rate of local step ``t``; a step is ``p + lr(t) * update``."""
    transform: Transform
    lr: Callable[[int], float]


class Optimizer(BaseModel):
    """Hyper-parameters of one optimizer. ``name`` picks the rule: ``sgd`` uses ``momentum``,
    ``nesterov`` and (coupled) ``weight_decay``; ``adamw`` uses ``beta1``, ``beta2``, ``eps`` and
    (decoupled) ``weight_decay``. ``lr`` is a number or a schedule spec (:data:`harness.schedules.LR`).
    Every number is finite; rates and coefficients are >= 0.
    Frozen and hashable; the defaults are PyTorch's."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: Literal["sgd", "adamw"] = "sgd"
    lr: LR = 0.1
    momentum: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    nesterov: bool = False
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    beta1: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.999
    eps: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-8

    def transform(self, lr: float = 1.0) -> Transform:
        """The update rule with a constant learning rate ``lr``."""
        if self.name == "adamw":
            return adamw(lr, (self.beta1, self.beta2), self.eps, self.weight_decay)
        return sgd(lr, self.momentum, self.nesterov, self.weight_decay)

    def build(self, steps: int) -> Built:
        """``(transform, lr_at)`` for a run of ``steps`` local steps: ``u, s = transform.update(g, s, p)``;
        ``p = p + lr_at(t) * u`` (the same numbers as ``transform(lr)`` for a constant rate)."""
        return Built(self.transform(1.0), schedules.make(self.lr, steps))
