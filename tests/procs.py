"""Launch a slow real-backend job or sweep tagged with an environment variable, find its
processes by role, and check how it ended: shared by ``tests/test_process_deaths.py`` and
``benchmarks/kill_soak.py``.

Why a tag: a process that escaped its launcher (an orphan) may have left the launcher's
session and process group; ``HARNESS_SOAK_TAG=<uuid>`` in its environment finds it anyway,
and only processes of this launch (never by name)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAG = "HARNESS_SOAK_TAG"
TASK = {"name": "quadratic", "dim": 4, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}


def real_config(tmp: Path, ranks: int, steps: int = 2000, sleep_s: float = 0.01) -> Path:
    """sync SGD on ``ranks`` workers, each sleeping ``sleep_s`` per step: ~steps * sleep_s seconds."""
    raw = {"name": "soak", "n_workers": ranks, "steps": steps, "eval_every": max(steps // 4, 1), "task": TASK,
           "algorithm": {"name": "sync_sgd", "lr": 0.1},
           "slowdown": {"workers": list(range(ranks)), "model": "constant", "mean_s": sleep_s}}
    path = tmp / "soak.yaml"
    path.write_text(json.dumps(raw))
    return path


def sweep_config(tmp: Path, runs: int = 2, steps: int = 20000) -> Path:
    raw = {"name": "soak", "n_workers": 2, "steps": steps, "eval_every": max(steps // 4, 1), "task": TASK,
           "algorithm": {"name": "sync_sgd", "lr": 0.1}, "grid": {"seed": list(range(runs))}}
    path = tmp / "sweep.yaml"
    path.write_text(json.dumps(raw))
    return path


def mpiexec() -> str | None:
    import shutil

    return shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def command(kind: str, config: Path, out: Path, ranks: int, quiet: bool = True) -> list[str]:
    args = ["-m", "harness.cli", "run" if kind != "sweep" else "sweep", str(config), "--out", str(out)]
    args += ["--quiet"] if quiet else []
    if kind == "mpi":
        return [mpiexec(), "-n", str(ranks), sys.executable, *args, "--backend", "mpi"]
    if kind == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                "-m", *args[1:], "--backend", "torch"]
    return [sys.executable, *args, "--jobs", "2"]


class Job:
    """One tagged launch; ``launcher`` is the Popen of mpiexec, torchrun or harness sweep."""

    def __init__(self, kind: str, tmp: Path, ranks: int = 2, timeout_s: float = 6, stdout=None, env=None, **cfg):
        self.kind, self.tmp, self.ranks, self.tag = kind, Path(tmp), ranks, uuid.uuid4().hex
        self.out = self.tmp / "runs"
        config = sweep_config(self.tmp, **cfg) if kind == "sweep" else real_config(self.tmp, ranks, **cfg)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_TIMEOUT_S": str(timeout_s), TAG: self.tag,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}
        self.err = open(self.tmp / "stderr.txt", "w")
        self.launcher = subprocess.Popen(command(kind, config, self.out, ranks, quiet=stdout is None), cwd=ROOT,
                                         env=env, stdout=stdout or subprocess.DEVNULL, stderr=self.err,
                                         start_new_session=True)

    # -- finding processes -----------------------------------------------------------------
    def tagged(self) -> list[int]:
        """Live (not zombie) processes carrying this launch's tag."""
        mine = f"{TAG}={self.tag}".encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if mine in (d / "environ").read_bytes().split(b"\0") and state(int(d.name)) not in "ZX":
                        pids.append(int(d.name))
                except OSError:
                    pass
        return pids

    def records(self) -> dict[int, dict]:
        recs = {}
        for f in self.out.glob("*/.ranks/*/r*.json"):
            try:
                r = json.loads(f.read_bytes())
                recs[r["rank"]] = r
            except (OSError, ValueError, KeyError):
                pass
        return recs

    def wait_running(self, limit: float = 120) -> dict[int, int]:
        """``{rank: pid}`` (real) or ``{index: worker pid}`` (sweep) once every one is at work."""
        end = time.monotonic() + limit
        while time.monotonic() < end and self.launcher.poll() is None:
            if self.kind == "sweep":
                got = {}
                for i, f in enumerate(sorted(self.out.glob("*/claim.json"))):
                    try:
                        got[i] = json.loads(f.read_text())["pid"]
                    except (OSError, ValueError, KeyError):
                        pass
                if len(got) >= 2:
                    return got
            else:
                recs = self.records()
                if len(recs) == self.ranks and all("after step" in r["where"] for r in recs.values()):
                    return {k: r["pid"] for k, r in recs.items()}
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} job never got going (launcher status {self.launcher.poll()}): "
                           f"{(self.tmp / 'stderr.txt').read_text()[-2000:]}")

    # -- how it ended ----------------------------------------------------------------------
    def finish(self, limit: float = 90) -> tuple[float | None, list[int]]:
        """Wait for the launcher; returns (seconds it took or None if it hung, processes of the
        launch still alive 3 s after its end); kills whatever is left, by pid."""
        t0 = time.monotonic()
        try:
            self.launcher.wait(timeout=limit)
            took = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            took = None
        end = time.monotonic() + 3
        left = self.tagged()
        while left and time.monotonic() < end:
            time.sleep(0.1)
            left = self.tagged()
        for pid in left + [self.launcher.pid]:
            for s in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, s)
                except ProcessLookupError:
                    pass
        self.launcher.wait()
        self.err.close()
        return took, left

    def statuses(self) -> dict[str, dict]:
        got = {}
        for f in self.out.glob("*/run.json"):
            try:
                got[f.parent.name] = json.loads(f.read_text())
            except (OSError, ValueError):
                got[f.parent.name] = {"status": "unreadable"}
        return got

    def stderr(self) -> str:
        return (self.tmp / "stderr.txt").read_text()


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def shm_files() -> set[Path]:
    return set(Path("/dev/shm").glob("mpich_shm_*")) | set(Path("/dev/shm").glob("sem.*"))


def unused_shm(new: set[Path]) -> set[Path]:
    """Of ``new``, the files no live process holds open or maps."""
    held = set()
    for p in Path("/proc").glob("[0-9]*"):
        try:
            held.update(os.readlink(fd) for fd in (p / "fd").iterdir())
        except OSError:
            pass
        try:
            held.update(ln.split(None, 5)[5] for ln in (p / "maps").read_text().splitlines()
                        if "/dev/shm/" in ln and len(ln.split(None, 5)) == 6)
        except OSError:
            pass
    return {f for f in new if f.exists() and str(f) not in held}
