"""The communication handlers of :class:`harness.backends.rank.RankDriver`.

Only *how* to move payloads lives here; *what* a collective computes is the op's
``combine`` / ``Gossip.mix`` / codec, and what it costs is :mod:`harness.cost`, the same
as in the simulators:

* collective over all workers, no codec: the transport's native all-reduce / all-gather
  (``/ m`` for a mean); otherwise every member sends its round-tripped payload to every
  other member (``Transport.exchange``, tags from this member set's sequence number) and
  each combines them in worker order (the counted bytes are the cost model's, not those
  of this all-to-all);
* gossip: ``exchange`` with one tag per edge: the k-th message on edge ``j -> i`` has
  tag ``k``, so two ``Gossip`` ops at one step never swap payloads;
* one-sided ops: ``Transport.win_update`` locks the target windows (ascending rank
  order, so two initiators cannot deadlock), applies the op's meaning and unlocks;
* time: ``Sleep``/``Until`` sleep on the wall clock; ``Recv(timeout=, deadline=)`` calls
  ``Transport.recv_within``, which probes until the limit (a transport that cannot abandon a
  receive lacks the ``timeout`` feature and is refused at config time).
"""
from __future__ import annotations

import torch

from harness import codecs, ops

GOSSIP_TAGS = 16384  # gossip edge tags in [0, 16384), member-collective tags above
MEMBER_TAG0 = 16384


class CommHandlers:
    def _wire_size(self, payload, codec) -> int:
        """Bytes of a received (round-tripped) payload: codecs are idempotent on their
        own output, so the receiver recomputes the sender's wire size."""
        return ops.wire(payload, codec)[1]

    def _cost(self, op, sizes, ids):
        # every field but the payload and members can change the price (Broadcast's root, ServerSum's active)
        key = (type(op), str(op.codec), tuple(sizes), ids,
               *(repr(getattr(op, f)) for f in op.__dataclass_fields__ if f not in ("x", "members", "codec")))
        c = self._costs.get(key)
        if c is None:
            c = self._costs[key] = op.cost(self.cfg.network, sizes, ids)
        return c

    def _collective(self, op):
        if getattr(op, "quorum", None):
            raise ValueError(f"AllReduce.quorum={op.quorum}: backup workers (reduce the first k arrivals) are "
                             f"simulated only; use --backend simpy or stacked, or backup: 0")
        if self.role == "server":
            raise ValueError(f"{type(op).__name__}: the server rank takes no part in collectives (workers only)")
        ids, member = self._member(op)
        if not member:
            return ops.skipped(op, self.n)
        name = type(op).__name__
        payload, nbytes = ops.wire(op.x.detach(), op.codec)
        c = codecs.parse(op.codec)
        native = op.native if c is None or c.summable else None
        if ids == self.all_ids and native:  # the transport's primitive on the round-tripped payloads
            if native == "sum":
                out = op.finish(self._comm(name, self.tr.allreduce_sum, None, payload), len(ids))
            else:
                out = self._comm(name, self.tr.allgather, None, payload)
            sizes = [nbytes] * len(ids)
        else:
            seq = self.seq.get(ids, 0)
            self.seq[ids] = seq + 1
            tag = MEMBER_TAG0 + seq % (32765 - MEMBER_TAG0)  # below rank.KEYED_TAG and the END tag
            others = {j + self.off: tag for j in ids if j != self.i}
            got = self._comm(f"{name} over workers {list(ids)}", self.tr.exchange, None, payload, others, others)
            rows = {j: (payload if j == self.i else got[j + self.off]) for j in ids}
            sizes = [nbytes if j == self.i else self._wire_size(rows[j], op.codec) for j in ids]
            out = op.combine([rows[j] for j in ids], ids)
        self.ctr.add_traffic(self._cost(op, sizes, ids).traffic[ids.index(self.i)])
        return out

    def _start(self, op):
        # The real backends complete the collective here (same numbers as the simulators,
        # no overlap yet); Wait hands the result back.
        if getattr(op.op, "pattern", None) != "collective":
            raise ValueError(f"Start: only AllReduce/AllGather can be started, got {type(op.op).__name__}")
        self.pending.append(self._collective(op.op))
        return ops.Handle(len(self.pending) - 1)

    def _wait(self, op):
        return self.pending[op.handle.id]

    def _topology(self, what):
        if self.topology is None:
            raise ValueError(f"topology: algorithm {self.cfg.algorithm['name']!r} yields {what}; "
                             "set topology: {name: ring} in the config")
        if self.role == "server":
            raise ValueError(f"{what}: the server rank is not a node of the topology")
        return self.topology

    def _gossip(self, op):
        i, topo = self.i, self._topology("Gossip")
        outs, ins = topo.out_neighbors(i, op.step), topo.in_neighbors(i, op.step)
        tags_out, tags_in = {}, {}
        for j in outs:
            k = self.seq.get(("g", i, j), 0)
            self.seq[("g", i, j)] = k + 1
            tags_out[j + self.off] = k % GOSSIP_TAGS
        for j in ins:
            k = self.seq.get(("g", j, i), 0)
            self.seq[("g", j, i)] = k + 1
            tags_in[j + self.off] = k % GOSSIP_TAGS
        payload, nbytes = ops.wire(op.x.detach(), op.codec)
        got = self._comm(f"Gossip step {op.step}", self.tr.exchange, None, payload, tags_out, tags_in)
        got = {j: got[j + self.off] for j in ins}
        recv = sum(self._wire_size(got[j], op.codec) for j in ins)
        self.ctr.add_traffic(self.cfg.network.gossip(nbytes, len(outs), len(ins))._replace(recv=float(recv)))
        got[i] = op.x
        w, order = topo.W(op.step)[i], sorted(got)
        return op.mix([torch.tensor(float(w[j]), dtype=op.x.dtype) for j in order], [got[j] for j in order])

    def _onesided(self, op):
        w = self.i
        peer = w if op.peer == ops.SELF else int(op.peer)
        name = type(op).__name__
        if self.role == "server" or not 0 <= peer < self.n:
            raise ValueError(f"{name}.peer: {op.peer} is not a worker 0..{self.n - 1} (windows belong to workers)")
        r, pr = w + self.off, peer + self.off
        # Exchange updates both windows (mine first in op.update's order); ranks lock ascending
        mine_first = [r, pr] if isinstance(op, ops.Exchange) and pr != r else [pr]
        ranks = sorted(mine_first)

        def fn(v):  # windows in lock order -> op.update's order -> back
            new = op.update([v[ranks.index(k)] for k in mine_first])
            return [new[mine_first.index(k)] for k in ranks]

        got = self._comm(name, self.tr.win_update, None, ranks, None if op.update is None else fn)
        got = [got[ranks.index(r)]] if isinstance(op, ops.Exchange) else got
        x = got[0]
        _, traffic = self.cfg.network.onesided(name.lower(), x.numel() * x.element_size(), r, pr)
        self.ctr.add_traffic(traffic)
        return None if isinstance(op, (ops.Put, ops.Accumulate)) else got[0]

    def _send(self, op):
        if not 0 <= op.dst < self.tr.size or op.dst == self.tr.rank:
            raise ValueError(f"Send: dst={op.dst} is not another rank in 0..{self.tr.size - 1}")
        payload, nbytes = ops.wire(op.x.detach(), op.codec)
        self._comm("Send", lambda: self.tr.send(op.dst, payload, op.tag, nbytes), self.cfg.network.gossip(nbytes, 1, 0))

    def _recv(self, op):
        src = -1 if op.src == ops.ANY else op.src
        desc = f"Recv from {'any rank' if src < 0 else f'rank {src}'}"
        limit = op.limit(self.clock.now())
        if limit is None:
            got = self._comm(desc, lambda: self.tr.recv(src, op.tag))
        else:  # Recv(timeout=/deadline=): the transport polls (probe) until then; None if nothing came
            before = self.ctr.comm_s
            got = self._comm(f"{desc} within {limit:.3g} s", lambda: self.tr.recv_within(src, op.tag, limit))
            if got is None:  # all of it was waiting
                self.ctr.idle_s += self.ctr.comm_s - before
                self.ctr.comm_s = before
                return None
        s, tag, x, waited, nbytes = got
        waited = min(waited, self.ctr.comm_s)
        self.ctr.comm_s -= waited
        self.ctr.idle_s += waited
        self.ctr.add_traffic(self.cfg.network.gossip(0, 0, 0)._replace(recv=float(nbytes)))
        return ops.Message(s, tag, x)

    def _time(self, op):
        """``Sleep``/``Until`` in wall seconds since the start barrier (idle time)."""
        import time

        now = self.clock.now()
        dt = op.resume_at(now) - now
        if dt > 0:
            time.sleep(dt)
        t1 = self.clock.now()
        self.ctr.idle_s += t1 - self.mark
        self.ctr.time = self.mark = t1
