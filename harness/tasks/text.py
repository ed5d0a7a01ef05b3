"""Next-token prediction on any UTF-8 text file with a small GPT: ``task: {name: text, path: FILE}``.

Tokens are bytes (``tokens: byte``, vocabulary 256, any file) or characters (``tokens: char``,
the vocabulary is the file's sorted set of characters; the file must be UTF-8). The token
stream is split *by position*: the first ``1 - val_fraction`` of the file trains, the rest
validates (the ``test_*`` columns), so no text is in both. An example is a window of
``context + 1`` tokens starting every ``stride`` tokens (default: ``context``, no overlap);
the model predicts tokens 2..T+1 from 1..T, and the loss is the mean cross-entropy over
the window's tokens. ``test_ppl = exp(test_loss)`` (per token), ``test_acc`` the next-token
accuracy.

Partitions of the training windows: ``iid`` (random windows), ``contiguous`` (each part a
consecutive stretch of the file, e.g. different stories) and ``powerlaw`` (consecutive
stretches with power-law sizes, ``exponent``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from harness.tasks.datacheck import read_bytes
from harness.tasks.gpt import GPT
from harness.tasks.module import ModuleParams, ModuleTask, TaskDataError
from harness.tasks.partition import PARTITIONS


def load_tokens(path: str | Path, kind: str) -> tuple[np.ndarray, int, list[str] | None]:
    """``(tokens, vocab size, characters or None)`` of a text file: bytes or characters."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TaskDataError(f"task.path: no text file at {p}; give any UTF-8 text file (e.g. TinyStories' "
                            "TinyStories-valid.txt)")
    raw = read_bytes(p, "task.path", "give a readable UTF-8 text file")
    if kind == "byte":
        return np.frombuffer(raw, dtype=np.uint8).copy(), 256, None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskDataError(f"task.path: {p} is not UTF-8 (byte {e.start}); use tokens: byte") from None
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    chars, ids = np.unique(codes, return_inverse=True)
    dtype = np.int16 if len(chars) < 2**15 else np.int32
    return ids.astype(dtype), len(chars), [chr(c) for c in chars]


class TextParams(ModuleParams):
    name: Literal["text"] = "text"
    path: str | None = Field(None, description="a UTF-8 text file")
    tokens: Literal["byte", "char"] = "byte"
    batch_size: int = 16
    context: int = Field(64, ge=2, description="tokens per example (the model's block size)")
    stride: int | None = Field(None, ge=1, description="tokens between example starts (default: context)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="the file's last fraction validates")
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    width: int = Field(64, ge=1)
    bias: bool = True
    partition: Literal["iid", "contiguous", "powerlaw"] = "iid"
    exponent: float = Field(1.0, ge=0, description="shard sizes ~ (k+1)^-exponent (partition: powerlaw)")
    eval_train: int = Field(256, ge=0, description="training windows for train_loss")
    eval_test: int | None = Field(256, ge=1, description="validation windows to evaluate (None: all)")


class TextTask(ModuleTask):
    name = "text"
    Params = TextParams

    def __init__(self, params: TextParams, n_workers: int, seed: int):
        if params.path is None:
            raise TaskDataError("task.path: not set; give any UTF-8 text file, e.g. task: {name: text, path: FILE}")
        toks, self.vocab, self.chars = load_tokens(params.path, params.tokens)
        self.context, self.stride = params.context, params.stride or params.context
        n_tr = int(len(toks) * (1 - params.val_fraction))
        self.starts = {"train": 0, "test": n_tr}
        self.n_train = self._windows(n_tr)
        self.n_test = self._windows(len(toks) - n_tr)
        if min(self.n_train, self.n_test) < 1:
            raise TaskDataError(f"task.path: {params.path} has {len(toks)} tokens, too few for windows of "
                                f"{self.context + 1} in both the train and the validation part; use a smaller "
                                "context or val_fraction, or a longer file")
        self.partition = params.partition
        kw = {"powerlaw": {"exponent": params.exponent, "contiguous": True}}.get(params.partition, {})
        self.shards = PARTITIONS[params.partition](np.zeros(self.n_train), params.n_parts(n_workers), seed, **kw)
        self.setup(params, n_workers, seed)
        self.tokens = torch.from_numpy(np.ascontiguousarray(toks)).to(self.device)
        self.x_train = self.x_test = self.tokens
        self.y_train = self.y_test = self.tokens
        self.offsets = torch.arange(self.context + 1, device=self.device)

    def _windows(self, length: int) -> int:
        return max(0, (length - self.context - 1) // self.stride + 1)

    def build_module(self):
        p = self.params
        return GPT(self.vocab, self.context, p.layers, p.heads, p.width, p.bias)

    def fetch(self, split, idx, augment):
        start = self.starts[split] + idx.to(self.device) * self.stride
        win = self.tokens[start.unsqueeze(-1) + self.offsets].long()  # [..., B, T + 1]
        return win[..., :-1], win[..., 1:]

    def extra(self, test_loss, test_acc):
        return {"test_ppl": math.exp(min(test_loss, 700.0))}

    def decode(self, ids) -> str:
        """Token ids back to text (for looking at samples)."""
        ids = [int(i) for i in ids]
        if self.chars is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)
