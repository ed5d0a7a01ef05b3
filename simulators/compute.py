"""Moved to :mod:`harness.models.compute` (system models live in ``harness``, so that reading a config never
imports the simulators); this name is that same module."""
import sys

from harness.models import compute as _moved

sys.modules[__name__] = _moved
