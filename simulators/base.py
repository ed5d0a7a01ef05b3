"""What both simulated backends share: the run's parts and the op-independent accounting.

A backend is an *interpreter* of ``harness.ops``: the ops say what is computed, the cost
model (:mod:`harness.cost`) what it costs. Both simulated backends price compute with a
:class:`~harness.models.compute.ComputeTimes` model and write rows through one
:class:`~harness.recording.Recorder`, so they agree to the last bit on time, bytes and
parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from harness import ops, streams
from harness.algorithms import Ctx
from harness.cost import NetworkSpec
from harness.recording import Recorder, Stats
from harness.tasks import Sampler, Task
from harness.models.compute import ComputeTimes
from harness.models.faults import FaultSchedule
from topologies import Topology


class BackendError(RuntimeError):
    """An algorithm asked a backend for something it cannot do; one line naming the fix."""


@dataclass
class Run:
    algorithm: Callable
    params: dict
    ctx: Ctx
    task: Task
    sampler: Sampler
    compute: ComputeTimes
    network: NetworkSpec
    recorder: Recorder
    topology: Topology | None = None
    faults: FaultSchedule | None = None


class Simulator:
    name = "sim"
    TRANSIENT: tuple[str, ...] = ("policy", "resumed", "handlers")  # not saved in a checkpoint (live, or rebuilt)
    policy = None  # harness.checkpoint.Policy when the run saves checkpoints
    resumed = None  # the carry(s) a resumed run continues from

    def __init__(self, run: Run):
        self.run = run
        self.n = run.ctx.n_workers
        self.offset = 1 if getattr(run.algorithm, "has_server", False) else 0  # rank 0 = server
        self.ranks = self.n + self.offset
        self.stats = Stats(self.ranks)
        self.units = [0.0] * self.ranks  # compute units done, for Rate
        self.playing: dict[int, int] = {}  # slot -> the client it plays (Play), for data and speed
        # one stream per worker, and stream n for a server (as on the real backends)
        self.rngs = [streams.rng("rand", run.ctx.seed, i) for i in range(self.n + 1)]

    def draw(self, i: int) -> torch.Tensor:
        """Worker ``i``'s next ``U[0, 1)`` draw (``Rand`` op), from its own stream (the
        server, ``i = -1``, has stream ``n``)."""
        i = self.n if i < 0 else i
        return torch.tensor(self.rngs[i].random(), dtype=torch.float64)

    def compute_seconds(self, w: int, start: float, cost: float) -> tuple[float, float]:
        """Worker ``w``'s busy time for ``cost`` units from ``start`` and the downtime of
        crashes within it under policy ``wait`` (recorded as failed/recovered rows)."""
        dt, down = self.run.compute.sample(self.playing.get(w, w), cost), 0.0  # a client's speed when playing one
        f = self.run.faults
        if f is not None and f.active and f.spec.policy == "wait":
            for at in f.downtime(w, start, dt):
                self.run.recorder.event(w, "failed", at, self.stats, slot=w + self.offset)
                self.run.recorder.event(w, "recovered", at + f.spec.recover_after_s, self.stats, slot=w + self.offset)
                down += f.spec.recover_after_s
        return dt, down

    def rate(self, w: int) -> torch.Tensor:
        """Worker ``w``'s compute units per second of its compute so far (``Rate``)."""
        r = w + self.offset
        busy = self.stats.compute_s[r]
        return torch.tensor(self.units[r] / busy if busy > 0 else 0.0, dtype=torch.float64)

    def w(self, rank: int) -> int:
        """Worker index of a rank (-1 for the server)."""
        return rank - self.offset

    def topology(self) -> Topology:
        if self.run.topology is None:
            raise BackendError(f"topology: algorithm {self.run.algorithm.algorithm_name!r} yields Gossip; "
                               "set topology: {name: ring} in the config")
        return self.run.topology

    def peers(self, w: int, step: int) -> ops.Peers:
        """In/out-neighbour masks of worker ``w`` at ``step`` (``Neighbors``)."""
        return ops.Neighbors.peers(self.topology().W(step), w)

    def play(self, w: int, client: int) -> None:
        """Worker (slot) ``w`` plays ``client`` from now on (``Play``)."""
        if not 0 <= client < self.run.ctx.n_clients:
            raise ValueError(f"Play.client: {client} is not a client 0..{self.run.ctx.n_clients - 1} (n_clients)")
        self.playing[w] = client

    def batches(self, op: ops.Grad, ids) -> list[torch.Tensor]:
        """Minibatch indices of workers ``ids`` for ``op`` (own shard, or ``op.part``: an
        int, or a ``[]``/``[n]`` tensor of parts; a slot playing a client: the client's)."""
        s = self.run.sampler
        if op.part is None and op.epoch is None and not self.playing:  # the common case, every step
            return [s.worker(i, op.batches) for i in ids]
        return [s.for_op(op, i, self.playing.get(i)) for i in ids]

    # -- checkpoints (issue [27]): this object is saved whole, code and live machinery by path -----
    def _state_root(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in self.TRANSIENT}

    def save_checkpoint(self, step: int, carries, time_s: float = 0.0) -> None:
        """Write the backend's whole state and the algorithm's ``carries`` at ``step`` (atomic)."""
        from harness import checkpoint

        p = self.policy
        try:
            state = checkpoint.dumps({"sim": self._state_root(), "carries": carries})
        except checkpoint.CheckpointError as e:
            return p.failed(e)
        checkpoint.write(p.path, {"step": step, "time_s": time_s, "backend": self.name, **p.meta, "state": state})
        p.saved(step)  # a requested stop ends the run here (harness.checkpoint.Preempted)

    def restore(self, payload: dict):
        """Continue from a checkpoint: this freshly built backend takes the saved state (its code and
        task stay its own) and the carries to resume the algorithm from."""
        from harness import checkpoint

        got = checkpoint.loads(payload["state"], {"sim": self._state_root(), "carries": None})
        vars(self).update(got["sim"])
        self.resumed = got["carries"]
        return payload["step"]

    def start(self, x0: torch.Tensor):
        """Record the initial model (step 0) before any op."""
        rec = self.run.recorder
        for i in range(self.n):
            rec.worker(i, 0, 0, self.stats, slot=i + self.offset)
        rec.consensus(0, 0, x0.expand(self.n, -1), self.stats.counters())
