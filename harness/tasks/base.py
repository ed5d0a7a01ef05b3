"""What a task gives a run: data, partition across workers, a model's loss, evaluation.

The model is a *flat parameter vector* ``p`` of ``dim`` entries. ``loss(p, xb, yb)`` is
written rank-polymorphically: ``p`` is ``[..., d]``, ``xb`` ``[..., B, f]``, ``yb``
``[..., B]`` and the result ``[...]`` (one mean loss per leading index). A task whose
loss works on a stack of workers (``batched = True``) gets all workers' gradients from one
autograd call on the summed loss: workers' losses are independent, so the gradient of the
sum with respect to ``P[i]`` is worker ``i``'s gradient. Otherwise the stacked backend
falls back to ``torch.func.vmap(grad)``.

Every worker draws its minibatches from its own seeded stream, so a worker sees the same
batches on every backend, whatever order the backend visits workers in.

``loss_and_grad(p, idx, who)``: ``who`` names the worker(s) the call is for (an ``int``
with ``p`` [d], a LongTensor [m] with ``p`` [m, d]; ``None`` when the caller does not say:
"this process's worker" for [d], ``arange(m)`` for [m, d]). Tasks whose models have
per-worker state (BatchNorm running statistics, :mod:`harness.tasks.module`) key it by
``who``; the flat-vector tasks ignore it.

``parts`` (default ``n_workers``) is the number of data parts the training set is split
into; ``shards`` is that list of index arrays (``parts > n_workers`` for federated runs
where more clients than workers exist).
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness import streams

FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")


class TaskParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    batch_size: int = Field(32, ge=1, description="samples per minibatch")
    dtype: str = Field("float32", description="floating-point dtype of data and parameters (FLOAT_DTYPES)")
    parts: int | None = Field(None, ge=1, description="number of data parts (shards); default n_workers")

    # Validators (not only Field bounds) so that subclasses that re-declare a default keep the check.
    @field_validator("batch_size", check_fields=False)
    @classmethod
    def _positive_batch(cls, v):
        if v < 1:
            raise ValueError(f"Input should be greater than or equal to 1 (samples per minibatch), got {v}")
        return v

    @field_validator("dtype", check_fields=False)
    @classmethod
    def _float_dtype(cls, v):
        if v not in FLOAT_DTYPES:
            raise ValueError(f"must be a floating-point dtype, one of {', '.join(FLOAT_DTYPES)}; got {v!r}")
        return v

    def n_parts(self, n_workers: int) -> int:
        """Number of shards to cut: ``parts`` or one per worker (never fewer than workers)."""
        if self.parts is not None and self.parts < n_workers:
            raise ValueError(f"task.parts: {self.parts} parts for {n_workers} workers; "
                             f"need parts >= n_workers (or leave it unset)")
        return self.parts or n_workers


class Task:
    name: str = "task"
    batched: bool = True
    Params = TaskParams

    # Filled in by subclasses.
    dim: int
    segments: list[tuple[int, int]]  # (start, end) of each parameter tensor in the flat vector
    dtype: torch.dtype
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    shards: list[np.ndarray]
    batch_size: int
    partition: str = "iid"
    wire_codec: str | None = None  # codec of payloads whose op names none (bf16 training: "bf16")

    def init_params(self, seed: int) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, p: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, p: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- gradients ---------------------------------------------------------------------
    def loss_and_grad(self, p: torch.Tensor, idx: torch.Tensor, who=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch loss and gradient at ``p`` ([d] with idx [B], or [m, d] with idx [m, B]);
        ``who``: the worker (int) or workers ([m] ids) the rows belong to (per-worker state)."""
        xb, yb = self.x_train[idx], self.y_train[idx]
        if p.dim() == 1 or self.batched:
            with torch.enable_grad():
                q = p.detach().requires_grad_(True)
                loss = self.loss(q, xb, yb)
                (g,) = torch.autograd.grad(loss.sum(), q)
            return loss.detach(), g
        g, loss = torch.func.vmap(torch.func.grad_and_value(self.loss), randomness="different")(p, xb, yb)
        return loss, g

    # -- evaluation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, p: torch.Tensor) -> dict[str, float]:
        """Full-data train loss, test loss and test accuracy of one model ``p`` [d]."""
        logits = self.predict(p, self.x_test)
        acc = (logits.argmax(-1) == self.y_test).double().mean().item()
        return {
            "train_loss": self.loss(p, self.x_train, self.y_train).item(),
            "test_loss": self.loss(p, self.x_test, self.y_test).item(),
            "test_acc": acc,
        }


class Sampler:
    """Per-worker minibatch indices: worker ``i`` samples (with replacement) from its shard
    using its own generator seeded by (seed, i). ``draw(i, part=j)`` samples part ``j``
    with worker ``i``'s stream for that part, seeded by (seed, i, j), created on first
    use: the batches do not depend on the order in which a backend visits workers."""

    def __init__(self, shards: list[np.ndarray], batch_size: int, seed: int):
        self.shards = [torch.as_tensor(s, dtype=torch.long) for s in shards]
        self.batch_size, self.seed = batch_size, seed
        # one stream per part, made on first use (a 10,000-client run plays a few hundred) [issue 22]
        self.gens = streams.PerId(len(shards), lambda i: self._gen([seed, i, 7]))
        self.part_gens: dict[tuple[int, int], torch.Generator] = {}

    @staticmethod
    def _gen(key) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        return g

    def worker(self, i: int, batches: int = 1) -> torch.Tensor:
        shard = self.shards[i]
        pos = torch.randint(len(shard), (batches * self.batch_size,), generator=self.gens[i])
        return shard[pos]

    def draw(self, i: int, part: int | None = None, batches: int = 1) -> torch.Tensor:
        """Worker ``i``'s next minibatch indices: from its own shard, or from part ``part``."""
        if part is None:
            return self.worker(i, batches)
        if not 0 <= part < len(self.shards):
            raise ValueError(f"Grad.part: part {part} does not exist; the data has parts 0..{len(self.shards) - 1} "
                             "(set task.parts to split it into more)")
        g = self.part_gens.get((i, part))
        if g is None:
            g = self.part_gens[(i, part)] = self._gen([self.seed, i, part, 29])
        shard = self.shards[part]
        return shard[torch.randint(len(shard), (batches * self.batch_size,), generator=g)]

    def for_op(self, op, i: int, client: int | None = None) -> torch.Tensor:
        """Worker ``i``'s minibatch indices for ``Grad`` op ``op`` (one source for every backend):
        ``op.part`` (an int, or a ``[]``/``[n]`` tensor) draws that part with worker ``i``'s stream;
        a slot playing ``client`` draws the client's own stream (so a client's batches do not depend
        on the slot); ``op.epoch``/``op.nth``: that minibatch of a pass without replacement."""
        def pick(v):
            return None if v is None else int(v[i]) if isinstance(v, torch.Tensor) and v.dim() else int(v)

        part = pick(op.part)
        if op.epoch is not None:
            p = part if part is not None else client if client is not None else i
            idx = self.epoch(p, pick(op.epoch), pick(op.nth))
            if not len(idx):
                raise ValueError(f"Grad: minibatch {pick(op.nth)} of a pass over part {p} is empty (it has "
                                 f"{self.n_batches(p)}); give Grad members= the slots whose clients have that many")
            return idx
        if part is not None:
            return self.draw(i, part, op.batches)
        return self.draw(client, None, op.batches) if client is not None else self.draw(i, None, op.batches)

    def epoch(self, part: int, epoch: int, nth: int) -> torch.Tensor:
        """The ``nth`` minibatch of pass ``epoch`` over part ``part`` without replacement: a
        permutation of the shard (stream ``(seed, part, epoch)``) cut into batches of
        ``batch_size``, the last one ragged. An empty tensor past the last batch."""
        key = (part, epoch)
        perm = self._perms.get(key) if hasattr(self, "_perms") else None
        if perm is None:
            if not hasattr(self, "_perms") or len(self._perms) > 4096:
                self._perms = {}
            shard = self.shards[part]
            order = streams.rng("epochs", self.seed, part, epoch).permutation(len(shard))
            perm = self._perms[key] = shard[torch.as_tensor(order, dtype=torch.long)]
        return perm[nth * self.batch_size:(nth + 1) * self.batch_size]

    def n_batches(self, part: int) -> int:
        """Minibatches in one pass over part ``part`` (the last one ragged)."""
        return -(-len(self.shards[part]) // self.batch_size)

    def all(self, batches: int = 1) -> torch.Tensor:
        return torch.stack([self.worker(i, batches) for i in range(len(self.shards))])
