"""The table of topology names and ``build(spec, n, seed)``: the layer every builder stands on.

Why a module of its own: builders of nested specs (``random_matching``'s ``base``,
``alternating``'s ``graphs``, the perturbations' ``base``) must call ``build``, while ``build``
must find every builder. Keeping the table here, filled by :func:`register` and read only when
a spec is built, lets every import point one way::

    base, weights  <-  catalog  <-  static, dynamic, perturb  <-  registry  <-  topologies

(:mod:`topologies.registry` registers the built-ins; users register theirs with
``topologies.register``, e.g. from a config's ``imports:`` file).

A builder is either
- static: ``fn(n, seed, **params) -> networkx graph`` on nodes ``0..n-1`` (``nx.Graph`` for
  two-way links, ``nx.DiGraph`` with edges sender -> receiver); ``build`` applies the
  ``weights`` scheme, or
- dynamic: ``fn(n, seed, weights, **params) -> Topology`` (it takes ``weights`` itself).
The presence of a ``weights`` parameter tells them apart. Every other parameter is a spec key
and needs a default. Unknown keys, bad values and impossible sizes raise
:class:`TopologyError` with one line naming the field; the step-0 matrix is built eagerly so
those errors surface at config time and not in the middle of a run.
"""
from __future__ import annotations

import inspect
import numbers
from typing import Callable

import networkx as nx

from topologies.base import Topology, TopologyError, check_int, fail
from topologies.weights import check_scheme, mixing

STATIC: dict[str, Callable] = {}
DYNAMIC: dict[str, Callable] = {}
NAMES: list[str] = []  # sorted; updated in place, so `from topologies import NAMES` stays current
_SHAPES = "fn(n, seed, **params) -> networkx graph, or fn(n, seed, weights, **params) -> Topology"


def _refuse(name, problem: str, fix: str) -> TopologyError:
    return TopologyError(f"topologies.register({name!r}): {problem}; {fix}")


def register(name: str):
    """Decorator: make ``fn`` the builder of topology ``name`` (a later registration of the same
    name replaces it, as re-importing a config's ``imports:`` file does)."""
    if not isinstance(name, str) or not name:
        raise _refuse(name, "the name must be a non-empty string", "write e.g. @topologies.register('my_graph')")

    def deco(fn: Callable) -> Callable:
        params = list(inspect.signature(fn).parameters.values())
        if [p.name for p in params[:2]] != ["n", "seed"]:
            raise _refuse(name, f"a builder is {_SHAPES}; got {fn.__name__}{inspect.signature(fn)}",
                          "make n and seed its first two parameters")
        for p in params[2:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise _refuse(name, f"parameter {p} takes any key, but specs are checked against named ones",
                              "list each parameter by name with a default")
            if p.name != "weights" and p.default is p.empty:
                raise _refuse(name, f"parameter {p.name!r} has no default", f"give it one, e.g. {p.name}=1")
        dynamic = any(p.name == "weights" for p in params)
        STATIC.pop(name, None)
        DYNAMIC.pop(name, None)
        (DYNAMIC if dynamic else STATIC)[name] = fn
        NAMES[:] = sorted({*STATIC, *DYNAMIC})
        return fn

    return deco


def parameters(name: str) -> dict:
    """The parameters ``name`` accepts, with their defaults (``weights`` included)."""
    fn = STATIC.get(name) or DYNAMIC[name]
    out = {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in ("n", "seed")}
    out.setdefault("weights", "auto")
    return out


def _static_topology(name: str, n: int, seed: int, weights: str, params: dict) -> Topology:
    g = STATIC[name](n, seed, **params)
    if not isinstance(g, nx.Graph) or set(g.nodes) != set(range(n)):
        got = f"a graph on nodes {list(g.nodes)[:5]}..." if isinstance(g, nx.Graph) else type(g).__name__
        raise fail("name", f"builder of {name!r} returned {got}",
                   f"return an nx.Graph or nx.DiGraph on nodes 0..{n - 1}")
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
        if not isinstance(topo, Topology) or topo.n != n:
            got = f"a Topology on {topo.n} nodes" if isinstance(topo, Topology) else type(topo).__name__
            raise fail("name", f"builder of {name!r} returned {got}", f"return a topologies.Topology on n={n} nodes")
        topo.W(0)  # weight scheme vs graph errors surface now
    topo.params = dict(spec)
    topo.params.pop("name", None)
    return topo


def sub_build(spec, n: int, seed: int, fld: str) -> Topology:
    """Build a nested spec; its errors are renamed ``topology.<fld>.<field>``."""
    if spec is None or isinstance(spec, (list, tuple)):
        raise fail(fld, f"needs one topology name or spec; got {spec!r}", f"set {fld} to e.g. 'ring'")
    try:
        return build(spec, n, seed)
    except ValueError as e:  # TopologyError is a ValueError
        msg = str(e)
        if msg.startswith("topology."):
            msg = f"topology.{fld}." + msg[len("topology."):]
        raise type(e)(msg) from None
