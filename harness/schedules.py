"""Learning-rate schedules: a plain number or a spec, turned into ``lr(t)`` per step.

An algorithm annotates its learning rate as :data:`LR` and calls ``make(lr, ctx.steps)``:

    @register("my_method")
    def my_method(ctx, x, *, lr: LR = 0.1):
        lr_at = schedules.make(lr, ctx.steps)     # lr_at(t) for t = 0, 1, ..., steps - 1
        ...  x = x - lr_at(t) * g

(An optimizer spec, ``inner: Optimizer = Optimizer(lr=0.1)`` from ``harness.transforms``,
does this in ``inner.build(ctx.steps)``.)

In a config, ``lr`` is a number (constant) or a mapping with a ``name``:

=========  =======================================  ==========================================
name       lr(t), T = total - warmup, s = t - warmup   extra keys (defaults)
=========  =======================================  ==========================================
constant   lr                                       --
step       lr * decay ** (milestones passed by s)   ``decay`` (0.1), ``milestones`` ([]) or
                                                    ``every`` (a milestone every k steps)
cosine     final + (lr - final)(1 + cos(pi s/T))/2  ``final`` (0.0)
linear     lr + (final - lr) s / T                  ``final`` (0.0)
=========  =======================================  ==========================================

Every schedule takes ``lr`` (the peak), ``warmup`` (0: a linear ramp ``lr(s=0) (t+1)/warmup``
over the first ``warmup`` steps, after which the schedule runs over the remaining steps)
and ``total`` (default: the run's ``steps``). ``t`` counts completed local steps from 0.

A validated spec is stored as canonical JSON text (sorted keys, defaults filled), e.g.
``{"decay": 0.1, "every": null, "lr": 0.1, "milestones": [100], "name": "step", ...}``,
so the ``hp.lr`` column of the results table stays hashable; that text is accepted as
input too. A number stays a number.
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Callable

from pydantic import BeforeValidator

COMMON = {"lr": None, "warmup": 0, "total": None}
EXTRA = {"constant": {}, "step": {"decay": 0.1, "milestones": [], "every": None},
         "cosine": {"final": 0.0}, "linear": {"final": 0.0}}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rate(v, what: str, msg: str = "{what} must be >= 0 and finite, got {v!r}") -> float | int:
    """A learning rate (or a schedule's ``final``/``decay``): a finite number >= 0 (YAML
    reads ``1e-3`` as text; numeric text is accepted)."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if not _number(v) or not math.isfinite(v) or v < 0:
        raise ValueError(msg.format(what=what, v=v))
    return v  # as given (an int stays an int: the canonical text, hence run ids, do not change)


def _count(v, what: str, low: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"{what} must be a whole number >= {low}, got {v!r}")
    return v


def canonical(v: float | str | dict) -> float | str:
    """Check an ``lr`` value: numbers pass; a spec (mapping or its JSON text) becomes
    canonical JSON text. Raises ValueError naming the problem (never TypeError): rates are
    finite and >= 0, counts are whole numbers."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except (ValueError, RecursionError):
            raise ValueError(f"expected a number or a schedule spec such as {{name: cosine, lr: 0.1}}, got {v!r}") from None
    if _number(v):
        return float(_rate(v, "learning rate"))
    if not isinstance(v, dict):
        raise ValueError(f"expected a number or a schedule spec mapping such as {{name: cosine, lr: 0.1}}, "
                         f"got {type(v).__name__}")
    name = v.get("name")
    if not isinstance(name, str) or name not in EXTRA:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(EXTRA)}")
    known = {**COMMON, **EXTRA[name]}
    unknown = sorted(str(k) for k in set(v) - set(known) - {"name"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for schedule {name!r}; known: {sorted(known)}")
    out = {**known, **v}
    out["lr"] = _rate(out["lr"], name, "schedule {what!r} needs a peak lr >= 0 (a finite number), got lr={v!r}")
    _count(out["warmup"], f"schedule {name!r}: warmup", 0)
    if out["total"] is not None:
        _count(out["total"], f"schedule {name!r}: total", 1)
    if out["total"] is not None and out["total"] <= out["warmup"]:
        raise ValueError(f"schedule {name!r}: need 0 <= warmup < total, got warmup={out['warmup']}, total={out['total']}")
    if "final" in out:
        out["final"] = _rate(out["final"], f"schedule {name!r}: final")
    if name == "step":
        out["decay"] = _rate(out["decay"], "schedule 'step': decay")
        if not isinstance(out["milestones"], list):
            raise ValueError(f"schedule 'step': milestones must be a list of steps, got {out['milestones']!r}")
        for m in out["milestones"]:
            _count(m, "schedule 'step': every milestone", 0)
        if out["every"] is not None:
            _count(out["every"], "schedule 'step': every", 1)
    return json.dumps(out, sort_keys=True)


# Before (not after) validation: canonical sees the value as written and names what is wrong
# in one message, instead of one error per member of the union.
LR = Annotated[float | str | dict, BeforeValidator(canonical)]
"""Annotation for a learning-rate hyper-parameter: a number or a schedule spec."""


def spec(name: str, **kw) -> str:
    """Canonical text of a schedule spec, e.g. for a default: ``spec("cosine", lr=0.1)``."""
    return canonical({"name": name, **kw})


def make(lr: float | str | dict, steps: int) -> Callable[[int], float]:
    """``lr(t)`` for step ``t`` (0-based) of a run of ``steps`` steps."""
    v = canonical(lr)
    if isinstance(v, float):
        return lambda t: v
    s = json.loads(v)
    peak, warm = float(s["lr"]), int(s["warmup"])
    span = max((s["total"] or steps) - warm, 1)
    name = s["name"]

    def base(k: int) -> float:  # k = steps since the end of the warm-up
        if name == "constant":
            return peak
        if name == "step":
            passed = k // s["every"] if s["every"] else sum(k >= m for m in s["milestones"])
            return peak * s["decay"] ** passed
        frac = min(k / span, 1.0)
        if name == "cosine":
            return s["final"] + (peak - s["final"]) * 0.5 * (1 + math.cos(math.pi * frac))
        return peak + (s["final"] - peak) * frac  # linear

    def at(t: int) -> float:
        return base(0) * (t + 1) / warm if t < warm else base(t - warm)

    return at


__all__ = ["LR", "canonical", "make", "spec"]
