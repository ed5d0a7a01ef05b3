"""Moved to :mod:`harness.models.faults` (system models live in ``harness``, so that reading a config never
imports the simulators); this name is that same module."""
import sys

from harness.models import faults as _moved

sys.modules[__name__] = _moved
