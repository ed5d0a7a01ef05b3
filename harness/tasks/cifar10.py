"""CIFAR-10 with a CIFAR ResNet (ResNet-20 by default): ``task: {name: cifar10, root: DIR}``.

Data: the "python version" from https://www.cs.toronto.edu/~kriz/cifar.html, unpacked so
that ``DIR/cifar-10-batches-py/`` (or ``DIR`` itself) holds ``data_batch_1`` .. ``data_batch_5``
and ``test_batch``: pickled dicts with ``b'data'`` (uint8 ``[N, 3072]``, the red, green and
blue 32x32 planes of each image, row-major) and ``b'labels'`` (N ints in 0..9). Nothing is
downloaded; a missing file is a one-line error saying where to put it, and so is a batch whose
pixels are not integers in 0..255 (floats are never cast: [0, 1] floats would be black images),
whose labels are not in 0..9, or that has no image.

Training batches get the standard augmentation: a random 32x32 crop of the image padded by
4 black pixels on each side, and a horizontal flip with probability 1/2; then every image is
normalised per channel with the training set's mean and standard deviation. The random
draws are a function of the run seed and the minibatch's sampled indices (a generator
seeded by ``(seed, indices of that batch)``), not of any hidden state, so SimPy, stacked
and real backends augment a worker's batch identically.

Partitions: ``iid``, ``dirichlet`` (label skew, ``alpha``), ``powerlaw`` (quantity skew,
``exponent``), into ``parts`` (default ``n_workers``) shards.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from harness.tasks.datacheck import int_values, read_bytes
from harness.tasks.module import ModuleParams, ModuleTask, TaskDataError
from harness.tasks.partition import PARTITIONS
from harness.tasks.resnet import CifarResNet

FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
HOWTO = "put the python version (cifar-10-batches-py/data_batch_1..5, test_batch) there"


def find_batches(root: str | Path) -> Path:
    """The directory holding the batch files: ``root/cifar-10-batches-py`` or ``root``."""
    base = Path(root).expanduser()
    for d in (base / "cifar-10-batches-py", base):
        if all((d / f).is_file() for f in FILES):
            return d
    missing = [f for f in FILES if not (base / "cifar-10-batches-py" / f).is_file()]
    raise TaskDataError(f"task.root: no CIFAR-10 at {base} (missing {', '.join(missing)}); {HOWTO}")


PIXEL_FIX = ("the python version stores uint8 0..255 (images as floats in [0, 1]: multiply by 255 and round "
             "to uint8)")
LABEL_FIX = "CIFAR-10 has 10 classes, labelled 0..9"


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]``, checked
    (:mod:`harness.tasks.datacheck`): integer pixels 0..255 and labels 0..9 as stored (never
    cast), ``[N, 3072]`` pixels for N labels, N >= 1."""
    raw = read_bytes(path, "task.root", HOWTO)
    try:
        d = pickle.loads(raw, encoding="bytes")
        data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    except Exception as e:  # any failure to unpickle or index: not a batch
        raise TaskDataError(f"task.root: {path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}); "
                            f"{HOWTO}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.ndim != 1 or len(labels) != len(data) or not len(data):
        raise TaskDataError(f"task.root: {path} has data {list(data.shape)} and labels {list(labels.shape)}; "
                            "expected uint8 [N, 3072] and N labels, N >= 1")
    data = int_values(data, field="task.root", path=path, what="pixels", lo=0, hi=255, fix=PIXEL_FIX)
    labels = int_values(labels, field="task.root", path=path, what="labels", lo=0, hi=9, fix=LABEL_FIX)
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | Path):
    """``(x_train, y_train, x_test, y_test)`` as numpy arrays from the python version."""
    d = find_batches(root)
    parts = [read_batch(d / f) for f in FILES[:5]]
    x_test, y_test = read_batch(d / "test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_test, y_test


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 ``[N, 3, H, W]`` scaled to [0, 1],
    exactly, from a histogram of the 256 values (no float copy of the data set)."""
    v = np.arange(256) / 255.0
    mean, std = np.empty(3), np.empty(3)
    for c in range(3):
        h = np.bincount(images[:, c].reshape(-1), minlength=256).astype(np.float64)
        h /= h.sum()
        mean[c] = (h * v).sum()
        std[c] = max(np.sqrt((h * (v - mean[c]) ** 2).sum()), 1e-3)
    return mean, std


def augment_params(idx: torch.Tensor, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets ``[..., B, 2]`` in 0..8 and flips ``[..., B]`` for sampled indices ``idx``
    [..., B]: each batch (last axis) draws from a generator seeded by (seed, its indices)."""
    rows = idx.reshape(-1, idx.shape[-1]).cpu().numpy()
    off = np.empty((*rows.shape, 2), dtype=np.int64)
    flip = np.empty(rows.shape, dtype=bool)
    for r, row in enumerate(rows):
        rng = np.random.default_rng([seed, 0xC1FA, *row.tolist()])
        off[r] = rng.integers(0, 9, size=(len(row), 2))
        flip[r] = rng.random(len(row)) < 0.5
    return off.reshape(*idx.shape, 2), flip.reshape(idx.shape)


def crop_flip(images: torch.Tensor, off: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """``images`` [K, C, H, W] zero-padded by ``pad``, cropped at ``off`` [K, 2], flipped where ``flip``."""
    k, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    ar_h, ar_w = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
    rows = off[:, 0, None] + ar_h  # [K, H]
    cols = off[:, 1, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # [K, W]
    kk = torch.arange(k, device=images.device)[:, None, None, None]
    cc = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[kk, cc, rows[:, None, :, None], cols[:, None, None, :]]


class Cifar10Params(ModuleParams):
    name: Literal["cifar10"] = "cifar10"
    root: str | None = Field(None, description="directory with cifar-10-batches-py/ (the python version)")
    batch_size: int = 32
    partition: Literal["iid", "dirichlet", "powerlaw"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (partition: dirichlet)")
    exponent: float = Field(1.0, ge=0, description="shard sizes ~ (k+1)^-exponent (partition: powerlaw)")
    depth: int = Field(20, ge=8, description="6k+2: 20, 32, 44, 56, 110")
    width: int = Field(16, ge=1, description="channels of the first stage (16 in the paper)")
    norm: Literal["batch", "group"] = "batch"
    groups: int = Field(8, ge=1, description="GroupNorm groups (norm: group)")
    augment: bool = True
    eval_test: int | None = Field(None, ge=1, description="test images to evaluate (default: all 10,000)")


class Cifar10Task(ModuleTask):
    name = "cifar10"
    Params = Cifar10Params

    def __init__(self, params: Cifar10Params, n_workers: int, seed: int):
        if params.root is None:
            raise TaskDataError(f"task.root: not set; give the directory of CIFAR-10 and {HOWTO}")
        x_tr, y_tr, x_te, y_te = load_cifar10(params.root)
        self.partition = params.partition
        kw = {"dirichlet": {"alpha": params.alpha}, "powerlaw": {"exponent": params.exponent}}.get(params.partition, {})
        self.shards = PARTITIONS[params.partition](y_tr, params.n_parts(n_workers), seed, **kw)
        self.n_train, self.n_test = len(y_tr), len(y_te)
        self.setup(params, n_workers, seed)
        dev = self.device
        self.x_train, self.y_train = torch.from_numpy(x_tr).to(dev), torch.from_numpy(y_tr).to(dev)
        self.x_test, self.y_test = torch.from_numpy(x_te).to(dev), torch.from_numpy(y_te).to(dev)
        mean, std = channel_stats(x_tr)
        self.mean = torch.tensor(mean, dtype=self.dtype, device=dev).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=self.dtype, device=dev).view(3, 1, 1)

    def build_module(self):
        p = self.params
        return CifarResNet(p.depth, p.width, 10, p.norm, p.groups)

    def fetch(self, split, idx, augment):
        x_all, y_all = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        flat = idx.reshape(-1).to(self.device)
        x = x_all[flat]
        if augment and self.params.augment:
            off, flip = augment_params(idx, self.seed)
            x = crop_flip(x, torch.from_numpy(off.reshape(-1, 2)).to(self.device),
                          torch.from_numpy(flip.reshape(-1)).to(self.device))
        x = (x.to(self.dtype) / 255.0 - self.mean) / self.std
        return x.view(*idx.shape, 3, 32, 32), y_all[flat].view(idx.shape)
