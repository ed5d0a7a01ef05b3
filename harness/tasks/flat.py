"""A ``torch.nn.Module``'s parameters as views into one flat vector, and per-worker buffers.

The harness moves one contiguous tensor per worker (``[d]``; ``[n, d]`` stacked), as DDP
buckets do, so algorithms never see a module. :class:`FlatModule` maps that vector to the
module's named parameters: ``views(p)`` splits ``p`` [..., d] along its last axis and views
each piece as ``[..., *shape]`` (views, not copies, so autograd writes the gradient of every
piece straight into one ``[..., d]`` buffer). Tied weights (one ``Parameter`` used by two
modules, e.g. a GPT's embedding and output layer) appear once, as ``named_parameters``
lists them.

Buffers (BatchNorm running statistics) are state *of a worker*, not parameters: they are
not averaged or sent. :class:`WorkerBuffers` keeps one copy per worker, keyed by ``who``
(see :mod:`harness.tasks.base`), plus one spare row for calls that do not say who they are
for (``who=None`` with ``p`` [d]: a real backend's process holds a single worker).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class FlatModule:
    """The layout of ``module``'s parameters in a flat vector (order: ``named_parameters``)."""

    def __init__(self, module: nn.Module):
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.segments, off = [], 0
        for s in self.sizes:
            self.segments.append((off, off + s))
            off += s
        self.dim = off
        self.name_of = {id(p): n for n, p in named}  # a tied Parameter resolves to its first name
        self.buffer_names = [n for n, _ in module.named_buffers()]

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """``module``'s current parameters as one ``[d]`` vector."""
        return torch.cat([p.detach().reshape(-1) for _, p in module.named_parameters()])

    def views(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: [..., *shape]}`` views of ``p`` [..., d]."""
        lead = p.shape[:-1]
        parts = p.split(self.sizes, dim=-1)
        return {n: t.view(*lead, *s) for n, t, s in zip(self.names, parts, self.shapes)}


class WorkerBuffers:
    """One copy of each buffer per worker: ``store[name]`` is ``[n + 1, *shape]``; row ``n``
    serves ``who=None`` ("this process's worker")."""

    def __init__(self, initial: dict[str, torch.Tensor], n: int):
        self.n = n
        self.store = {k: v.detach().unsqueeze(0).repeat(n + 1, *[1] * v.dim()).contiguous()
                      for k, v in initial.items()}

    def _row(self, who) -> int:
        if who is None:
            return self.n
        w = int(who)
        if not 0 <= w < self.n:
            raise IndexError(f"who: worker {w} out of range 0..{self.n - 1}")
        return w

    def one(self, who=None) -> dict[str, torch.Tensor]:
        """Worker ``who``'s buffers as views: in-place updates (BatchNorm) land in the store."""
        r = self._row(who)
        return {k: v[r] for k, v in self.store.items()}

    @contextmanager
    def rows(self, who: torch.Tensor | None, m: int):
        """``{name: [m, *shape]}`` for workers ``who`` (default ``arange(m)``); updates made
        inside the block are written back to those workers' rows when it ends."""
        if who is None:
            if m > self.n:
                raise ValueError(f"who: {m} stacked models but only {self.n} workers; pass who=")
            who = torch.arange(m)
        who = torch.as_tensor(who, dtype=torch.long).cpu()
        if who.numel() != m:
            raise ValueError(f"who: {who.numel()} worker ids for {m} stacked models")
        if ((who < 0) | (who >= self.n)).any():
            raise IndexError(f"who: worker ids must be in 0..{self.n - 1}, got {who.tolist()}")
        a = int(who[0]) if m else 0
        if torch.equal(who, torch.arange(a, a + m)):  # the common case: a range of rows, no copies
            yield {k: v[a:a + m] for k, v in self.store.items()}
            return
        dev = next(iter(self.store.values())).device if self.store else None
        idx = who.to(dev) if dev is not None else who
        got = {k: v[idx] for k, v in self.store.items()}
        yield got
        for k, v in got.items():
            self.store[k][idx] = v
