"""Every value that ``harness slurm submit`` writes into an sbatch script, checked first.

An sbatch script is a shell script, and ``#SBATCH`` lines are parsed by sbatch itself (no
shell quoting there), so a value with a newline would start a line of its own (a command, or
another #SBATCH option) [issue 21]. Each check is one line naming the option and its valid form.
"""
from __future__ import annotations

import re

DEFAULT_GRACE_S = 300  # USR1 five minutes before the time limit: a step and a checkpoint fit
MAX_GRACE_S = 65535  # sbatch --signal's largest sig_time


class SlurmError(ValueError):
    """A SLURM submission problem; one line naming the fix."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FORMATS = {  # option -> (pattern, what it must be)
    "job_name": (r"[A-Za-z0-9._+-]{1,200}", "letters, digits, '.', '_', '+' or '-' (at most 200), e.g. my-sweep"),
    "partition": (r"[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*", "a partition name (or a comma-separated list), e.g. cpu"),
    "time": (r"(\d+|\d+:\d\d?|\d+:\d\d?:\d\d?|\d+-\d+|\d+-\d+:\d\d?|\d+-\d+:\d\d?:\d\d?|UNLIMITED|"
             r"unlimited|INFINITE|infinite)",
             "a SLURM time: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. 01:30:00"),
    "mem": (r"\d+[KMGTkmgt]?", "a size in megabytes or with a unit K, M, G or T, e.g. 4G"),
    "mpi": (r"[A-Za-z0-9_]+", "an srun --mpi plugin name, e.g. pmi2 or pmix"),
}
_COUNTS = {"cpus_per_task": 1, "max_concurrent": 1, "nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 0}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def printable(what: str, text: str) -> None:
    bad = _CONTROL.search(text)
    if bad:
        raise SlurmError(f"{what}: {text!r} contains the control character {bad.group()!r} (a newline would start "
                         "a line of its own in the sbatch script); remove it")


def check_args(a) -> None:
    """Every option that is written into the sbatch script, checked before a line is written."""
    for dest, least in _COUNTS.items():
        v = getattr(a, dest, None)
        if v is not None and v < least:
            raise SlurmError(f"{_flag(dest)} {v}: expected a whole number >= {least}")
    for dest, (pattern, what) in _FORMATS.items():
        v = getattr(a, dest, None)
        if v is not None and not re.fullmatch(pattern, v):
            raise SlurmError(f"{_flag(dest)} {v!r}: expected {what}")
    for s in a.sets:  # shlex.quote would keep a newline inside quotes; refused all the same
        printable("--set", s)
    for line in a.sbatch_arg:
        printable("--sbatch-arg", line)
        if not line.startswith("-") or not line.strip():
            raise SlurmError(f"--sbatch-arg {line!r}: expected an sbatch option that starts with '-', "
                             "e.g. --sbatch-arg=--qos=low")


def seconds(time: str) -> int | None:
    """A SLURM time limit in seconds (``None``: unlimited). The form is checked by check_args."""
    if time.lower() in ("unlimited", "infinite"):
        return None
    days, _, rest = time.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH[:MM[:SS]]
        parts += [0] * (3 - len(parts))
        return int(days) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if len(parts) == 1:  # MINUTES
        return parts[0] * 60
    if len(parts) == 2:  # MM:SS
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def grace_for(time: str, grace: int | None) -> int:
    """Seconds before the time limit at which SLURM sends USR1: ``--grace``, or by default
    300 s, or a tenth of ``--time`` when that is less (a 5-minute test job gets 30 s)."""
    limit = seconds(time)
    if grace is None:
        return DEFAULT_GRACE_S if limit is None else max(1, min(DEFAULT_GRACE_S, limit // 10))
    if not 1 <= grace <= MAX_GRACE_S:
        raise SlurmError(f"--grace {grace}: expected seconds in 1..{MAX_GRACE_S} before the time limit, e.g. --grace 300")
    if limit is not None and grace >= limit:
        raise SlurmError(f"--grace {grace}: the signal would come before the job starts (--time {time} is {limit} s); "
                         "give a --grace shorter than --time")
    return grace


__all__ = ["SlurmError", "check_args", "grace_for", "printable", "seconds"]
