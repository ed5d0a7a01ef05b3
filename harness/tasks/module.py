"""Bring any ``torch.nn.Module``: a task that wraps a module, a data source and a loss.

A subclass gives ``build_module()`` (an ``nn.Module``), ``fetch(split, idx, augment)``
(examples ``idx`` [..., B] of ``"train"``/``"test"`` as tensors on ``self.device``, leading
shape kept) and the sizes ``n_train`` / ``n_test``; the rest is here:

* **Flat parameters** (:mod:`harness.tasks.flat`): the model is a ``[d]`` vector whose
  pieces are the module's parameters; ``torch.func.functional_call`` runs the module on
  them, so ops still move one contiguous tensor and algorithms are unchanged.
* **Stacked** ``[m, d]``: one autograd call for all ``m`` models, through the module's
  batched form (:mod:`harness.tasks.batched`: grouped convolutions, ``baddbmm``) when it
  has one, else ``vmap(functional_call)`` (``task.stacked`` forces either).
* **Per-worker buffers** (BatchNorm statistics) are kept per worker and keyed by ``who``.
  *Consensus rule:* ``evaluate(p)`` (the averaged model) does not use any worker's
  statistics. It re-estimates them for ``p`` itself from ``bn_samples`` fixed training
  examples (no augmentation; "precise BN", the cumulative average over chunks of
  ``eval_batch``): averaged weights need their own statistics, and the rule gives the same
  numbers on every backend, including the real ones where no process holds all workers'
  buffers. ``evaluate(p, who=i)`` uses worker ``i``'s running statistics instead.
* **Device**: ``task.device`` ``cpu | cuda | auto``. CUDA picks ``cuda:(local rank % GPUs)``
  from ``LOCAL_RANK`` / ``SLURM_LOCALID`` / ``OMPI_COMM_WORLD_LOCAL_RANK`` /
  ``MPI_LOCALRANKID`` (one GPU per rank on the real backends), else the current GPU (all
  virtual workers of a simulator on one GPU; the stacked backend's ``[n, d]`` lives there).
* **Precision**: ``fp32`` or ``bf16`` (forward and backward under ``torch.autocast`` in
  bfloat16; the flat parameters and gradients, the "master" copy, stay float32).
* **Evaluation**: ``train_loss`` on ``eval_train`` evenly spaced training examples,
  ``test_loss``/``test_acc`` on ``eval_test`` (default all) test examples, plus ``extra()``.
"""
from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from harness.tasks import batched as bt
from harness.tasks.base import Task, TaskParams
from harness.tasks.flat import FlatModule, WorkerBuffers

LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


class TaskDataError(ValueError):
    """Missing or malformed data; the message is one line naming the field and the fix."""


class ModuleParams(TaskParams):
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16: autocast compute, fp32 master params")
    stacked: Literal["auto", "batched", "vmap"] = Field("auto", description="how [m, d] models run at once")
    stack_chunk: int | None = Field(None, ge=1, description="stacked models per autograd call (default: 8 on CPU, all on GPU)")
    eval_train: int = Field(1024, ge=0, description="training examples for train_loss (fixed, evenly spaced)")
    eval_test: int | None = Field(None, ge=1, description="test examples to evaluate (default: all)")
    eval_batch: int = Field(500, ge=1, description="examples per forward pass when evaluating")
    bn_samples: int = Field(500, ge=1, description="training examples that re-estimate BatchNorm statistics")


def resolve_device(spec: str) -> torch.device:
    """``cpu``, ``cuda`` (fails if absent) or ``auto``; CUDA index from the local rank."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TaskDataError(f"task.device: cuda requested but this torch ({torch.__version__}) sees no GPU; "
                            "use device: cpu or auto")
    local = next((os.environ[v] for v in LOCAL_RANK_VARS if os.environ.get(v, "").isdigit()), None)
    if local is None:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", int(local) % torch.cuda.device_count())


def cross_entropy(out: torch.Tensor, y: torch.Tensor, lead: int) -> torch.Tensor:
    """Mean cross-entropy over all but the first ``lead`` axes of ``y`` (float32 or wider)."""
    out = out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
    per = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)
    return per.reshape(*y.shape[:lead], -1).mean(-1)


class ModuleTask(Task):
    Params = ModuleParams
    n_train: int
    n_test: int

    # -- what a subclass provides ---------------------------------------------------------
    def build_module(self) -> nn.Module:
        raise NotImplementedError

    def fetch(self, split: str, idx: torch.Tensor, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def extra(self, test_loss: float, test_acc: float) -> dict[str, float]:
        """Metrics beyond train/test loss and accuracy (e.g. perplexity)."""
        return {}

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor, lead: int) -> torch.Tensor:
        """Mean loss per model: ``[]`` (lead 0) or ``[m]`` (lead 1)."""
        return cross_entropy(out, y, lead)

    # -- set-up ----------------------------------------------------------------------------
    def setup(self, params: ModuleParams, n_workers: int, seed: int):
        """Call at the end of a subclass's ``__init__``, once data and sizes are known."""
        self.params, self.seed, self.batch_size = params, seed, params.batch_size
        self.device = resolve_device(params.device)
        self.dtype = getattr(torch, params.dtype)
        if params.precision == "bf16" and self.dtype != torch.float32:
            raise TaskDataError(f"task.precision: bf16 keeps float32 master parameters; set dtype: float32, "
                                f"not {params.dtype}")
        self.wire_codec = "bf16" if params.precision == "bf16" else None  # bytes at wire precision
        self.module = self._build(0)
        self.flat = FlatModule(self.module)
        self.dim, self.segments = self.flat.dim, self.flat.segments
        self.initial_buffers = {k: v.detach().clone() for k, v in self.module.named_buffers()}
        self.buffers = WorkerBuffers(self.initial_buffers, n_workers)
        self.has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())
        mode = params.stacked
        if mode == "batched" and not bt.supports(self.module):
            raise TaskDataError(f"task.stacked: {type(self.module).__name__} has no batched form "
                                "(needs stackable = True and supported leaves); use stacked: vmap or auto")
        self.use_batched = mode == "batched" or (mode == "auto" and bt.supports(self.module))
        self.timing_key = (type(self).__name__, params.model_dump_json(), str(self.device))

    def _build(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build_module()
        return module.to(device=self.device, dtype=self.dtype).train()

    def init_params(self, seed: int) -> torch.Tensor:
        return self.flat.flatten(self._build(seed)).clone()

    def _autocast(self):
        if self.params.precision != "bf16":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # -- training --------------------------------------------------------------------------
    def forward(self, p: torch.Tensor, x: torch.Tensor, bufs: dict) -> torch.Tensor:
        """The module at ``p`` [d] (or ``[m, d]`` with ``x`` [m, B, ...]) with buffers ``bufs``."""
        views = self.flat.views(p)
        with self._autocast():
            if p.dim() == 1:
                return functional_call(self.module, {**views, **bufs}, (x,))
            if self.use_batched:
                with bt.batched(self.module, self.flat.name_of, views, bufs, p.shape[0]):
                    return self.module(x)
            run = lambda q, b, xb: functional_call(self.module, {**q, **b}, (xb,))  # noqa: E731
            with warnings.catch_warnings():  # ops without a batching rule fall back to a loop: known, slow
                warnings.filterwarnings("ignore", message=".*batching rule.*")
                return torch.func.vmap(run)(views, bufs, x)

    def loss_and_grad(self, p: torch.Tensor, idx: torch.Tensor, who=None):
        """Loss and gradient of worker ``who``'s minibatch ``idx`` (augmented) at ``p``."""
        x, y = self.fetch("train", idx, augment=True)
        if p.dim() == 1:
            with torch.enable_grad():
                q = p.detach().requires_grad_(True)
                loss = self.loss_fn(self.forward(q, x, self.buffers.one(who)), y, 0)
                (g,) = torch.autograd.grad(loss, q)
                return loss.detach().to(p.dtype), g
        m = p.shape[0]
        k = self.params.stack_chunk or (8 if self.device.type == "cpu" else m)
        who = torch.arange(m) if who is None else torch.as_tensor(who, dtype=torch.long)
        if len(who) != m:
            raise ValueError(f"who: {len(who)} worker ids for {m} stacked models")
        losses, grads = [], []
        for s in range(0, m, k):  # chunks bound the memory of m models' activations
            with torch.enable_grad(), self.buffers.rows(who[s:s + k], min(k, m - s)) as bufs:
                q = p[s:s + k].detach().requires_grad_(True)
                loss = self.loss_fn(self.forward(q, x[s:s + k], bufs), y[s:s + k], 1)
                grads.append(torch.autograd.grad(loss.sum(), q)[0])
            losses.append(loss.detach())
        return torch.cat(losses).to(p.dtype), torch.cat(grads)

    # -- evaluation ------------------------------------------------------------------------
    def _chunks(self, n_use: int, n_all: int):
        idx = torch.linspace(0, n_all - 1, n_use).round().long() if n_use < n_all else torch.arange(n_all)
        return idx.split(self.params.eval_batch)

    def _consensus_buffers(self, p: torch.Tensor) -> dict:
        """Initial buffers, with BatchNorm statistics re-estimated for ``p`` (precise BN)."""
        bufs = {k: v.clone() for k, v in self.initial_buffers.items()}
        if not self.has_bn:
            return bufs
        bns = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        try:
            for m in bns:
                m.momentum = None  # cumulative average over the chunks
            for chunk in self._chunks(min(self.params.bn_samples, self.n_train), self.n_train):
                self.forward(p, self.fetch("train", chunk, augment=False)[0], bufs)
        finally:
            for m, mom in zip(bns, saved):
                m.momentum = mom
        return bufs

    def _mean_loss_acc(self, p, split, n_use, n_all, bufs):
        total, correct, count = 0.0, 0.0, 0
        for chunk in self._chunks(n_use, n_all):
            x, y = self.fetch(split, chunk, augment=False)
            out = self.forward(p, x, bufs)
            k = y.numel()
            total += self.loss_fn(out, y, 0).item() * k
            correct += (out.argmax(-1) == y).sum().item()
            count += k
        return total / max(count, 1), correct / max(count, 1)

    @torch.no_grad()
    def evaluate(self, p: torch.Tensor, who=None) -> dict[str, float]:
        """Metrics of one model ``p`` [d]: the consensus rule (module docstring) unless ``who``."""
        bufs = self._consensus_buffers(p) if who is None else self.buffers.one(who)
        self.module.eval()
        try:
            pr = self.params
            n_test = min(pr.eval_test or self.n_test, self.n_test)
            test_loss, test_acc = self._mean_loss_acc(p, "test", n_test, self.n_test, bufs)
            train_loss = (self._mean_loss_acc(p, "train", min(pr.eval_train, self.n_train), self.n_train, bufs)[0]
                          if pr.eval_train else float("nan"))
        finally:
            self.module.train()
        return {"train_loss": train_loss, "test_loss": test_loss, "test_acc": test_acc,
                **self.extra(test_loss, test_acc)}

    # -- timing (compute model "measured") -----------------------------------------------------
    def time_grad(self, idx: torch.Tensor, repeats: int = 10) -> float:
        """Median seconds of one worker's real training step (``loss_and_grad``) on this
        device, on scratch buffers so that no worker's statistics move."""
        import time

        x0 = self.init_params(0)
        saved, self.buffers = self.buffers, WorkerBuffers(self.initial_buffers, 1)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        try:
            self.loss_and_grad(x0, idx, 0)
            sync()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                self.loss_and_grad(x0, idx, 0)
                sync()
                ts.append(time.perf_counter() - t0)
        finally:
            self.buffers = saved
        return sorted(ts)[len(ts) // 2]
