"""The one cost model: bytes, messages and seconds of every communication, per worker.

Every backend asks this module what a communication costs; none computes it itself.
The simulators turn ``Cost.seconds`` into events (SimPy) or max-plus clock updates
(stacked); the real backends measure seconds but count bytes and messages from here, so
the byte columns of a table are identical whichever backend wrote it.

Network (alpha-beta): every worker has an uplink and a downlink (latency ``alpha`` s,
bandwidth ``beta`` bytes/s). A message of ``b`` bytes from ``j`` to ``i`` takes
``alpha + b / min(up_j, down_i)``; with ``workers_per_node`` workers on one node use the
``intra`` link; ``sync_delay_s`` (default 0) is added once to every message and every
collective (a per-operation delay that is no wire time: ranks sharing cores wait for the
scheduler; ``harness calibrate`` fits it). Collectives over ``m`` members, per member ``b`` bytes (Thakur,
Rabenseifner & Gropp 2005), priced at the bottleneck link:

==============  =========================================  ==================================
collective      seconds                                    per member: sent / recv, messages
==============  =========================================  ==================================
ring            ``2(m-1) alpha + 2(m-1)/m b / beta``       ``2(m-1)/m b`` each, ``2(m-1)``
tree            ``2 ceil(log2 m) (alpha + b / beta)``      binomial reduce + broadcast: a
                                                           non-root sends ``1 + c`` and
                                                           receives ``1 + c`` blocks (``c``:
                                                           its children), the root ``c``
hierarchical    ``ring_intra(b, k) + ring_inter(b, L)``    ring inside each node (``k``
                                                           members), then a ring among the
                                                           ``L`` node leaders (leaders pay it)
all-gather      ``(m-1)(alpha + b_max / beta)``            ring: recv all blocks but one's
                                                           own, send all but the successor's
==============  =========================================  ==================================

A payload whose codec cannot be summed (sign, top-k) makes an all-reduce an all-gather
of the encoded payloads (``Cost`` of :func:`allgather`). Gossip is one synchronised
exchange: one message per out-edge, worker ``i`` done when its slowest in-neighbour's
message has arrived (each edge on its own link). One-sided operations (``Put``,
``Accumulate``, ``Get``, ``Exchange``) cost one or two messages on the initiator's link
to the target. NIC queueing and message loss (``drop_prob``) apply to ``Send``/``Recv``
on the SimPy backend.
"""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Traffic(NamedTuple):
    """What one worker puts on and takes off the wire for one operation."""

    sent: float
    recv: float
    messages: int


NONE = Traffic(0.0, 0.0, 0)


class Cost(NamedTuple):
    """Seconds of a collective (the same for every member) and each member's traffic,
    in member order."""

    seconds: float
    traffic: tuple[Traffic, ...]


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
    sync_delay_s: float = Field(0.0, ge=0, description="seconds every communication op pays once (a message, a "
                                "collective): e.g. ranks sharing cores waiting for the scheduler; fitted by harness calibrate")

    @model_validator(mode="after")
    def _check(self):
        for name in ("uplink_Bps", "downlink_Bps"):
            v = getattr(self, name)
            if v is not None and any(b <= 0 for b in v):
                raise ValueError(f"network.{name}: every bandwidth must be > 0")
        if self.allreduce == "hierarchical" and not self.workers_per_node:
            raise ValueError("network.allreduce: 'hierarchical' needs network.workers_per_node")
        # [issue 21] an intra link without nodes would be silently unused; the default one is what a
        # resolved config's dump holds (run.json), and a dump must load again
        if self.intra != LinkSpec() and not self.workers_per_node:
            raise ValueError("network.intra: the link inside a node is used only with network.workers_per_node "
                             "(workers grouped into nodes); set workers_per_node, or remove intra")
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

    def node(self, i: int) -> int:
        return i // self.workers_per_node if self.workers_per_node else i

    def same_node(self, i: int, j: int) -> bool:
        return bool(self.workers_per_node) and self.node(i) == self.node(j)

    def link(self, src: int, dst: int) -> tuple[float, float]:
        """(latency, bandwidth) of a message from ``src`` to ``dst``."""
        if self.same_node(src, dst):
            return self.intra.latency_s + self.sync_delay_s, self.intra.bandwidth_Bps
        return self.latency_s + self.sync_delay_s, min(self.up(src), self.down(dst))

    def p2p(self, nbytes: float, src: int = 0, dst: int = 1) -> float:
        alpha, beta = self.link(src, dst)
        return alpha + nbytes / beta

    def link_matrix(self, nbytes: float, n: int) -> np.ndarray:
        """``L[i, j]``: seconds for a ``nbytes`` message from ``j`` to ``i`` (gossip edges)."""
        return np.array([[self.p2p(nbytes, j, i) for j in range(n)] for i in range(n)])

    def _bottleneck(self, ids: Sequence[int]) -> tuple[float, float]:
        """Latency and bandwidth of the slowest link among ``ids`` (what a ring is paced by)."""
        if self.workers_per_node and len({self.node(i) for i in ids}) == 1:
            return self.intra.latency_s, self.intra.bandwidth_Bps
        ups = [self.up(i) for i in ids] if self.uplink_Bps else [self.bandwidth_Bps]
        downs = [self.down(i) for i in ids] if self.downlink_Bps else [self.bandwidth_Bps]
        return self.latency_s, min(min(ups), min(downs))

    # -- collectives: one Cost per call --------------------------------------------------
    def allreduce_cost(self, nbytes: float, ids: Sequence[int]) -> Cost:
        """All-reduce of ``nbytes`` per member over workers ``ids`` (ascending), with the
        configured algorithm."""
        m = len(ids)
        if m <= 1:
            return Cost(0.0, (NONE,) * m)
        if self.allreduce == "tree":
            c = _tree(*self._bottleneck(ids), nbytes, m)
        elif self.allreduce == "hierarchical":
            c = self._hierarchical(nbytes, ids)
        else:
            c = _ring(*self._bottleneck(ids), nbytes, m)
        return c._replace(seconds=c.seconds + self.sync_delay_s)

    def _hierarchical(self, nbytes: float, ids: Sequence[int]) -> Cost:
        nodes: dict[int, list[int]] = {}
        for i in ids:
            nodes.setdefault(self.node(i), []).append(i)
        k = max(len(v) for v in nodes.values())
        intra = _ring(self.intra.latency_s, self.intra.bandwidth_Bps, nbytes, k)
        leaders = [v[0] for v in nodes.values()]
        inter = _ring(*self._bottleneck(leaders), nbytes, len(leaders))
        per = []
        for i in ids:
            group = nodes[self.node(i)]
            t = _ring_traffic(nbytes, len(group))
            if i == group[0] and len(leaders) > 1:
                u = _ring_traffic(nbytes, len(leaders))
                t = Traffic(t.sent + u.sent, t.recv + u.recv, t.messages + u.messages)
            per.append(t)
        return Cost(intra.seconds + inter.seconds, tuple(per))

    def allgather_cost(self, sizes: Sequence[float], ids: Sequence[int]) -> Cost:
        """Ring all-gather; ``sizes[p]`` = bytes of member ``p``'s block (they may differ
        for value-dependent codecs)."""
        m = len(ids)
        if m <= 1:
            return Cost(0.0, (NONE,) * m)
        alpha, beta = self._bottleneck(ids)
        total = float(sum(sizes))
        per = tuple(Traffic(total - sizes[(p + 1) % m], total - sizes[p], m - 1) for p in range(m))
        return Cost((m - 1) * (alpha + max(sizes) / beta) + self.sync_delay_s, per)

    def server_cost(self, nbytes: float, ids: Sequence[int]) -> Cost:
        """Average through a server (federated rounds): every member uploads ``nbytes`` to the
        server and downloads the result. The server's NIC takes the ``m`` uploads one after
        another, then sends the ``m`` downloads: ``2 (alpha + m b / beta)``. Each member: one
        message up, ``nbytes`` sent and received, so a round moves ``2 m b`` bytes in all."""
        m = len(ids)
        alpha, beta = self.latency_s, self.bandwidth_Bps
        return Cost(2 * (alpha + m * nbytes / beta) + self.sync_delay_s,
                    tuple(Traffic(float(nbytes), float(nbytes), 1) for _ in ids))

    def gossip(self, nbytes: float, outs: int, ins: int) -> Traffic:
        """One worker's traffic in a gossip exchange: a message per out-edge."""
        return Traffic(float(outs * nbytes), float(ins * nbytes), outs)

    def onesided(self, kind: str, nbytes: float, src: int, dst: int) -> tuple[float, Traffic]:
        """Seconds and initiator traffic of a one-sided op from ``src`` on ``dst``'s window:
        ``put``/``accumulate`` one message out; ``get`` a request and the payload back;
        ``exchange`` (atomic pairwise average) the payload both ways."""
        if src == dst:
            return 0.0, NONE
        t = self.p2p(nbytes, src, dst)
        if kind in ("put", "accumulate"):
            return t, Traffic(float(nbytes), 0.0, 1)
        back = self.p2p(nbytes, dst, src)
        if kind == "get":
            return self.p2p(0, src, dst) + back, Traffic(0.0, float(nbytes), 1)
        if kind == "exchange":
            return t + back, Traffic(float(nbytes), float(nbytes), 1)
        raise ValueError(f"unknown one-sided operation {kind!r}")


def _ring_traffic(nbytes: float, m: int) -> Traffic:
    if m <= 1:
        return NONE
    b = 2.0 * (m - 1) / m * nbytes
    return Traffic(b, b, 2 * (m - 1))


def _ring(alpha: float, beta: float, nbytes: float, m: int) -> Cost:
    if m <= 1:
        return Cost(0.0, (NONE,) * m)
    return Cost(2 * (m - 1) * alpha + 2 * (m - 1) / m * nbytes / beta, (_ring_traffic(nbytes, m),) * m)


def _tree(alpha: float, beta: float, nbytes: float, m: int) -> Cost:
    """Binomial-tree reduce to position 0, then broadcast back down the same tree."""
    per = []
    for p in range(m):
        low = 1 << p.bit_length() if p else 1  # children are p + 2^k for 2^k > p
        children = sum(1 for k in range(m.bit_length() + 1) if (1 << k) >= low and p + (1 << k) < m)
        blocks = children + (1 if p else 0)
        per.append(Traffic(float(blocks * nbytes), float(blocks * nbytes), blocks))
    return Cost(2 * math.ceil(math.log2(m)) * (alpha + nbytes / beta), tuple(per))


__all__ = ["Cost", "LinkSpec", "NONE", "NetworkSpec", "Traffic"]
