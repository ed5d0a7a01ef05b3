"""Algorithm registry. An algorithm is a generator function

    def my_method(ctx, x, *, lr: float = 0.1, ...) -> Generator[Op, Any, Tensor]

written from one worker's point of view (see ``harness.ops``), registered with
``@register("my_method")``. Its keyword-only parameters are its hyper-parameters: the
config's ``algorithm:`` block is validated against their annotations and defaults.

An optimizer is one parameter, ``inner: Optimizer = Optimizer(lr=0.1)``
(:class:`harness.transforms.Optimizer`), *spliced* into flat keys: ``inner`` (its name),
``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``beta1``, ``beta2``, ``eps``; any other
``foo: Optimizer`` gives ``foo``, ``foo_lr``, ``foo_momentum``, ... The registered function
takes the flat keys (its ``inspect.signature`` shows them, so configs, validation and the
``hp.*`` columns stay flat) and calls the algorithm with the re-assembled ``Optimizer``.

``register(name, server=, requires=, check=)`` also records what the algorithm needs from a
backend (:func:`requirements`) and cross-field rules that need the run (:func:`check`).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Callable

import torch
from pydantic import ConfigDict, ValidationError, create_model

from harness.transforms import Optimizer

ALGORITHMS: dict[str, Callable] = {}
FEATURES = frozenset({"gossip", "quorum", "p2p", "overlap", "members", "onesided", "codec", "part", "time", "timeout"})


@dataclass(frozen=True)
class Ctx:
    """What an algorithm may know about its run (never time or network).

    ``index`` is this worker's index as a tensor: a 0-d ``tensor(i)`` on per-worker
    backends, ``arange(n)`` on the stacked one, so ``v.gather(-1, ctx.index[..., None])``
    picks "my entry" of a gathered ``[..., n]`` value on both. ``segments`` are the
    ``(start, end)`` ranges of the model's parameter tensors in the flat vector (layers);
    ``params`` their ``(name, shape)`` in the same order. ``n_clients`` is the number of keys
    of keyed state (:func:`harness.parts.keyed`): the clients of a federated run, else the
    workers.
    """

    n_workers: int
    steps: int
    seed: int
    index: Any = None
    segments: tuple = ()
    role: str = "worker"  # "server" on rank 0 of algorithms registered with server=True
    rank: int = -1  # process rank for Send/Recv (server algorithms only; server = 0)
    n_clients: int = 0  # 0: as many as workers
    params: tuple = ()  # ((name, shape), ...) of the task's parameter tensors
    part_sizes: tuple = ()  # samples in each data part (a client's shard with n_clients)
    batch_size: int = 0  # the task's minibatch size (for passes over a shard: Sampler.n_batches)
    resume: Any = None  # a saved (step, Step, state) carry to continue from (harness.checkpoint), else None

    def __post_init__(self):
        if not self.n_clients:
            object.__setattr__(self, "n_clients", self.n_workers)

    def mine(self, gathered):
        """This worker's entry of a gathered ``[..., n]`` tensor (``[]``, or ``[n]`` stacked)."""
        return gathered.gather(-1, self.index.unsqueeze(-1)).squeeze(-1)

    def member(self, members):
        """Whether this worker is in ``members`` (ids or a mask, as ``members=`` of the ops):
        a bool ``[]``, or ``[n]`` stacked; ``.unsqueeze(-1)`` masks a model in ``torch.where``."""
        from harness.ops import member_ids

        mask = torch.zeros(self.n_workers, dtype=torch.bool)
        mask[list(member_ids(members, self.n_workers))] = True
        return mask[self.index]


def register(name: str, server: bool = False, requires: set[str] | Callable[[dict], set[str]] = frozenset(),
             check: Callable[[dict, int], None] | None = None, replace: bool = False):
    """Register an algorithm: a generator function ``fn(ctx, x, *, hyper-parameters)`` or a
    *part factory* ``fn(*, hyper-parameters) -> Part`` (:mod:`harness.parts`), run by
    :func:`harness.parts.run`. ``server=True``: it also runs as a server on rank 0 (roles).
    ``requires``: the backend features it uses (:data:`FEATURES`), or a function of the validated
    (flat) params returning them. ``check(params, n_workers)``: cross-field rules that need the
    run; raises ``ValueError("algorithm.<field>: ...")``. A name that exists (a built-in or an
    earlier plugin) is refused unless ``replace=True``."""
    if not callable(requires) and set(requires) - FEATURES:
        raise ValueError(f"register({name!r}): unknown feature(s) {sorted(set(requires) - FEATURES)}; known: {sorted(FEATURES)}")
    if not _LOADING:
        _load_builtin()  # so that a plugin can never be overwritten by a built-in loaded later

    def deco(fn):
        code = getattr(fn, "__code__", None)
        origin = (getattr(code, "co_filename", "?"), getattr(fn, "__qualname__", None),
                  None if code is None else (code.co_code, repr(code.co_consts)))
        old = ALGORITHMS.get(name)
        # the same function registered again (a plugin file imported twice) is no conflict
        if old is not None and not replace and getattr(old, "origin", (None,))[1:] != origin[1:]:
            raise ValueError(f"register({name!r}): an algorithm of that name exists already "
                             f"({getattr(old, 'origin', ('?',))[0]}); choose another name, or "
                             f"register({name!r}, replace=True)")
        fn = _as_generator(_splice(fn))
        fn.origin = origin
        ALGORITHMS[name] = fn
        fn.algorithm_name = name
        fn.has_server = server
        fn.requires = requires
        fn.check_params = check
        return fn

    return deco


def _as_generator(fn):
    """``fn`` itself if it takes ``(ctx, x, ...)``; for a part factory (keyword-only parameters
    only), a generator function ``(ctx, x, **hp)`` that runs ``fn(**hp)`` with
    :func:`harness.parts.run`."""
    sig = inspect.signature(fn)
    if any(p.kind is not inspect.Parameter.KEYWORD_ONLY for p in sig.parameters.values()):
        return fn

    @functools.wraps(fn)
    def algorithm(ctx, x, **kw):
        from harness.parts import Part, run

        p = fn(**kw)
        if not isinstance(p, Part):
            raise TypeError(f"algorithm {fn.__name__!r} takes only hyper-parameters, so it must return a "
                            f"harness.parts.Part, got {type(p).__name__}")
        return run(p, ctx, x)

    pos = [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in ("ctx", "x")]
    algorithm.__signature__ = sig.replace(parameters=[*pos, *sig.parameters.values()])
    algorithm.factory = fn
    return algorithm


def optimizer_keys(param: str) -> dict[str, str]:
    """Flat config keys of an ``Optimizer`` parameter, by field: ``inner`` -> ``lr``, ...;
    ``outer`` -> ``outer_lr``, ...; the ``name`` field is the parameter itself."""
    prefix = "" if param == "inner" else f"{param}_"
    return {f: param if f == "name" else prefix + f for f in Optimizer.model_fields}


def _splice(fn):
    """``fn`` itself if it has no ``Optimizer`` parameter, else a wrapper taking flat keys."""
    sig = inspect.signature(fn)
    specs, flat = {}, []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and (isinstance(p.default, Optimizer) or p.annotation is Optimizer):
            default = p.default if isinstance(p.default, Optimizer) else Optimizer()
            specs[p.name] = (default, optimizer_keys(p.name))
            for f, key in specs[p.name][1].items():
                info = Optimizer.model_fields[f]
                ann = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
                flat.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=getattr(default, f), annotation=ann))
        else:
            flat.append(p)
    if not specs:
        return fn
    names = [p.name for p in flat]
    if len(set(names)) < len(names):
        raise ValueError(f"{fn.__name__}: spliced optimizer keys collide: {sorted({k for k in names if names.count(k) > 1})}")

    @functools.wraps(fn)
    def spliced(*args, **kw):
        for param, (default, keys) in specs.items():
            v = kw.pop(param, default)
            fields = v.model_dump() if isinstance(v, Optimizer) else {**default.model_dump(), "name": v}
            fields.update({f: kw.pop(key) for f, key in keys.items() if f != "name" and key in kw})
            kw[param] = Optimizer(**fields)
        return fn(*args, **kw)

    spliced.__signature__ = sig.replace(parameters=flat)
    spliced.optimizers = {param: keys for param, (_, keys) in specs.items()}  # for nested blocks in configs
    return spliced


def get(name: str) -> Callable:
    _load_builtin()
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm.name: unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def hyperparameters(name: str) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(get(name))
    return {k: p for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _flatten_optimizers(fn, params: dict[str, Any]) -> dict[str, Any]:
    """``inner: {name: sgd, lr: 0.05}`` (a nested optimizer block) as the flat keys it means
    (``inner: sgd, lr: 0.05``); a key given both ways is one line."""
    opts = getattr(fn, "optimizers", None) or getattr(getattr(fn, "factory", None), "optimizers", None) or {}
    out = dict(params)
    for param, keys in opts.items():
        block = out.get(param)
        if not isinstance(block, dict):
            continue
        del out[param]
        for f, v in block.items():
            if f not in keys:
                raise ValueError(f"algorithm.{param}.{f}: not an optimizer field; known: {', '.join(sorted(keys))}")
            if keys[f] in out:
                raise ValueError(f"algorithm.{param}.{f}: given twice (also as algorithm.{keys[f]}); keep one")
            out[keys[f]] = v
    return out


def validate_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the algorithm's keyword-only parameters; return them with
    defaults filled in. Raises ValueError with one line naming the field."""
    hp = hyperparameters(name)
    params = _flatten_optimizers(get(name), params)
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


def requirements(name: str, params: dict[str, Any] | None = None) -> set[str]:
    """Backend features that algorithm ``name`` needs with ``params`` (``"server"`` for roles)."""
    fn = get(name)
    req = getattr(fn, "requires", frozenset())
    if callable(req):
        req = req(validate_params(name, {k: v for k, v in (params or {}).items() if k != "name"}))
    return set(req) | ({"server"} if fn.has_server else set())


def check(name: str, params: dict[str, Any], n_workers: int) -> None:
    """Cross-field rules of ``name`` that need the run (e.g. ``backup < n_workers``); raises
    ValueError with one line naming the field. ``params``: validated, ``name`` may be in it."""
    hook = getattr(get(name), "check_params", None)
    if hook is not None:
        hook(validate_params(name, {k: v for k, v in params.items() if k != "name"}), n_workers)


_LOADING = False
_LOADED = False


def _load_builtin():
    # Imported lazily so that reading a config never needs these modules.
    global _LOADING, _LOADED
    if _LOADED or _LOADING:
        return
    _LOADING = True
    try:
        from harness.algorithms import (async_easgd, async_local_sgd, async_sgd, diloco, dppf, dpsgd, easgd,  # noqa: F401
                                        fedavg, grawa, local_sgd, lsgd, palsgd, post_local_sgd, qsr, sync_sgd)
        from harness.algorithms import fedasync, fedbuff, fedfix  # noqa: F401  (issue 22: server roles)
        from harness.algorithms import fedopt, scaffold  # noqa: F401 (issue 22: SCAFFOLD, FedAdam/FedYogi/FedAdagrad)
        from harness.algorithms import fedau, mifa  # noqa: F401 (issue 22: FedAU and its baselines, MIFA)
        _LOADED = True
    finally:
        _LOADING = False


__all__ = ["ALGORITHMS", "FEATURES", "Ctx", "Optimizer", "check", "get", "hyperparameters", "optimizer_keys", "register",
           "requirements", "validate_params"]
