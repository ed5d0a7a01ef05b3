"""``harness slurm status DIR``: which runs of the submissions to DIR are done, running,
pending or failed.

Why: after ``harness slurm submit`` a user had ``squeue`` (job and task ids, no run ids) and a
directory of ``run.json`` files (no job ids), and nothing that joined them. Each submission
appends what it submitted to ``DIR/slurm-submissions.jsonl`` (:mod:`harness.slurm`): the job
ids, and for each job the run numbers and run ids (an array task's id is its run number minus
the array's offset). A run's state joins three sources, the first that knows winning:

1. its ``run.json``: ``finished`` is done, ``diverged`` diverged;
2. ``squeue`` (when there is one): its job or array task is ``pending`` or ``running``;
3. its ``run.json`` again (``failed``, or ``running`` while SLURM no longer runs it: ``stopped``,
   killed by a time limit, a node failure or the out-of-memory killer), else ``sacct``'s state
   of the ended job where accounting exists, else ``not started`` (the job ended or was
   cancelled before the run began).

A run submitted several times counts with its latest job.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from harness.slurm_check import SlurmError

SUBMISSIONS = "slurm-submissions.jsonl"
ORDER = ("done", "diverged", "running", "pending", "failed", "stopped", "not started")
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RESV_DEL_HOLD", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}


def submissions(out: Path) -> dict[str, tuple[int, str, str]]:
    """``{run_id: (run number, job id, SLURM key)}`` from ``out``'s submissions, latest job winning;
    the key is what squeue and sacct call the run's job (``123_4`` for an array task)."""
    path = out / SUBMISSIONS
    if not path.is_file():
        raise SlurmError(f"DIR: {str(out)!r} has no {SUBMISSIONS}: harness slurm submit --out {out} writes it (older "
                         f"submissions did not); `harness report {out}` shows the runs there")
    runs = {}
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            for job in json.loads(line)["jobs"]:
                for number, run_id in job["runs"].items():
                    key = f"{job['id']}_{int(number) - job['offset']}" if job["kind"] == "array" else str(job["id"])
                    runs[run_id] = (int(number), str(job["id"]), key)
        except (ValueError, KeyError, TypeError) as e:
            raise SlurmError(f"{path}:{k}: not a submission record ({type(e).__name__}: {e}); remove that line "
                             "(its runs are then not listed)") from None
    return runs


def _tool(name: str, argv: list[str]) -> str | None:
    """stdout of a SLURM client, or None when there is none or it fails (no accounting: sacct)."""
    exe = shutil.which(name)
    if not exe:
        return None
    try:
        res = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def queue() -> dict[str, str] | None:
    """``{job or array task id: state}`` of the jobs in the queue (``squeue -r``: one line per
    array task), or None without squeue."""
    text = _tool("squeue", ["-h", "-r", "-o", "%i|%T"])
    if text is None:
        return None
    return dict(line.split("|", 1) for line in text.splitlines() if "|" in line)


def accounting(job_ids: list[str]) -> dict[str, str]:
    """``{job or array task id: "STATE (exit N:S)"}`` from sacct, where accounting exists."""
    text = _tool("sacct", ["-n", "-X", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode"]) if job_ids else None
    out = {}
    for line in (text or "").splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            out[parts[0]] = f"{parts[1].split()[0]} (exit {parts[2]})"
    return out


def state_of(run_json: str | None, queued: str | None, acct: str | None) -> tuple[str, str]:
    """(state, note) of one run, from its run.json status, its queue state and its sacct state."""
    if run_json == "finished":
        return "done", ""
    if run_json == "diverged":
        return "diverged", "see its run.json"
    if queued in QUEUED:
        return "pending", queued.lower() if queued != "PENDING" else ""
    if queued in RUNNING:
        return "running", ""
    if run_json == "failed":
        return "failed", "its run.json says why"
    if run_json == "running":
        return "stopped", f"SLURM: {acct}" if acct else "run.json says running, but SLURM no longer runs it"
    if run_json == "damaged":
        return "failed", "damaged run.json or metrics"
    return "not started", f"SLURM: {acct}" if acct else "not in the queue"


def status(out: Path, show_all: bool = False) -> int:
    from harness.runinfo import run_status

    runs = submissions(out)
    jobs = sorted({job for _, job, _ in runs.values()}, key=lambda j: (len(j), j))
    q = queue()
    acct = accounting(jobs)
    rows = []
    for run_id, (number, job, key) in sorted(runs.items(), key=lambda kv: kv[1][0]):
        queued = None if q is None else q.get(key)
        rows.append((number, run_id, *state_of(run_status(out / run_id), queued, acct.get(key)), key))
    counts = {s: sum(r[2] == s for r in rows) for s in ORDER}
    print(f"{len(rows)} run(s) submitted to {out} in job(s) {', '.join(jobs)}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if q is None:
        print("harness: note: squeue not found: states come from run.json only (pending and not started look alike)",
              file=sys.stderr)
    shown = [r for r in rows if show_all or r[2] != "done"]
    if shown:
        width = max(len("run id"), *(len(r[1]) for r in shown))
        print(f"{'#':>5}  {'run id':<{width}}  {'state':<11}  {'job':<12}  note")
        for number, run_id, state, note, key in shown:
            print(f"{number:>5}  {run_id:<{width}}  {state:<11}  {key:<12}  {note}".rstrip())
    return 0


__all__ = ["ORDER", "SUBMISSIONS", "accounting", "queue", "state_of", "status", "submissions"]
