"""Alpha-beta network model (latency ``alpha`` seconds, bandwidth ``beta`` bytes/s).

* point-to-point message of ``b`` bytes: ``alpha + b / beta``;
* ring all-reduce over ``n`` workers: ``2(n-1) alpha + 2(n-1)/n * b / beta``
  (Thakur, Rabenseifner & Gropp 2005);
* ring all-gather of ``b`` bytes per worker: ``(n-1) (alpha + b / beta)``;
* a gossip step: a worker finishes when its last in-neighbour's message has arrived.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class NetworkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    latency_s: float = Field(1e-4, ge=0, description="alpha: per-message latency (s)")
    bandwidth_Bps: float = Field(1.25e9, gt=0, description="beta: link bandwidth (bytes/s); 1.25e9 = 10 Gbit/s")

    def p2p(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth_Bps

    def ring_allreduce(self, nbytes: float, n: int) -> float:
        if n <= 1:
            return 0.0
        return 2 * (n - 1) * self.latency_s + 2 * (n - 1) / n * nbytes / self.bandwidth_Bps

    def ring_allgather(self, nbytes: float, n: int) -> float:
        if n <= 1:
            return 0.0
        return (n - 1) * (self.latency_s + nbytes / self.bandwidth_Bps)
