"""Checkpoints on real ranks (issue [27]): every rank saves its own driver, the ranks agree on when.

A lock-step method's ranks are at the same step at every ``Checkpoint`` op, so each step is a
candidate; what needs agreeing is *whether* to save (wall-clock intervals and signals differ per
rank). Every :data:`AGREE_EVERY` steps (and at ``checkpoint.every_steps`` multiples) the workers
all-reduce two flags, "due" and "stop", on the control path: not counted in bytes, and off the
clock like the evaluation gather. A save writes ``checkpoint/step-<s>/rank-<r>.pt`` on every rank
(the driver pickled whole, as the simulators are: :mod:`harness.checkpoint`), then after a barrier
rank 0 writes ``checkpoint/latest.json`` (the step) and removes older steps, so a kill at any
moment leaves one complete checkpoint. The run directory must be on a file system every rank sees
(as for the results). Resuming needs the same number of ranks; the clock continues from the saved
time. One-sided windows live in the transport and are not saved: such methods restart from 0.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from harness import checkpoint

AGREE_EVERY = 10  # steps between the ranks' agreements on saving (a signal waits at most this long)
LATEST = "latest.json"
# what a driver holds that is live or rebuilt: never saved
TRANSIENT = ("tr", "dog", "handlers", "clock", "policy", "on_op", "ck_dir", "resumed")


class CheckpointMixin:
    policy = None
    ck_dir: Path | None = None
    resumed = None

    def arm_checkpoints(self, run_dir: Path, spec) -> None:
        """Save into ``run_dir/checkpoint`` per ``spec``; resume from there where it matches."""
        from harness import algorithms

        if self.server_alg:
            return  # asynchronous: no quiescent step
        if "onesided" in algorithms.requirements(self.cfg.algorithm["name"], self.params):
            return
        self.ck_dir = Path(run_dir) / "checkpoint"
        self.policy = checkpoint.Policy(spec, self.ck_dir, checkpoint.meta(self.cfg))

    def _ck_root(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in TRANSIENT}

    # -- resuming -------------------------------------------------------------------------
    def ck_restore(self):
        """The carry to resume from (the driver's state restored), or None (start at 0)."""
        if self.policy is None:
            return None
        try:
            latest = json.loads((self.ck_dir / LATEST).read_text())
        except (OSError, ValueError):
            return None
        why = checkpoint.mismatch(latest, self.policy.meta)
        if why is None and latest.get("ranks") != self.tr.size:
            why = f"it was saved by {latest.get('ranks')} ranks, this launch has {self.tr.size}"
        try:
            payload = None if why else checkpoint.read(self.ck_dir / f"step-{latest['step']}" / f"rank-{self.tr.rank}.pt")
            if payload is None:
                why = why or "a rank's file is missing"
            else:
                got = checkpoint.loads(payload["state"], {"drv": self._ck_root(), "carry": None})
        except checkpoint.CheckpointError as e:
            why = str(e)
        ok = self.tr.allreduce_sum(torch.tensor([0.0 if why else 1.0]))  # every rank resumes, or none
        if int(ok.item()) != self.tr.size:
            if self.tr.rank == 0:
                checkpoint.say(f"harness: note: run {self.cfg.run_id}: its checkpoint is not used "
                               f"({why or 'another rank cannot read its part'}); starting from step 0")
            return None
        vars(self).update(got["drv"])
        self.resumed = payload
        if self.tr.rank == 0:
            checkpoint.say(f"harness: note: run {self.cfg.run_id}: resumed from its checkpoint at step {latest['step']}")
        return got["carry"]

    # -- saving ---------------------------------------------------------------------------
    def _checkpoint(self, op):
        p = self.policy
        if p is None or not p.on:
            return None
        checkpoint.arm()  # from the first step on, SIGTERM/SIGUSR1 stop this run at an agreed step
        sp = p.spec
        by_steps = bool(sp.every_steps and op.step % sp.every_steps == 0)
        if not by_steps and op.step % AGREE_EVERY:
            return None
        with self.clock.paused():  # control traffic, like the evaluation gather: not training time
            local = p.due(op.step, quiescent=True)
            flags = self.tr.allreduce_sum(torch.tensor([float(local or by_steps), float(checkpoint.requested())]))
            due, stop = flags[0].item() > 0, flags[1].item() > 0
            if due or stop:
                self._ck_save(op.step, op.carry)
                p.reset()
        if stop:
            raise checkpoint.Preempted(op.step)
        return None

    def _ck_save(self, step: int, carry) -> None:
        d = self.ck_dir / f"step-{step}"
        state = checkpoint.dumps({"drv": self._ck_root(), "carry": carry})  # a CheckpointError fails the run
        checkpoint.write(d / f"rank-{self.tr.rank}.pt", {"step": step, "state": state, "clock": self.clock.now()})
        self.tr.barrier()  # every rank's file is complete before the step is named
        if self.tr.rank == 0:
            meta = {**self.policy.meta, "step": step, "ranks": self.tr.size}
            tmp = self.ck_dir / f".{LATEST}.tmp"
            tmp.write_text(json.dumps(meta))
            tmp.replace(self.ck_dir / LATEST)
            for old in self.ck_dir.glob("step-*"):
                if old != d:
                    shutil.rmtree(old, ignore_errors=True)
