"""A small GPT in the style of nanoGPT (Karpathy, ``model.py``): pre-norm decoder blocks.

Token and learned position embeddings, ``layers`` blocks of causal self-attention (``heads``
heads, ``width`` channels, fused QKV projection, ``F.scaled_dot_product_attention``) and
an MLP (4x width, GELU), a final LayerNorm and an output layer tied to the token embedding.
No dropout: training must be a deterministic function of the data stream, so that every
backend computes the same numbers. Initialisation as nanoGPT: N(0, 0.02), residual
projections N(0, 0.02 / sqrt(2 layers)).

Every shape is read from the end (``x.shape[-2]``), so a leading worker axis passes through
(``stackable = True``, see :mod:`harness.tasks.batched`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width, bias=bias)
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.ln2 = nn.LayerNorm(width, bias=bias)
        self.fc = nn.Linear(width, 4 * width, bias=bias)
        self.out = nn.Linear(4 * width, width, bias=bias)

    def attention(self, x):
        *lead, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=-1)
        q, k, v = (z.reshape(*lead, t, self.heads, c // self.heads).transpose(-3, -2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [..., heads, T, c/heads]
        return self.proj(y.transpose(-3, -2).reshape(*lead, t, c))

    def forward(self, x):
        x = x + self.attention(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    stackable = True

    def __init__(self, vocab: int, context: int, layers: int = 2, heads: int = 2, width: int = 64, bias: bool = True):
        super().__init__()
        if width % heads:
            raise ValueError(f"task.width: {width} channels do not split into {heads} heads; use a multiple")
        self.context = context
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, heads, bias) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width, bias=bias)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids):
        t = ids.shape[-1]
        pos = torch.arange(t, device=ids.device).expand(ids.shape)
        x = self.wte(ids) + self.wpe(pos)
        return self.head(self.ln_f(self.blocks(x)))
