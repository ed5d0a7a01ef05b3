"""Finding external tools for marked tests: skip with the reason, or fail under CI=true."""
import os
import shutil

import pytest


def require(tool: str, why: str) -> str:
    """Path of ``tool``; skips (locally) or fails (``CI=true``) with the reason if it is missing."""
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} not found: {why}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{msg} (CI=true: .ci/run must install it)")
    pytest.skip(msg)
