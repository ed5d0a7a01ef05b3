"""One registry of the random streams of a run: every ``numpy.random.default_rng`` key.

A stream's seed sequence is ``[run seed, *ids, KEY]`` (or ``[run seed, KEY]``), so two
streams are independent exactly when their keys differ. Keeping every key here makes a
collision visible (``[seed, 23]`` used to seed both the data partition and message loss, so
losses were correlated with the partition) and gives checkpoints one list of what to save.
"""
from __future__ import annotations

import numpy as np

KEYS = {
    "compute": 11,       # per-worker compute times (harness.models.compute)
    "stragglers": 13,    # which workers are persistently slow
    "rand": 17,          # the Rand op: per worker, the server has id n
    "faults": 19,        # per-worker crashes (harness.models.faults)
    "partition": 23,     # the data partition (harness.tasks.partition)
    "slowdown": 23,      # [seed, worker, 23]: real backends' injected sleeps (its own 3-part sequence)
    "message_loss": 29,  # dropped point-to-point messages (simulators.simpy_p2p)
    "members": 31,       # blocks.sample_members: [seed, round, 31]
    "clients": 37,       # blocks.sample_clients: [seed, round, 37]
    "epochs": 41,        # Sampler.epoch: [seed, part, epoch, 41], a pass over a shard without replacement
    "participation": 43,  # blocks.Participation: [seed, 43] the clients' p_n; [seed, round, 43] who is available
    # (harness.tasks.Sampler's torch generators: [seed, i, 7] per worker or part, [seed, i, part, 29] for Grad(part=))
}


def rng(name: str, seed: int, *ids: int) -> np.random.Generator:
    """The stream ``name`` of a run with ``seed`` (``ids``: a worker, a round, ...)."""
    return np.random.default_rng([int(seed), *(int(i) for i in ids), KEYS[name]])


class PerId:
    """``n`` streams, one per id (a client, a part), each made by ``make(i)`` on first use: a run
    with 10,000 clients of which a few hundred are ever played pays for those only (issue [22]).
    A stream's numbers depend on its key alone, so laziness changes no number."""

    def __init__(self, n: int, make):
        self.n, self.make, self.made = n, make, {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        g = self.made.get(i)  # the hot path: an int id seen before
        if g is None:
            i = int(i)
            if not 0 <= i < self.n:
                raise IndexError(f"stream {i} of {self.n}")
            g = self.made[i] = self.made.get(i) or self.make(i)
        return g


__all__ = ["KEYS", "PerId", "rng"]
