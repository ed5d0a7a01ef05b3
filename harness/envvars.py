"""The environment variables harness reads, checked like config fields (issue [21]).

Each variable is declared once here (name, kind, range, default, what it does) and read only
through :func:`get`, so a bad value is one line naming the variable and its valid values
(``HARNESS_TIMEOUT_S='abc': expected seconds a rank may make no progress ...``), never a
silent fall-back to the default. An unset or empty variable means the default.
:func:`check_all` reads every variable at once; :func:`harness.config.load` calls it, so a
bad value is named before anything runs, by every command that reads a config. README's
"When things go wrong" table is :func:`markdown_table` (a test keeps the two equal).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass


class EnvError(ValueError):
    """A bad environment variable; the message is one line naming it and its valid values."""


@dataclass(frozen=True)
class Var:
    name: str
    kind: str  # "seconds" (a finite number), "choice"
    default: object
    doc: str  # what it does, for the README table
    expected: str  # what a valid value is, for the error line
    example: str
    low: float = 0.0
    low_inclusive: bool = True
    choices: tuple[str, ...] = ()

    @property
    def valid(self) -> str:
        """The valid values, short (the README table)."""
        if self.kind == "choice":
            return " or ".join(f"`{c}`" for c in self.choices)
        return f"seconds, a finite number {'>=' if self.low_inclusive else '>'} {self.low:g}"

    def parse(self, raw: str | None):
        if raw is None or raw.strip() == "":
            return self.default
        text = raw.strip()
        if self.kind == "choice":
            if text in self.choices:
                return text
        else:
            try:
                v = float(text)
            except ValueError:
                v = math.nan
            if math.isfinite(v) and (v >= self.low if self.low_inclusive else v > self.low):
                return v
        raise EnvError(f"{self.name}={raw!r}: expected {self.expected}, e.g. {self.name}={self.example}")


VARS = {v.name: v for v in [
    Var("HARNESS_TIMEOUT_S", "seconds", 300.0,
        "real backends: seconds a rank may make no progress (in an op, or without a heartbeat) before the job "
        "is aborted with the rank named; 0 turns both checks off",
        "seconds a rank may make no progress (a finite number >= 0; 0: never abort)", "300"),
    Var("HARNESS_PROGRESS_EVERY", "seconds", 30.0,
        "seconds between progress lines when stdout is not a terminal (a log file, SLURM)",
        "seconds between progress lines (a number > 0)", "30", low_inclusive=False),
    Var("HARNESS_CLAIM_STALE_S", "seconds", 900.0,
        "a run's claim.json not touched for this long is taken over (its owner touches it every minute)",
        "seconds (a number > 0)", "900", low_inclusive=False),
    Var("HARNESS_IMPORT_TIMEOUT_S", "seconds", 60.0,
        "seconds one module of a config's imports: may take to import; 0: no limit",
        "seconds one plugin may take to import (a finite number >= 0; 0: no limit)", "60"),
    Var("HARNESS_SUPERVISE", "choice", "1",
        "real backends: 1 runs each rank under a supervisor process that reports signals and deaths; 0 turns "
        "it off", "1 (a supervisor per rank) or 0 (none)", "0", choices=("0", "1")),
    Var("HARNESS_TORCH_BACKEND", "choice", "auto",
        "torch backend: auto (NCCL when CUDA is available, else gloo), gloo, or nccl",
        "auto, gloo or nccl", "gloo", choices=("auto", "gloo", "nccl")),
]}


def get(name: str):
    """The value of ``name`` (its default when unset or empty); :class:`EnvError` if invalid."""
    return VARS[name].parse(os.environ.get(name))


def check_all() -> None:
    """Every variable of :data:`VARS`: the first bad one is an :class:`EnvError`."""
    for name in VARS:
        get(name)


def markdown_table() -> str:
    """The README table: variable, default, valid values, what it does."""
    rows = ["| variable | default | valid values | what it does |", "|---|---|---|---|"]
    for v in VARS.values():
        default = f"{v.default:g}" if isinstance(v.default, float) else v.default
        rows.append(f"| `{v.name}` | `{default}` | {v.valid} | {v.doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # python -m harness.envvars: the README table
    print(markdown_table(), end="")
