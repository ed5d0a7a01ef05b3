"""Errors and warnings of the results package.

``ResultsError`` is raised when a request cannot be answered at all (no runs under a
directory, a run directory that cannot be read); its message is one line meant to be
printed as is. ``ResultsWarning`` reports one bad input (a corrupt parquet, a missing
metrics file, a schema mismatch) that was skipped while the rest still loaded; its
message names the file.
"""
from __future__ import annotations


class ResultsError(Exception):
    """A results request that cannot be answered; the message is one printable line."""


class ResultsWarning(UserWarning):
    """One skipped or suspicious input file; the message starts with the file's path."""
