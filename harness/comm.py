"""Bytes and messages per op, the same way in every backend.

Counted from the actual payload (``numel * element_size`` of one worker's tensor, after any
compression). Per worker:

* ring all-reduce of ``b`` bytes over ``n`` workers: sends and receives ``2(n-1)/n * b``
  in ``2(n-1)`` messages (reduce-scatter then all-gather);
* ring all-gather: sends and receives ``(n-1) * b`` in ``n-1`` messages;
* gossip: one message of ``b`` bytes to each out-neighbour, one from each in-neighbour.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Traffic(NamedTuple):
    sent: float
    recv: float
    messages: int


def payload_bytes(x: torch.Tensor, stacked: bool) -> int:
    """Bytes one worker puts on the wire for ``x`` (one row of a stacked ``[n, ...]`` x)."""
    per = x[0] if stacked else x
    return per.numel() * per.element_size()


def ring_allreduce(nbytes: int, n: int) -> Traffic:
    if n <= 1:
        return Traffic(0.0, 0.0, 0)
    b = 2.0 * (n - 1) / n * nbytes
    return Traffic(b, b, 2 * (n - 1))


def ring_allgather(nbytes: int, n: int) -> Traffic:
    """Each worker forwards ``n - 1`` blocks of ``nbytes`` around the ring."""
    if n <= 1:
        return Traffic(0.0, 0.0, 0)
    return Traffic(float((n - 1) * nbytes), float((n - 1) * nbytes), n - 1)


def gossip(nbytes: int, out_degree: int, in_degree: int) -> Traffic:
    return Traffic(float(out_degree * nbytes), float(in_degree * nbytes), out_degree)
