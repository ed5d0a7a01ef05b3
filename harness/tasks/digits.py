"""The embedded default task: scikit-learn's bundled 8x8 digits with an MLP.

1,797 images of 64 pixels (scaled to [0, 1]), 10 classes; a fixed 80/20 train/test split
(independent of the run seed, so runs with different seeds share one test set). The model
is an MLP ``64 -> hidden... -> 10`` with ReLU, written on a flat parameter vector so that
the same code evaluates one worker ``[d]`` or all workers ``[n, d]`` (``matmul`` broadcasts
over the leading worker dimension: a batched model trained by ordinary autograd).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from harness.tasks.base import Task, TaskParams
from harness.tasks.partition import PARTITIONS


class DigitsParams(TaskParams):
    name: Literal["digits"] = "digits"
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (partition: dirichlet)")
    hidden: list[Annotated[int, Field(ge=1)]] = Field([64, 64], description="hidden layer widths")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split: Literal["random", "stratified"] = Field("random", description="train/test split: a random permutation, "
                                                   "or stratified by class (each class test_fraction in test)")


class DigitsTask(Task):
    name = "digits"
    Params = DigitsParams

    def __init__(self, params: DigitsParams, n_workers: int, seed: int):
        from sklearn.datasets import load_digits

        self.dtype = getattr(torch, params.dtype)
        self.batch_size = params.batch_size
        self.partition = params.partition
        data = load_digits()
        x = data.data.astype(np.float64) / 16.0
        y = data.target.astype(np.int64)
        perm = np.random.default_rng(12345).permutation(len(y))  # fixed split, not the run seed
        n_test = int(round(params.test_fraction * len(y)))
        test, train = perm[:n_test], perm[n_test:]
        if params.split == "stratified":  # the peers' split (sklearn's, fixed seed): classes in equal proportion
            from sklearn.model_selection import train_test_split

            train, test = train_test_split(np.arange(len(y)), test_size=n_test, stratify=y, random_state=12345)
        self.x_train = torch.tensor(x[train], dtype=self.dtype)
        self.y_train = torch.tensor(y[train])
        self.x_test = torch.tensor(x[test], dtype=self.dtype)
        self.y_test = torch.tensor(y[test])
        kw = {"alpha": params.alpha} if params.partition == "dirichlet" else {}
        self.shards = PARTITIONS[params.partition](y[train], params.n_parts(n_workers), seed, **kw)
        self.sizes = [64, *params.hidden, 10]
        self.segments, off = [], 0
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):  # (weight, bias) per layer
            self.segments += [(off, off + a * b), (off + a * b, off + a * b + b)]
            off += a * b + b
        self.dim = off

    def init_params(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        parts = []
        for a, b in zip(self.sizes[:-1], self.sizes[1:]):
            bound = 1.0 / math.sqrt(a)  # PyTorch's nn.Linear default range
            parts.append((torch.rand(a * b + b, generator=g, dtype=torch.float64) * 2 - 1) * bound)
        return torch.cat(parts).to(self.dtype)

    def predict(self, p, xb):
        lead = p.shape[:-1]
        # split (not slicing) so backward writes each piece's gradient into one buffer
        # instead of a full-size zero gradient per slice (2.2x faster here)
        parts = p.split([e - s for s, e in self.segments], dim=-1)
        h = xb
        for k, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            w = parts[2 * k].reshape(*lead, a, b)
            bias = parts[2 * k + 1].unsqueeze(-2)
            h = torch.matmul(h, w) + bias
            if k < len(self.sizes) - 2:
                h = torch.relu(h)
        return h

    def loss(self, p, xb, yb):
        logp = torch.log_softmax(self.predict(p, xb), dim=-1)
        return -logp.gather(-1, yb.unsqueeze(-1)).squeeze(-1).mean(-1)
