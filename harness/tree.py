"""Pytrees of algorithm state: tensors (and numbers) in tuples, lists, dicts and NamedTuples.

State of a part (:mod:`harness.parts`) or a keyed row is such a tree. Interpreters and
combinators need three things of it: its leaves in a fixed order, rebuilding it from new
leaves, and mapping a function over leaves of several trees of one shape. torch's own pytree
module is private API (``torch.utils._pytree``), so this is the twenty lines we need.
"""
from __future__ import annotations

from typing import Any, Callable


def leaves(tree) -> list:
    """The leaves (tensors, numbers, None) depth-first, dict keys in insertion order."""
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in leaves(v)]
    if isinstance(tree, (tuple, list)):
        return [leaf for v in tree for leaf in leaves(v)]
    return [tree]


def unflatten(like, items) -> Any:
    """A tree of ``like``'s shape whose leaves are taken in order from the iterator ``items``."""
    if isinstance(like, dict):
        return {k: unflatten(v, items) for k, v in like.items()}
    if isinstance(like, tuple) and hasattr(like, "_fields"):  # NamedTuple
        return type(like)(*(unflatten(v, items) for v in like))
    if isinstance(like, (tuple, list)):
        return type(like)(unflatten(v, items) for v in like)
    return next(items)


def map(fn: Callable, tree, *rest) -> Any:  # noqa: A001 (tree.map reads as intended)
    """``fn(leaf, *matching leaves of rest)`` over every leaf, in a tree of ``tree``'s shape."""
    cols = [leaves(t) for t in (tree, *rest)]
    if any(len(c) != len(cols[0]) for c in cols):
        raise ValueError("tree.map: the trees differ in shape")
    return unflatten(tree, iter([fn(*xs) for xs in zip(*cols)]))


__all__ = ["leaves", "map", "unflatten"]
