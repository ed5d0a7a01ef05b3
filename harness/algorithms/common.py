"""Pieces several algorithms share; they now live in :mod:`harness.algorithms.blocks`."""
from harness.algorithms.blocks import outer_step  # noqa: F401 (kept importable from here)
