"""Names to builders: ``build(spec, n, seed)`` turns a topology spec into a :class:`Topology`.

A spec is a name (``"ring"``) or a dict ``{"name": "ring", **params}``. Every topology takes
``weights`` (see :mod:`topologies.weights`); the other keys are the keyword parameters of the
builder (static graphs: :mod:`topologies.static`; dynamic ones: :mod:`topologies.dynamic` and
:mod:`topologies.perturb`). Unknown keys, bad values and impossible sizes raise
:class:`TopologyError` with one line naming the field; the step-0 matrix is built eagerly so
those errors surface here and not in the middle of a run.
"""
from __future__ import annotations

import inspect
import numbers

from topologies import dynamic, perturb, static
from topologies.base import Topology, TopologyError, check_int, fail
from topologies.weights import check_scheme, mixing

DYNAMIC = {**dynamic.BUILDERS, **perturb.BUILDERS}
STATIC = dict(static.GRAPHS)
NAMES = sorted({*STATIC, *DYNAMIC})


def parameters(name: str) -> dict:
    """The parameters ``name`` accepts, with their defaults (``weights`` included)."""
    fn = STATIC.get(name) or DYNAMIC[name]
    out = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in ("n", "seed")}
    out.setdefault("weights", "auto")
    return out


def _static_topology(name: str, n: int, seed: int, weights: str, params: dict) -> Topology:
    g = STATIC[name](n, seed, **params)
    check_scheme(weights, g.is_directed())
    frame = mixing(g, weights)
    return Topology(name, n, lambda step: frame, static=True, period=1, weights=weights)


def build(spec, n: int, seed: int = 0) -> Topology:
    """Build a topology from a name or ``{"name": ..., **params}``; raises TopologyError."""
    if isinstance(spec, Topology):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise fail("name", f"a topology spec is a name or a dict with 'name'; got {spec!r}",
                   "write e.g. 'ring' or {'name': 'regular', 'd': 4}")
    params = dict(spec)
    name = params.pop("name", None)
    if name not in STATIC and name not in DYNAMIC:
        raise fail("name", f"unknown topology {name!r}", f"choose one of {NAMES}")
    n = check_int("n", n, 1)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise fail("seed", f"must be an integer; got {seed!r}", "set seed to a whole number")
    allowed = parameters(name)
    for key in params:
        if key not in allowed:
            raise fail(key, f"unknown parameter for {name!r}",
                       f"allowed: {sorted(allowed)}" if allowed else "it takes none")
    weights = check_scheme(params.pop("weights", "auto"))
    if name in STATIC:
        topo = _static_topology(name, n, int(seed), weights, params)
    else:
        topo = DYNAMIC[name](n, int(seed), weights=weights, **params)
        topo.W(0)  # weight scheme vs graph errors surface now
    topo.params = dict(spec)
    topo.params.pop("name", None)
    return topo


def ring(n: int, weights: str = "auto") -> Topology:
    """Ring; with the default weights each node averages itself and 2 neighbours at 1/3."""
    return build({"name": "ring", "weights": weights}, n)


__all__ = ["build", "parameters", "ring", "NAMES", "STATIC", "DYNAMIC", "TopologyError"]
