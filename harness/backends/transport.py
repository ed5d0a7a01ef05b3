"""What every real backend shares below the interpreter: the point-to-point message header and
the :class:`Transport` interface a backend implements. A transport moves bytes only; the clock,
watchdog, counters and deferred recorder of a rank live in :mod:`harness.backends.rank_clock`."""
from __future__ import annotations

import numpy as np
import torch



# dtype codes in point-to-point message headers
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
          torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
MAX_DIMS = 8
HEADER_LEN = 4 + MAX_DIMS  # tag, dtype code, wire bytes, ndim, shape...


def header(x: torch.Tensor, tag: int, nbytes: int | None = None) -> list[int]:
    """``nbytes``: the payload's size on the wire (its codec's), counted by the receiver."""
    if x.dim() > MAX_DIMS:
        raise ValueError(f"Send: tensors of at most {MAX_DIMS} dimensions, got {x.dim()}")
    if x.dtype not in DTYPES:
        raise ValueError(f"Send: unsupported dtype {x.dtype}")
    nbytes = x.numel() * x.element_size() if nbytes is None else nbytes
    return [int(tag), DTYPES.index(x.dtype), int(nbytes), x.dim(), *x.shape, *[0] * (MAX_DIMS - x.dim())]


def from_header(h) -> tuple[int, torch.dtype, tuple[int, ...], int]:
    """``(tag, dtype, shape, wire bytes)``."""
    h = [int(v) for v in h]
    return h[0], DTYPES[h[1]], tuple(h[4:4 + h[3]]), h[2]


class Transport:
    """What a real backend provides. Ranks are world ranks; collectives and ``gather_eval``
    span the *workers* (ranks ``setup`` was given; the root of ``gather_eval`` is the first
    worker). Every method may block; ``abort`` never returns."""

    name = "?"
    _checkpoint_fixed = True  # live connections: a checkpoint never pickles a transport (harness.checkpoint)
    rank = 0
    size = 1
    job = ""  # an id every rank of this launch agrees on (names the heartbeat directory)
    device = torch.device("cpu")

    def setup(self, workers: list[int]) -> None: ...
    def barrier(self) -> None: ...
    def bcast_obj(self, obj): ...
    def gather_obj(self, obj) -> list | None: ...
    def allreduce_sum(self, x: torch.Tensor) -> torch.Tensor: ...
    def allgather(self, x: torch.Tensor) -> torch.Tensor: ...
    def exchange(self, x: torch.Tensor, outs: dict[int, int], ins: dict[int, int]) -> dict[int, torch.Tensor]:
        """Send ``x`` to every rank of ``outs`` and receive a tensor shaped like ``x`` from
        every rank of ``ins``; each edge has its own tag (``{rank: tag}``)."""
    def send(self, dst: int, x: torch.Tensor, tag: int, nbytes: int | None = None) -> None: ...
    def recv(self, src: int, tag: int | None) -> tuple[int, int, torch.Tensor, float, int]:
        """``(src, tag, x, seconds waited, wire bytes)``."""
    def recv_within(self, src: int, tag: int | None, seconds: float):
        """As ``recv``, or ``None`` when nothing matching arrived within ``seconds`` (probe, then receive)."""
        raise NotImplementedError(f"backend {self.name}: no receive with a timeout; use backend mpi or simpy")
    def win_create(self, x: torch.Tensor) -> None:
        """Collective over all ranks: every rank exposes a window holding one tensor like ``x``."""
        raise NotImplementedError(f"backend {self.name}: no one-sided windows; use backend mpi or simpy")
    def win_update(self, ranks: list[int], fn) -> list[torch.Tensor]:
        """Lock the windows of ``ranks`` (ascending), read them, write ``fn(values)`` unless
        ``fn`` is None, unlock; return what was written (or read). Atomic per window."""
        raise NotImplementedError(f"backend {self.name}: no one-sided windows; use backend mpi or simpy")
    def gather_eval(self, x: torch.Tensor, counters: np.ndarray): ...
    def finish(self) -> None: ...
    def close(self) -> None: ...
    def abort(self, msg: str) -> None: ...
