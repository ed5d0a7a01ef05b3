"""A user's op of a known pattern in one file: ``Broadcast(x, root)`` is a collective (every
member gets the root's payload). Interpreters run it from its ``combine``/``cost``/``skip``."""
from dataclasses import dataclass
from typing import Any

from harness.ops import Collective


@dataclass(frozen=True)
class Broadcast(Collective):
    x: Any
    root: int = 0
    members: Any = None
    codec: Any = None

    def combine(self, payloads, ids=None):
        return payloads[list(ids).index(self.root)]

    def cost(self, net, sizes, ids):
        # a binomial-tree broadcast moves what a tree all-gather of the root's payload moves
        return net.allgather_cost([s if j == self.root else 0 for j, s in zip(ids, sizes)], ids)
