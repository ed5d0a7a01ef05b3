"""Algorithm registry. An algorithm is a generator function

    def my_method(ctx, x, *, lr: float = 0.1, ...) -> Generator[Op, Any, Tensor]

written from one worker's point of view (see ``harness.ops``), registered with
``@register("my_method")``. Its keyword-only parameters are its hyper-parameters: the
config's ``algorithm:`` block is validated against their annotations and defaults.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import ConfigDict, ValidationError, create_model

ALGORITHMS: dict[str, Callable] = {}


@dataclass(frozen=True)
class Ctx:
    """What an algorithm may know about its run (never time or network).

    ``index`` is this worker's index as a tensor: a 0-d ``tensor(i)`` on per-worker
    backends, ``arange(n)`` on the stacked one, so ``v.gather(-1, ctx.index[..., None])``
    picks "my entry" of a gathered ``[..., n]`` value on both. ``segments`` are the
    ``(start, end)`` ranges of the model's parameter tensors in the flat vector (layers).
    """

    n_workers: int
    steps: int
    seed: int
    index: Any = None
    segments: tuple = ()
    role: str = "worker"  # "server" on rank 0 of algorithms registered with server=True
    rank: int = -1  # process rank for Send/Recv (server algorithms only; server = 0)

    def mine(self, gathered):
        """This worker's entry of a gathered ``[..., n]`` tensor (``[]``, or ``[n]`` stacked)."""
        return gathered.gather(-1, self.index.unsqueeze(-1)).squeeze(-1)


def register(name: str, server: bool = False):
    """Register an algorithm. ``server=True``: it also runs as a server on rank 0 (roles)."""

    def deco(fn):
        ALGORITHMS[name] = fn
        fn.algorithm_name = name
        fn.has_server = server
        return fn

    return deco


def get(name: str) -> Callable:
    _load_builtin()
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name: unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def hyperparameters(name: str) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(get(name))
    return {k: p for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def validate_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the algorithm's keyword-only parameters; return them with
    defaults filled in. Raises ValueError with one line naming the field."""
    hp = hyperparameters(name)
    fields = {
        k: (p.annotation if p.annotation is not inspect.Parameter.empty else Any, p.default if p.default is not inspect.Parameter.empty else ...)
        for k, p in hp.items()
    }
    model = create_model(f"{name}_params", __config__=ConfigDict(extra="forbid"), **fields)
    try:
        return model.model_validate(params).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = f"unknown parameter for {name}; known: {', '.join(sorted(hp)) or 'none'}"
        else:
            msg = err["msg"]
        raise ValueError(f"algorithm.{field}: {msg}") from None


def _load_builtin():
    # Imported lazily so that registering a user algorithm never needs these modules.
    from harness.algorithms import (async_easgd, async_local_sgd, async_sgd, diloco, dppf, dpsgd, easgd, grawa, local_sgd, lsgd,  # noqa: F401
                                    palsgd, post_local_sgd, qsr, sync_sgd)


__all__ = ["ALGORITHMS", "Ctx", "get", "hyperparameters", "register", "validate_params"]
