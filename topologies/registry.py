"""The built-in topologies: registers the builders of :mod:`topologies.static`,
:mod:`topologies.dynamic` and :mod:`topologies.perturb` in :mod:`topologies.catalog`.

``build(spec, n, seed)`` turns a spec (a name like ``"ring"``, or ``{"name": "ring", **params}``)
into a :class:`Topology`; every topology takes ``weights`` (see :mod:`topologies.weights`), the
other keys are its builder's keyword parameters. ``build`` and the name table live in
:mod:`topologies.catalog` (re-exported here) because nested specs make builders call ``build``:
this module sits on top and only feeds the table, so no import goes back up.
"""
from __future__ import annotations

from topologies import dynamic, perturb, static
from topologies.base import Topology, TopologyError
from topologies.catalog import DYNAMIC, NAMES, STATIC, build, parameters, register

for _table in (static.GRAPHS, dynamic.BUILDERS, perturb.BUILDERS):
    for _name, _fn in _table.items():
        register(_name)(_fn)
del _table, _name, _fn


def ring(n: int, weights: str = "auto") -> Topology:
    """Ring; with the default weights each node averages itself and 2 neighbours at 1/3."""
    return build({"name": "ring", "weights": weights}, n)


__all__ = ["build", "parameters", "register", "ring", "NAMES", "STATIC", "DYNAMIC", "TopologyError"]
