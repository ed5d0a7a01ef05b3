"""Run ``m`` copies of a module at once with ordinary autograd: the batched form.

``torch.func.vmap(functional_call)`` works for any module but pays a per-op overhead that
dominates small models (``../shared/ARCHITECTURE.md``, "Batched models"). Most models are
built from a few leaf layers that have an exact batched form: a convolution of ``m``
models is one grouped convolution (``groups=m``), a linear layer is one ``baddbmm``,
BatchNorm/GroupNorm of ``m`` models are one norm over ``m`` times the channels, an
embedding is one lookup in the concatenated tables. Between leaves, models do elementwise
maths, reshapes and pooling, which pass a leading worker axis through unchanged *if*
they address dimensions from the end (``x.mean((-2, -1))``, ``x[..., ::2, ::2]``,
``x.shape[-1]``).

A module opts in with the class attribute ``stackable = True`` (its forward uses negative
dimensions only). :func:`batched` then swaps each leaf's ``forward`` for its batched rule
for the duration of one call, with that leaf's parameters and buffers taken from the
stacked ``[m, ...]`` dicts; activations carry the worker axis first, ``[m, B, ...]``.
Convolutions and norms see their input as ``[B, m * C, H, W]``; the output is returned as
a transposed view, so consecutive convolutions and norms need no copies.
:func:`supports` says whether a module qualifies; otherwise the task uses ``vmap``.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def _to_channels(x: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple]:
    """[m, *L, C, H, W] -> [prod(L), m*C, H, W]; returns the lead shape L too."""
    lead = x.shape[1:-3]
    xt = x.movedim(0, -4)  # [*L, m, C, H, W]
    return xt.reshape(-1, m * x.shape[-3], *x.shape[-2:]), lead


def _from_channels(y: torch.Tensor, m: int, lead: tuple) -> torch.Tensor:
    return y.view(*lead, m, y.shape[1] // m, *y.shape[-2:]).movedim(-4, 0)


def _flat(t):
    return None if t is None else t.reshape(-1)


def conv2d(mod: nn.Conv2d, x, P, B, m):
    if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
        raise NotImplementedError("batched Conv2d: groups=1, zero padding with explicit sizes only")
    xt, lead = _to_channels(x, m)
    w = P["weight"]
    y = F.conv2d(xt, w.reshape(-1, *w.shape[2:]), _flat(P.get("bias")), mod.stride, mod.padding,
                 mod.dilation, groups=m)
    return _from_channels(y, m, lead)


def batch_norm2d(mod: nn.BatchNorm2d, x, P, B, m):
    xt, lead = _to_channels(x, m)
    training = mod.training or not mod.track_running_stats
    momentum = mod.momentum if mod.momentum is not None else 0.0
    if mod.training and mod.track_running_stats:
        nbt = B["num_batches_tracked"]
        nbt.add_(1)
        if mod.momentum is None:  # cumulative average; counts are equal across stacked workers
            momentum = 1.0 / float(nbt.reshape(-1)[0])
    rm, rv = B.get("running_mean"), B.get("running_var")
    y = F.batch_norm(xt, _flat(rm) if rm is not None else None, _flat(rv) if rv is not None else None,
                     _flat(P.get("weight")), _flat(P.get("bias")), training, momentum, mod.eps)
    return _from_channels(y, m, lead)


def group_norm(mod: nn.GroupNorm, x, P, B, m):
    xt, lead = _to_channels(x, m)
    y = F.group_norm(xt, m * mod.num_groups, _flat(P.get("weight")), _flat(P.get("bias")), mod.eps)
    return _from_channels(y, m, lead)


def linear(mod: nn.Linear, x, P, B, m):
    lead = x.shape[1:-1]
    x3 = x.reshape(m, -1, x.shape[-1])
    wt = P["weight"].transpose(1, 2)
    b = P.get("bias")
    y = torch.bmm(x3, wt) if b is None else torch.baddbmm(b.unsqueeze(1), x3, wt)
    return y.view(m, *lead, y.shape[-1])


def layer_norm(mod: nn.LayerNorm, x, P, B, m):
    y = F.layer_norm(x, mod.normalized_shape, None, None, mod.eps)
    shape = (m, *[1] * (x.dim() - 1 - len(mod.normalized_shape)), *mod.normalized_shape)
    if P.get("weight") is not None:
        y = y * P["weight"].view(shape)
    if P.get("bias") is not None:
        y = y + P["bias"].view(shape)
    return y


def embedding(mod: nn.Embedding, ids, P, B, m):
    if mod.padding_idx is not None or mod.max_norm is not None:
        raise NotImplementedError("batched Embedding: no padding_idx / max_norm")
    w = P["weight"]  # [m, V, C]
    off = torch.arange(m, device=ids.device).view(m, *[1] * (ids.dim() - 1)) * w.shape[1]
    return F.embedding(ids + off, w.reshape(-1, w.shape[-1]))


LEAVES = {nn.Conv2d: conv2d, nn.BatchNorm2d: batch_norm2d, nn.GroupNorm: group_norm, nn.Linear: linear,
          nn.LayerNorm: layer_norm, nn.Embedding: embedding}


def supports(module: nn.Module) -> bool:
    """``module`` declares ``stackable`` and every module holding parameters or buffers is a
    leaf with a batched rule."""
    if not getattr(module, "stackable", False):
        return False
    for mod in module.modules():
        own = list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
        if own and type(mod) not in LEAVES:
            return False
    return True


@contextmanager
def batched(module: nn.Module, name_of: dict[int, str], params: dict, buffers: dict, m: int):
    """Within the block, ``module(x)`` with ``x`` [m, B, ...] runs ``m`` models: leaf
    parameters come from ``params`` ([m, *shape] by flat name; ``name_of`` maps a
    Parameter's id to it, which resolves tied weights), buffers from ``buffers``."""
    patched = []
    try:
        for prefix, mod in module.named_modules():
            rule = LEAVES.get(type(mod))
            if rule is None:
                continue
            P = {k: params[name_of[id(p)]] for k, p in mod.named_parameters(recurse=False)}
            P.update({k: None for k, v in mod._parameters.items() if v is None})
            Bf = {k: buffers[f"{prefix}.{k}" if prefix else k] for k, _ in mod.named_buffers(recurse=False)}
            mod.forward = (lambda x, _r=rule, _m=mod, _P=P, _B=Bf: _r(_m, x, _P, _B, m))
            patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward  # back to the class's forward
