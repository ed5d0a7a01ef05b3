"""Point-to-point messages for the SimPy backend, with NIC contention.

``Send(dst, x)`` occupies the sender's uplink and the receiver's downlink (SimPy
resources of capacity 1, taken in that order so no cycle of waits can form) for the
serialisation time ``b / min(up_src, down_dst)``, then the message travels ``alpha`` and
lands in the receiver's mailbox. The sender continues once serialisation is done
(a buffered send). So ``n`` workers sending ``b`` bytes to one server at once finish at
``n b / beta + alpha``: the server's downlink is a queue. Queueing counts as the sender's
idle time, serialisation as its communication time; waiting in ``Recv`` is idle time.
A lost message (``network.drop_prob``) is re-sent after ``network.retransmit_s``; every
attempt's bytes are counted.

Time (issue [22]): ``Sleep``/``Until`` are a SimPy timeout (idle time); ``Recv(timeout=,
deadline=)`` waits for ``AnyOf(get, timeout)`` and cancels the get if the timeout won, so a
message arriving later stays in the inbox for the next ``Recv``.
"""
from __future__ import annotations

import numpy as np
import simpy

from harness import ops, streams


class P2PMixin:
    def _init_p2p(self):
        self.uplinks = [simpy.Resource(self.env, 1) for _ in range(self.ranks)]
        self.downlinks = [simpy.Resource(self.env, 1) for _ in range(self.ranks)]
        self.inboxes = [simpy.FilterStore(self.env) for _ in range(self.ranks)]
        self.loss_rng = streams.rng("message_loss", self.run.ctx.seed)
        self.dropped = [0] * self.ranks

    def _send(self, r, op):
        if not 0 <= op.dst < self.ranks or op.dst == r:
            raise ValueError(f"Send.dst: rank {op.dst} is not another rank of 0..{self.ranks - 1}")
        net = self.run.network
        payload, nbytes = ops.wire(op.x, op.codec)
        alpha, beta = net.link(r, op.dst)
        while True:
            arrived = self.env.now
            if net.contention:
                with self.uplinks[r].request() as up, self.downlinks[op.dst].request() as down:
                    yield up
                    yield down
                    queued = self.env.now - arrived
                    yield self.env.timeout(nbytes / beta)
            else:
                queued = 0.0
                yield self.env.timeout(nbytes / beta)
            self.stats.bytes_sent[r] += nbytes
            self.stats.messages[r] += 1
            self.stats.idle_s[r] += queued
            self.stats.comm_s[r] += self.env.now - arrived - queued
            if not (net.drop_prob and self.loss_rng.random() < net.drop_prob):
                break
            self.dropped[r] += 1
            yield self.env.timeout(net.retransmit_s)  # lost: the sender times out and re-sends
            self.stats.idle_s[r] += net.retransmit_s
        self.env.process(self._arrive(op.dst, (ops.Message(r, op.tag, payload), nbytes), alpha))
        self.stats.time[r] = self.env.now

    def _arrive(self, dst, msg, delay):
        yield self.env.timeout(delay)
        yield self.inboxes[dst].put(msg)

    def _recv(self, r, op):
        def match(item):
            m = item[0]
            return (op.src == ops.ANY or m.src == op.src) and (op.tag is None or m.tag == op.tag)

        arrived = self.env.now
        get, limit = self.inboxes[r].get(match), op.limit(arrived)
        if limit is not None:  # Recv(timeout=/deadline=): whichever comes first
            yield get | self.env.timeout(limit)
            if not get.triggered:  # nothing in time: withdraw the request, so no message is lost to it
                get.cancel()
                self.stats.idle_s[r] += self.env.now - arrived
                self.stats.time[r] = self.env.now
                return None
        msg, nbytes = yield get
        self.stats.bytes_recv[r] += nbytes
        self.stats.idle_s[r] += self.env.now - arrived
        self.stats.time[r] = self.env.now
        return msg

    def _time(self, r, op):
        """``Sleep``/``Until``: the rank waits in simulated time (idle time)."""
        now = self.env.now
        dt = op.resume_at(now) - now
        if dt > 0:
            yield self.env.timeout(dt)
        self.stats.idle_s[r] += dt
        self.stats.time[r] = self.env.now
