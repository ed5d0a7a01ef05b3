"""Codecs: what a payload looks like on the wire, and what the receiver gets back.

A communication op may carry a codec (``AllReduce(x, codec="topk:0.01")``). Its meaning
lives here and nowhere else:

* ``roundtrip(x)``: the value a receiver reconstructs from one worker's ``[d]`` payload
  (``decode(encode(x))``); collectives combine the round-tripped payloads;
* ``wire_bits(x)``: the encoded size, so bytes are ``wire_bits / 8``, not
  ``numel * element_size``, identically on every backend;
* ``summable``: whether the encoded form can be reduced on the way (a ring all-reduce at
  the wire size, e.g. a bf16 cast) or must be gathered (sign, sparse: the cost model then
  prices an all-gather of the encoded payloads).

=======================  =====================================================  ===========================
spec                     receiver gets                                          wire bits for ``d`` entries
=======================  =====================================================  ===========================
``bf16`` / ``fp16``      ``x`` rounded to that float format                      ``16 d``
``sign``                 ``(||x||_1 / d) sign(x)`` (EF-signSGD's scaled sign;    ``d + 32``
                         ``sign(0) = +1``)
``topk:R``               the ``k`` largest-magnitude entries, zeros elsewhere    ``k (v + 32)``: value bits
                         (``R < 1``: ``k = ceil(R d)``; ``R >= 1``: ``k = R``)   ``v`` of the dtype, 32-bit indices
``topk:R:delta``         the same                                               ``k v`` + Elias-gamma codes of
                                                                                the gaps between sorted indices
``bits:B``               ``x`` unchanged (an explicit wire size)                ``B``
=======================  =====================================================  ===========================

Error feedback and stochastic quantisers belong to the algorithm (a transform keeps the
residual); a codec is a pure function of the payload. Codecs act on one worker's vector;
the stacked backend applies them row by row, so every backend computes the same bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Codec:
    spec: str
    summable: bool = True

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def wire_bits(self, x: torch.Tensor) -> int:
        return x.numel() * x.element_size() * 8


@dataclass(frozen=True)
class Cast(Codec):
    dtype: torch.dtype = torch.bfloat16

    def roundtrip(self, x):
        return x.to(self.dtype).to(x.dtype)

    def wire_bits(self, x):
        return x.numel() * torch.finfo(self.dtype).bits


@dataclass(frozen=True)
class Sign(Codec):
    summable: bool = False

    def roundtrip(self, x):
        scale = x.abs().sum() / max(x.numel(), 1)
        return torch.where(x >= 0, scale, -scale)

    def wire_bits(self, x):
        return x.numel() + 32


@dataclass(frozen=True)
class TopK(Codec):
    summable: bool = False
    ratio: float = 0.01
    delta: bool = False

    def k(self, d: int) -> int:
        return min(d, math.ceil(self.ratio * d) if self.ratio < 1 else int(self.ratio))

    def _index(self, x):
        # stable tie-break (lowest index first) so every backend keeps the same entries
        return torch.sort(torch.argsort(x.abs(), descending=True, stable=True)[: self.k(x.numel())]).values

    def roundtrip(self, x):
        idx = self._index(x)
        return torch.zeros_like(x).index_copy_(0, idx, x[idx])

    def wire_bits(self, x):
        k, v = self.k(x.numel()), x.element_size() * 8
        if not self.delta:
            return k * (v + 32)
        gaps = torch.diff(self._index(x), prepend=torch.tensor([-1])) if k else torch.tensor([], dtype=torch.long)
        return k * v + int(sum(2 * int(g).bit_length() - 1 for g in gaps.tolist()))  # Elias gamma of gap >= 1


@dataclass(frozen=True)
class Bits(Codec):
    bits: int = 0

    def wire_bits(self, x):
        return self.bits


CASTS = {"bf16": torch.bfloat16, "fp16": torch.float16}
CODECS: dict = {}  # user codecs: name -> factory(spec, *args) -> Codec (see register)


def register(name: str):
    """Decorator: ``factory(spec, *args) -> Codec`` builds codec ``name`` (spec ``name`` or
    ``name:arg:...``, the arguments as strings). A user's codec is one file::

        @codecs.register("int8")
        def int8(spec):
            return Int8(spec, summable=False)

    A built-in name cannot be replaced."""
    if name in CASTS or name in ("sign", "topk", "bits"):
        raise ValueError(f"codecs.register: {name!r} is a built-in codec; choose another name")

    def deco(factory):
        CODECS[name] = factory
        return factory
    return deco


def parse(spec: str | Codec | None) -> Codec | None:
    """A codec from its spec text (table above); ``None`` stays ``None``. Raises
    ValueError naming the problem."""
    if spec is None or isinstance(spec, Codec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"codec: expected a spec such as 'bf16', 'sign', 'topk:0.01', got {spec!r}")
    name, *args = spec.split(":")
    try:
        if name in CASTS and not args:
            return Cast(spec, True, CASTS[name])
        if name == "sign" and not args:
            return Sign(spec)
        if name == "topk" and 1 <= len(args) <= 2 and (len(args) == 1 or args[1] == "delta"):
            r = float(args[0])
            if r <= 0 or (r >= 1 and r != int(r)):
                raise ValueError
            return TopK(spec, False, r, len(args) == 2)
        if name == "bits" and len(args) == 1 and int(args[0]) >= 0:
            return Bits(spec, True, int(args[0]))
        if name in CODECS:
            c = CODECS[name](spec, *args)
            if not isinstance(c, Codec):
                raise TypeError(f"codec: the factory of {name!r} returned {c!r}, not a harness.codecs.Codec")
            return c
    except (ValueError, TypeError) as e:
        if name in CODECS:
            raise ValueError(f"codec: {spec!r}: {e}") from None
    raise ValueError(f"codec: unknown or malformed codec {spec!r}; use bf16, fp16, sign, topk:RATIO[:delta] "
                     f"(RATIO < 1 a fraction, >= 1 a count), bits:B{''.join(', ' + k for k in sorted(CODECS))}")


def check(spec: str | None) -> str | None:
    """Pydantic-friendly validator for a ``codec`` hyper-parameter (keeps the text)."""
    parse(spec)
    return spec


__all__ = ["CODECS", "Bits", "Cast", "Codec", "Sign", "TopK", "check", "parse", "register"]
