"""Alpha-beta network model (latency ``alpha`` seconds, bandwidth ``beta`` bytes/s).

Every worker has an uplink and a downlink. A point-to-point message of ``b`` bytes from
``j`` to ``i`` is serialised at ``min(up_j, down_i)`` and then travels ``alpha``:
``alpha_ji + b / min(up_j, down_i)``. With ``workers_per_node`` set, workers are grouped
into nodes: messages inside a node use the ``intra`` link instead (fast NVLink/shared memory).

Collectives (per worker ``b`` bytes, ``n`` workers), priced at the bottleneck link:

* ``ring``: ``2(n-1) alpha + 2(n-1)/n * b / beta`` (Thakur, Rabenseifner & Gropp 2005);
* ``tree`` (binomial reduce + broadcast): ``2 ceil(log2 n) (alpha + b / beta)``;
* ``hierarchical``: ring all-reduce inside each node (intra link), then a ring all-reduce
  among the ``n / k`` node leaders (inter link): ``ring_intra(b, k) + ring_inter(b, n/k)``.
* ring all-gather: ``(n-1) (alpha + b / beta)``.

A gossip step is one synchronised exchange: worker ``i`` finishes when its slowest
in-neighbour's message has arrived (each edge priced on its own link). NIC queueing
(contention) and message loss (``drop_prob``: a lost message is re-sent after
``retransmit_s``, its bytes counted again) apply to ``Send``/``Recv`` in the SimPy backend.
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_s: float = Field(1e-6, ge=0)
    bandwidth_Bps: float = Field(1e11, gt=0)


class NetworkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_s: float = Field(1e-4, ge=0, description="alpha: per-message latency (s)")
    bandwidth_Bps: float = Field(1.25e9, gt=0, description="beta: link bandwidth (bytes/s); 1.25e9 = 10 Gbit/s")
    uplink_Bps: list[float] | None = Field(None, description="per-worker uplink bandwidths (heterogeneous links)")
    downlink_Bps: list[float] | None = Field(None, description="per-worker downlink bandwidths")
    workers_per_node: int | None = Field(None, ge=1, description="group workers into nodes of this size")
    intra: LinkSpec = Field(default_factory=LinkSpec, description="link inside a node (with workers_per_node)")
    allreduce: Literal["ring", "tree", "hierarchical"] = "ring"
    contention: bool = Field(True, description="Send/Recv queue on the sender's uplink and receiver's downlink (SimPy)")
    drop_prob: float = Field(0.0, ge=0, lt=1, description="Send/Recv: chance a message is lost and re-sent")
    retransmit_s: float = Field(0.2, ge=0, description="Send/Recv: timeout before a lost message is re-sent")

    @model_validator(mode="after")
    def _check(self):
        for name in ("uplink_Bps", "downlink_Bps"):
            v = getattr(self, name)
            if v is not None and any(b <= 0 for b in v):
                raise ValueError(f"network.{name}: every bandwidth must be > 0")
        if self.allreduce == "hierarchical" and not self.workers_per_node:
            raise ValueError("network.allreduce: 'hierarchical' needs network.workers_per_node")
        return self

    # -- links -------------------------------------------------------------------------
    def check_workers(self, n: int) -> None:
        for name in ("uplink_Bps", "downlink_Bps"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"network.{name}: needs one value per rank ({n}), got {len(v)}")
        if self.workers_per_node and n % self.workers_per_node:
            raise ValueError(f"network.workers_per_node: {self.workers_per_node} does not divide n = {n}")

    def up(self, j: int) -> float:
        return self.uplink_Bps[j] if self.uplink_Bps else self.bandwidth_Bps

    def down(self, i: int) -> float:
        return self.downlink_Bps[i] if self.downlink_Bps else self.bandwidth_Bps

    def same_node(self, i: int, j: int) -> bool:
        return bool(self.workers_per_node) and i // self.workers_per_node == j // self.workers_per_node

    def link(self, src: int, dst: int) -> tuple[float, float]:
        """(latency, bandwidth) of a message from ``src`` to ``dst``."""
        if self.same_node(src, dst):
            return self.intra.latency_s, self.intra.bandwidth_Bps
        return self.latency_s, min(self.up(src), self.down(dst))

    def p2p(self, nbytes: float, src: int = 0, dst: int = 1) -> float:
        alpha, beta = self.link(src, dst)
        return alpha + nbytes / beta

    def link_matrix(self, nbytes: float, n: int):
        """``L[i, j]``: seconds for a ``nbytes`` message from ``j`` to ``i`` (gossip edges)."""
        import numpy as np

        return np.array([[self.p2p(nbytes, j, i) for j in range(n)] for i in range(n)])

    def _bottleneck(self, n: int) -> tuple[float, float]:
        """Latency and bandwidth of the slowest inter-worker link (what a ring is paced by)."""
        if self.workers_per_node and n <= self.workers_per_node:
            return self.intra.latency_s, self.intra.bandwidth_Bps
        ups = self.uplink_Bps[:n] if self.uplink_Bps else [self.bandwidth_Bps]
        downs = self.downlink_Bps[:n] if self.downlink_Bps else [self.bandwidth_Bps]
        return self.latency_s, min(min(ups), min(downs))

    # -- collectives ---------------------------------------------------------------------
    @staticmethod
    def _ring(alpha, beta, nbytes, n):
        return 0.0 if n <= 1 else 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / beta

    def ring_allreduce(self, nbytes: float, n: int) -> float:
        return self._ring(*self._bottleneck(n), nbytes, n)

    def allreduce_time(self, nbytes: float, n: int) -> float:
        """All-reduce time with the configured algorithm."""
        if n <= 1:
            return 0.0
        if self.allreduce == "tree":
            alpha, beta = self._bottleneck(n)
            return 2 * math.ceil(math.log2(n)) * (alpha + nbytes / beta)
        if self.allreduce == "hierarchical":
            k = min(self.workers_per_node, n)
            inner = self._ring(self.intra.latency_s, self.intra.bandwidth_Bps, nbytes, k)
            return inner + self._ring(*self._bottleneck(n), nbytes, math.ceil(n / k))
        return self.ring_allreduce(nbytes, n)

    def ring_allgather(self, nbytes: float, n: int) -> float:
        if n <= 1:
            return 0.0
        alpha, beta = self._bottleneck(n)
        return (n - 1) * (alpha + nbytes / beta)
