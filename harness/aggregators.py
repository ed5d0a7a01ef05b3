"""Aggregators: how a collective reduces the members' payloads (``AllReduce(x, reduce=...)``).

An aggregator is an object, like a codec: ``combine(payloads)`` reduces the members' payloads
(given in ascending worker order, each one worker's row) and ``linear`` says whether the
result is a fixed linear function of the *sum* (``finish(total, m)``), which is what a ring
or a native all-reduce computes on the way. So:

* a **linear** aggregator (``mean``, ``sum``) runs as the transport's native all-reduce on
  the real backends and is priced as a ring/tree all-reduce;
* a **non-linear** one (``median``, ``trimmed_mean:B``, a user's Krum) cannot be reduced on
  the way: every backend gathers the payloads and combines them once, and the cost model
  prices the all-gather it really needs. The stacked backend combines the member rows once
  (``[m, d]``), never an ``[n, m, d]`` tensor.

``AllReduce(op="mean")`` is ``reduce="mean"``. A user adds one in one file::

    from harness.aggregators import Aggregator, register

    @register("geomedian")
    class GeoMedian(Aggregator):
        linear = False
        def combine(self, payloads):
            ...

and names it in an algorithm (``AllReduce(x, reduce="geomedian")``) or as a hyper-parameter.
Specs with arguments read ``name:arg`` (``trimmed_mean:1``: drop the 1 largest and 1 smallest
values per coordinate); the class takes the arguments as strings.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

AGGREGATORS: dict[str, type] = {}


def fold(terms: Sequence[Tensor]) -> Tensor:
    """``t_0 + t_1 + ...`` left to right: the one summation order of every backend."""
    acc = terms[0]
    for t in terms[1:]:
        acc = acc + t
    return acc


class Aggregator:
    """Reduce the members' payloads. Subclasses set ``linear`` and define ``combine`` (and,
    when linear, ``finish(total, m)``: the result from the payloads' sum over ``m`` members)."""

    linear = True
    spec = ""

    def __init__(self, *args: str):
        if args:
            raise ValueError(f"reduce: {self.spec or type(self).__name__!r} takes no arguments, got {':'.join(args)!r}")

    def finish(self, total: Tensor, m: int) -> Tensor:
        return total

    def combine(self, payloads: Sequence[Tensor]) -> Tensor:
        return self.finish(fold(payloads), len(payloads))

    def __repr__(self):
        return f"aggregator {self.spec!r}"

    def __eq__(self, other):
        return isinstance(other, Aggregator) and other.spec == self.spec

    def __hash__(self):
        return hash(self.spec)


def register(name: str):
    """Class decorator: make ``name`` (``reduce=name`` or ``name:args``) build this aggregator."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
            raise TypeError(f"aggregators.register({name!r}): expected an Aggregator subclass, got {cls!r}")
        AGGREGATORS[name] = cls
        return cls
    return deco


@register("sum")
class Sum(Aggregator):
    """``sum_j x_j``."""


@register("mean")
class Mean(Aggregator):
    """``(1/m) sum_j x_j`` (the sum divided by ``m``: the bits of a native all-reduce then ``/ m``)."""

    def finish(self, total, m):
        return total / m


@register("median")
class Median(Aggregator):
    """Coordinate-wise median (Yin et al., arXiv 1803.01498); the lower median for even ``m``
    (``torch.median``), so every backend picks the same value."""

    linear = False

    def combine(self, payloads):
        return torch.stack(list(payloads)).median(0).values


@register("trimmed_mean")
class TrimmedMean(Aggregator):
    """Coordinate-wise ``b``-trimmed mean (Yin et al., arXiv 1803.01498): per coordinate, drop the
    ``b`` largest and ``b`` smallest values and average the rest (``m > 2b``)."""

    linear = False

    def __init__(self, b: str = "1"):
        try:
            self.b = int(b)
        except ValueError:
            self.b = -1
        if self.b < 0:
            raise ValueError(f"reduce: trimmed_mean:B needs a whole number B >= 0, got {b!r}")

    def combine(self, payloads):
        m = len(payloads)
        if m <= 2 * self.b:
            raise ValueError(f"reduce: trimmed_mean:{self.b} needs more than {2 * self.b} members, got {m}")
        s = torch.stack(list(payloads)).sort(0).values
        return fold(list(s[self.b:m - self.b])) / (m - 2 * self.b)


_BUILT: dict = {}  # spec text -> aggregator (aggregators are immutable; an AllReduce is made every step)


def parse(spec) -> Aggregator:
    """An aggregator from ``reduce=`` (a name, ``name:args``, or an :class:`Aggregator`). Raises
    ValueError with one line naming the known ones."""
    if isinstance(spec, Aggregator):
        return spec
    hit = _BUILT.get(spec) if isinstance(spec, str) else None
    if hit is not None and type(hit) is AGGREGATORS.get(spec.split(":")[0]):
        return hit
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"reduce: expected an aggregator name such as 'mean' or 'median', got {spec!r}")
    name, *args = spec.split(":")
    cls = AGGREGATORS.get(name)
    if cls is None:
        raise ValueError(f"reduce: unknown aggregator {spec!r}; known: {', '.join(sorted(AGGREGATORS))} "
                         "(a user's one registers with harness.aggregators.register)")
    agg = cls(*args)
    agg.spec = spec
    _BUILT[spec] = agg
    return agg


def check(spec):
    """Pydantic-friendly validator for a ``reduce`` hyper-parameter (keeps the text)."""
    parse(spec)
    return spec


__all__ = ["AGGREGATORS", "Aggregator", "Mean", "Median", "Sum", "TrimmedMean", "check", "fold", "parse", "register"]
