"""A throw-away single-node SLURM cluster on localhost, for tests.

``LocalSlurm(tmpdir)`` starts its own ``munged``, ``slurmctld`` and ``slurmd``
(all in the foreground, as ``subprocess.Popen`` children) with every socket,
pid file, spool/state directory, log and config file inside ``tmpdir``, on TCP
ports picked free at start-up.  It never touches ``/etc/slurm``, the system
munge socket or any daemon it did not start:

* every process it starts gets the environment variable
  ``LOCALSLURM_INSTANCE=<random token>``; the client environment ``env``
  carries it too, so batch jobs (``sbatch`` exports the submitter's
  environment) and the ``slurmstepd`` processes that ``slurmd`` forks inherit
  it.  ``stop()`` cancels the jobs, terminates the three daemons it holds
  ``Popen`` handles for, and finally kills any process whose
  ``/proc/<pid>/environ`` still carries *this* token (stray steps/jobs) --
  nothing else.  A small watchdog process does the same sweep if the test
  process dies without calling ``stop()`` (SIGKILL, CI timeout).
* the cluster needs root (``slurmd`` must run job steps as the submitting
  user and the config uses ``SlurmUser=root``); without root it is skipped.

Use it as a context manager::

    with LocalSlurm(tmp_path) as cluster:
        job = cluster.sbatch(script)
        states = cluster.wait(job, timeout=60)      # {"12": "COMPLETED"}

or through the ``slurm_cluster`` pytest fixture defined at the bottom
(``from tests.slurm_cluster import slurm_cluster`` in a test module, or
``pytest_plugins = ["tests.slurm_cluster"]`` in the *root* conftest.py; as a
plugin, tests using the fixture also get the ``slurm`` marker automatically --
otherwise set ``pytestmark = pytest.mark.slurm``).  When ``slurmctld``/``slurmd``/``munged`` are missing
(or we are not root) the fixture skips with the reason -- except with
``CI=true`` in the environment, where it fails instead, so that CI cannot
silently skip the SLURM tests.

See docs/slurm-cluster-notes.md for the configuration that worked, pitfalls
and timings (Debian 12, slurm-wlm 22.05.8, munge 0.5.15).
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

import pytest

__all__ = ["LocalSlurm", "SlurmError", "slurm_cluster", "missing_requirements",
           "require_slurm", "TERMINAL_STATES"]

MARKER_VAR = "LOCALSLURM_INSTANCE"

# Job states after which a job will not run again by itself.
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED",
})

_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
# AF_UNIX path limit is 108 bytes; slurmd puts "<spool>/<node>_<job>.<step>"
# sockets in its spool dir, munged its socket in <tmp>/munge.
_MAX_TMPDIR_LEN = 70


# Runs as a separate process (python -c) for the lifetime of a cluster: if the
# test process dies without stop() (SIGKILL, CI timeout), it kills every process
# carrying this cluster's marker -- daemons *and* job processes.
_WATCHDOG = r"""
import os, signal, sys, time
parent, needle = int(sys.argv[1]), ("%s=" + sys.argv[2]).encode()
def marked():
    me, out = os.getpid(), []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me:
            try:
                with open("/proc/%%s/environ" %% d, "rb") as f:
                    if needle in f.read().split(b"\0"):
                        out.append(int(d))
            except OSError:
                pass
    return out
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))   # stop() ends us this way
while os.getppid() == parent:
    time.sleep(0.5)
for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
    for pid in marked():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    time.sleep(2)
""" % MARKER_VAR


class SlurmError(RuntimeError):
    """Start-up failure, failed client command or wait timeout (message includes logs)."""


def _which(name: str) -> str | None:
    # Daemons live in /usr/sbin, which is not on every PATH (e.g. sudo-less shells).
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def missing_requirements() -> str | None:
    """Why a local cluster cannot be started here, or None if it can."""
    missing = [n for n in _DAEMONS + _CLIENTS + ("munge", "unmunge") if _which(n) is None]
    if missing:
        return ("SLURM/munge programs not found: " + ", ".join(missing)
                + " (apt-get install -y slurm-wlm munge)")
    if os.geteuid() != 0:
        return "LocalSlurm needs root (slurmd runs job steps as the submitting user)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_scontrol_records(text: str) -> list[dict[str, str]]:
    """Parse ``scontrol -o show job`` output: one record per line, ``Key=Value`` pairs."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "=" not in line:
            continue
        rec = {}
        # Values may contain spaces (Command=..., Reason=...); a key starts
        # after a space and is followed by '='.
        for m in re.finditer(r"(?:^| )([A-Za-z][\w:/.]*)=(.*?)(?= [A-Za-z][\w:/.]*=|$)", line):
            rec.setdefault(m.group(1), m.group(2))
        records.append(rec)
    return records


def _record_key(rec: dict[str, str]) -> str:
    task = rec.get("ArrayTaskId")
    if task and rec.get("ArrayJobId"):
        return f"{rec['ArrayJobId']}_{task}"
    return rec.get("JobId", "?")


class LocalSlurm:
    """Single-node SLURM cluster (own munged + slurmctld + slurmd) living in ``tmpdir``.

    Parameters
    ----------
    tmpdir:      directory for everything (created; should be short, < 70 chars).
    cpus:        CPUs declared for the node; default ``max(real CPUs, min_cpus)``.
                 ``SlurmdParameters=config_overrides`` makes slurmd accept more
                 than the real count, so 2-task tests also run on 1-CPU machines.
    min_cpus:    see ``cpus`` (default 2).
    partition:   name of the (default) partition, ``debug``.
    start_timeout: seconds to wait for the node to become idle.
    use_system_munge_key: copy ``/etc/munge/munge.key`` instead of generating
                 a fresh 1024-byte random key (either way the key used is
                 ``<tmpdir>/munge/munge.key``, root-owned, mode 0600).
    debug:       SlurmctldDebug/SlurmdDebug level.
    extra_conf:  lines appended to slurm.conf (e.g. another PartitionName=...).

    Attributes after ``start()``: ``env`` (client environment: ``SLURM_CONF``
    and the instance marker; pass to every sbatch/srun/squeue/scontrol call),
    ``conf_path``, ``node_name``, ``partition``, ``cpus``, ``logs`` (name ->
    log path), ``munge_socket``, ``jobcomp_path``, ``startup_seconds``.
    """

    def __init__(self, tmpdir: os.PathLike | str, *, cpus: int | None = None,
                 min_cpus: int = 2, partition: str = "debug",
                 start_timeout: float = 60.0, use_system_munge_key: bool = False,
                 debug: str = "info", extra_conf: str = "") -> None:
        self.root = Path(tmpdir).resolve()
        self.partition = partition
        self.start_timeout = start_timeout
        self.use_system_munge_key = use_system_munge_key
        self.debug = debug
        self.extra_conf = extra_conf.strip() + "\n" if extra_conf.strip() else ""
        # A requeued job may only start again once its old credential has expired (SLURM
        # holds it that long; the default 120 s would make requeue tests slow). Forcing an
        # earlier start races: slurmd refuses the launch ("Job credential revoked").
        self.cred_expire = 10
        self._want_cpus = cpus
        self._min_cpus = min_cpus
        self.token = secrets.token_hex(8)
        self.node_name = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self._logfiles: list = []
        self._watchdog: subprocess.Popen | None = None
        self.logs: dict[str, Path] = {}
        self.env: dict[str, str] = {}
        self.munge_key_source = ""
        self.startup_seconds: float | None = None
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------------ setup
    def _paths(self) -> None:
        r = self.root
        self.conf_dir = r / "etc"
        self.conf_path = self.conf_dir / "slurm.conf"
        self.munge_dir = r / "munge"
        self.munge_key = self.munge_dir / "munge.key"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.state_dir = r / "state"
        self.spool_dir = r / "spool"
        self.log_dir = r / "log"
        self.jobcomp_path = self.log_dir / "jobcomp.txt"
        for d in (self.conf_dir, self.munge_dir, self.state_dir, self.spool_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.munge_dir, 0o700)
        for name in ("munged", "slurmctld", "slurmd"):
            self.logs[name] = self.log_dir / f"{name}.log"
            self.logs[name + ".out"] = self.log_dir / f"{name}.out"

    def _make_munge_key(self) -> None:
        system_key = Path("/etc/munge/munge.key")
        if self.use_system_munge_key and system_key.is_file():
            shutil.copyfile(system_key, self.munge_key)
            self.munge_key_source = f"copied {system_key}"
        else:
            # munged wants >= 32 bytes; 1024 random bytes is what mungekey makes.
            self.munge_key.write_bytes(secrets.token_bytes(1024))
            self.munge_key_source = "generated 1024 random bytes"
        os.chmod(self.munge_key, 0o600)  # munged refuses group/other-readable keys

    def _node_hw(self) -> tuple[int, int]:
        """(cpus, RealMemory MB) as reported by ``slurmd -C`` (fallback: os/proc)."""
        cpus, mem = os.cpu_count() or 1, 1024
        try:
            out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True,
                                 timeout=20).stdout
            m = re.search(r"\bCPUs=(\d+)", out)
            if m:
                cpus = int(m.group(1))
            m = re.search(r"\bRealMemory=(\d+)", out)
            if m:
                mem = int(m.group(1))
        except (OSError, subprocess.SubprocessError):
            pass
        return cpus, mem

    def _write_conf(self) -> None:
        real_cpus, real_mem = self._node_hw()
        self.real_cpus = real_cpus
        self.cpus = self._want_cpus or max(real_cpus, self._min_cpus)
        # Memory is not a consumable resource here (CR_CPU); declare half of it.
        self.real_memory = max(256, real_mem // 2)
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        have_pmi2 = any(Path(d, "mpi_pmi2.so").exists() for d in self._plugin_dirs())
        self.mpi_default = "pmi2" if have_pmi2 else "none"
        (self.conf_dir / "plugstack.conf").write_text("")  # ignore /etc/slurm/plugstack.conf.d
        (self.conf_dir / "cgroup.conf").write_text(
            "# Nothing here uses cgroups (proctrack/linuxproc, task/none,\n"
            "# jobacct_gather/none); keep slurmd from mounting/creating any.\n"
            "CgroupAutomount=no\n"
            "ConstrainCores=no\n"
            "ConstrainRAMSpace=no\n"
            "ConstrainDevices=no\n"
        )
        r = self.root
        conf = f"""\
# Generated by tests/slurm_cluster.py (LocalSlurm) -- single node, root, no slurmdbd.
ClusterName=localslurm
MailProg=/bin/true
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}
StateSaveLocation={self.state_dir}
SlurmdSpoolDir={self.spool_dir}
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={self.logs['slurmctld']}
SlurmdLogFile={self.logs['slurmd']}
SlurmctldDebug={self.debug}
SlurmdDebug={self.debug}
PlugStackConfig={self.conf_dir / 'plugstack.conf'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp_path}
SwitchType=switch/none
MpiDefault={self.mpi_default}
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=2
InactiveLimit=0
MessageTimeout=10
SlurmdTimeout=300
Waittime=0
TmpFS={r}
NodeName={self.node_name} NodeAddr=127.0.0.1 NodeHostname={self.node_name} CPUs={self.cpus} RealMemory={self.real_memory} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP
{self.extra_conf}"""
        self.conf_path.write_text(conf)

    @staticmethod
    def _plugin_dirs() -> list[str]:
        return [d for d in ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
                            "/usr/lib64/slurm", "/usr/lib/slurm", "/usr/local/lib/slurm")
                if os.path.isdir(d)]

    def _daemon_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf_path)
        env[MARKER_VAR] = self.token
        # Don't let a surrounding allocation leak into our daemons/clients.
        for k in list(env):
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_")) and k != "SLURM_CONF":
                del env[k]
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.logs[name + ".out"], "ab")
        self._logfiles.append(out)
        self.procs[name] = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=self._daemon_env(), cwd=self.root, start_new_session=True)

    def _wait_for(self, what: str, pred, timeout: float, interval: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmError(f"{name} exited with {p.returncode} while waiting for {what}\n"
                                     + self.diagnostics())
            if pred():
                return
            if time.monotonic() > deadline:
                raise SlurmError(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                 + self.diagnostics())
            time.sleep(interval)

    def start(self) -> "LocalSlurm":
        if self._started:
            return self
        why = missing_requirements()
        if why:
            raise SlurmError(why)
        if len(str(self.root)) > _MAX_TMPDIR_LEN:
            raise SlurmError(f"tmpdir path too long for AF_UNIX sockets ({len(str(self.root))} > "
                             f"{_MAX_TMPDIR_LEN} chars): {self.root}")
        self._started = True
        _LIVE.add(self)
        t0 = time.monotonic()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(os.getpid()), self.token],
                stdin=subprocess.DEVNULL, start_new_session=True)
            self._paths()
            self._make_munge_key()
            self._write_conf()
            self.env = self._daemon_env()

            # munged: --force because pytest tmp dirs are 0700 and munged
            # otherwise refuses a socket dir that is not world-executable.
            self._spawn("munged", [
                _which("munged"), "--foreground", "--force",
                f"--key-file={self.munge_key}", f"--socket={self.munge_socket}",
                f"--pid-file={self.munge_dir / 'munged.pid'}",
                f"--log-file={self.logs['munged']}",
                f"--seed-file={self.munge_dir / 'munged.seed'}"])
            self._wait_for("munged socket", self._munge_ok, 20)

            for attempt in range(1, 4):
                try:
                    self._start_slurm_daemons()
                    break
                except SlurmError:
                    # Ports are picked free but another process (e.g. a parallel
                    # test session's cluster) may grab one before we bind it.
                    if attempt == 3 or not self._port_clash():
                        raise
                    self._retire_slurm_daemons(attempt)
                    self._write_conf()  # fresh ports
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start_slurm_daemons(self) -> None:
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i",
                                  "-f", str(self.conf_path)])
        self._wait_for("slurmctld", lambda: self._cmd_ok(["scontrol", "ping"], "UP"), 30)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf_path),
                               "-N", self.node_name])
        self._wait_for(f"node {self.node_name} idle in sinfo", self._node_idle,
                       self.start_timeout, 0.3)

    def _port_clash(self) -> bool:
        for name in ("slurmctld", "slurmd"):
            for key in (name, name + ".out"):
                path = self.logs[key]
                if path.exists() and "Address already in use" in path.read_text(errors="replace"):
                    return True
        return False

    def _retire_slurm_daemons(self, attempt: int) -> None:
        for name in ("slurmd", "slurmctld"):
            p = self.procs.pop(name, None)
            if p is not None:
                self._stop_proc(p, timeout=15)
            for key in (name, name + ".out"):
                path = self.logs[key]
                if path.exists():
                    path.rename(path.with_name(f"{path.name}.attempt{attempt}"))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir()

    def _munge_ok(self) -> bool:
        if not self.munge_socket.exists():
            return False
        try:
            enc = subprocess.run([_which("munge"), "-n", "-S", str(self.munge_socket)],
                                 capture_output=True, timeout=5)
            if enc.returncode:
                return False
            dec = subprocess.run([_which("unmunge"), "-S", str(self.munge_socket)],
                                 input=enc.stdout, capture_output=True, timeout=5)
            return dec.returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def _cmd_ok(self, argv: list[str], needle: str) -> bool:
        try:
            p = subprocess.run([_which(argv[0])] + argv[1:], env=self.env, capture_output=True,
                               text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
        return p.returncode == 0 and needle in p.stdout

    def node_state(self) -> str:
        p = self.run(["sinfo", "-h", "-N", "-n", self.node_name, "-o", "%T"], check=False)
        return p.stdout.strip()

    def _node_idle(self) -> bool:
        try:
            return self.node_state().rstrip("*").lower() == "idle"
        except (OSError, subprocess.SubprocessError):
            return False

    # ---------------------------------------------------------------- clients
    def run(self, argv: list[str], *, check: bool = True, timeout: float = 30,
            **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client (``argv[0]`` e.g. "squeue") against this cluster."""
        exe = _which(argv[0]) or argv[0]
        env = kw.pop("env", None) or self.env
        p = subprocess.run([exe] + list(argv[1:]), env=env, capture_output=True, text=True,
                           timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
        return p

    def sbatch(self, script_path: os.PathLike | str, *args: str, cwd=None) -> int:
        """Submit ``script_path`` (extra sbatch options in ``args``); return the job id."""
        p = self.run(["sbatch", "--parsable", *args, str(script_path)],
                     cwd=cwd or Path(script_path).resolve().parent)
        return int(p.stdout.strip().split(";")[0].split("_")[0])

    def job_records(self, job_id: int | str) -> list[dict[str, str]]:
        """``scontrol -o show job`` records (one per array task / pending array chunk).

        Empty list once the job has been purged (after MinJobAge=600 s)."""
        p = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        if p.returncode != 0:
            if "Invalid job id" in (p.stderr + p.stdout):
                return []
            raise SlurmError(f"scontrol show job {job_id} failed: {p.stderr}")
        return _parse_scontrol_records(p.stdout)

    def job_states(self, job_id: int | str) -> dict[str, str]:
        """{"<id>" or "<id>_<task>": JobState} -- falls back to the jobcomp file."""
        recs = self.job_records(job_id)
        if not recs:
            recs = self.jobcomp_records(job_id)
        return {_record_key(r): r.get("JobState", "?") for r in recs}

    def jobcomp_records(self, job_id: int | str | None = None) -> list[dict[str, str]]:
        """Records from the jobcomp/filetxt log (one line per finished job/task,
        including one per requeue: a requeued run is logged as REQUEUED)."""
        if not self.jobcomp_path.exists():
            return []
        recs = _parse_scontrol_records(self.jobcomp_path.read_text())
        if job_id is None:
            return recs
        jid = str(job_id)
        return [r for r in recs if r.get("JobId") == jid or r.get("ArrayJobId") == jid]

    def wait_for_state(self, job_id: int | str, states: Iterable[str],
                       timeout: float = 60, poll: float = 0.3) -> dict[str, str]:
        """Wait until every record of ``job_id`` is in one of ``states``."""
        want = set(states)
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            last = self.job_states(job_id)
            if last and all(s in want for s in last.values()):
                return last
            if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is not None:
                break
            time.sleep(poll)
        raise SlurmError(f"job {job_id}: wanted {sorted(want)}, last seen {last} "
                         f"after {timeout:.0f}s\n" + self._job_diag(job_id))

    def wait(self, job_id: int | str, timeout: float = 60, poll: float = 0.3) -> dict[str, str]:
        """Wait until the job (every task, for an array) reached a terminal state.

        Returns {"<id>": state} or, for arrays, {"<id>_<task>": state}.
        Raises SlurmError (with squeue/scontrol output and daemon logs) on timeout.
        Note: a pending array chunk is one record ("<id>_2-3%2") until its
        tasks are split off, so only count keys once all are terminal."""
        return self.wait_for_state(job_id, TERMINAL_STATES, timeout, poll)

    def requeue(self, job_id: int | str, *, release: bool = True, timeout: float = 30) -> None:
        """``scontrol requeue`` a running job (needs JobRequeue=1 or ``sbatch --requeue``).

        SLURM keeps a requeued job PENDING until its old credential has expired
        (``cred_expire``, set to 10 s in this cluster's config instead of the
        default 120 s), then restarts it; the run sees SLURM_RESTART_COUNT=1.
        Forcing an earlier start (``StartTime=now``) races with the revoked
        credential: slurmd refuses the launch and the job ends FAILED ("Job
        credential revoked"), so we never do. With ``release`` (default) this
        waits until the job is queued or running again."""
        self.run(["scontrol", "requeue", str(job_id)])
        if not release:
            return
        self.wait_for_state(job_id, {"PENDING", "RUNNING", *TERMINAL_STATES}, timeout, poll=0.1)

    def cancel(self, *job_ids: int | str) -> None:
        if job_ids:
            self.run(["scancel", *map(str, job_ids)], check=False)

    def job_ids(self) -> list[str]:
        p = self.run(["squeue", "-h", "-o", "%i"], check=False)
        return p.stdout.split()

    # ------------------------------------------------------------ diagnostics
    def _tail(self, path: Path, n: int = 40) -> str:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return "(missing)"
        return "\n".join(lines[-n:])

    def diagnostics(self, n: int = 40) -> str:
        parts = [f"LocalSlurm root={self.root} conf={getattr(self, 'conf_path', '?')}"]
        for name, p in self.procs.items():
            parts.append(f"{name}: pid={p.pid} returncode={p.poll()}")
        for name, path in self.logs.items():
            if path.exists() and path.stat().st_size:
                parts.append(f"----- {path.name} (last {n} lines) -----\n{self._tail(path, n)}")
        return "\n".join(parts)

    def _job_diag(self, job_id) -> str:
        out = []
        for argv in (["squeue", "-a"], ["scontrol", "show", "job", str(job_id)], ["sinfo", "-N", "-l"]):
            try:
                p = self.run(argv, check=False, timeout=10)
                out.append(f"$ {' '.join(argv)}\n{p.stdout}{p.stderr}")
            except Exception as e:  # noqa: BLE001 - diagnostics only
                out.append(f"$ {' '.join(argv)}: {e}")
        return "\n".join(out) + "\n" + self.diagnostics()

    # ---------------------------------------------------------------- teardown
    def _marked_pids(self) -> list[int]:
        """PIDs (not ours) whose environment carries this instance's token."""
        needle = f"{MARKER_VAR}={self.token}".encode()
        me = os.getpid()
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == me:
                continue
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                continue
        return pids

    @staticmethod
    def _stop_proc(p: subprocess.Popen, timeout: float) -> None:
        if p.poll() is not None:
            return
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Cancel all jobs, stop slurmd, slurmctld, munged (only ours) and any
        leftover process carrying this instance's marker.  Idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        try:
            ctld = self.procs.get("slurmctld")
            if ctld is not None and ctld.poll() is None and self.env:
                try:
                    ids = self.job_ids()
                    if ids:
                        self.cancel(*ids)
                        deadline = time.monotonic() + 15
                        while self.job_ids() and time.monotonic() < deadline:
                            time.sleep(0.3)
                except (OSError, subprocess.SubprocessError, SlurmError):
                    pass
            for name in ("slurmd", "slurmctld", "munged"):
                if name in self.procs:
                    self._stop_proc(self.procs[name], timeout=15)
            # Stray slurmstepd / job processes of this instance only.
            for _ in range(3):
                pids = self._marked_pids()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
        finally:
            if self._watchdog is not None:
                self._stop_proc(self._watchdog, timeout=5)
            for f in self._logfiles:
                try:
                    f.close()
                except OSError:
                    pass
            _LIVE.discard(self)

    def alive(self) -> dict[str, bool]:
        return {n: p.poll() is None for n, p in self.procs.items()}

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


_LIVE: set[LocalSlurm] = set()


@atexit.register
def _stop_all() -> None:  # last resort if a teardown never ran
    for c in list(_LIVE):
        try:
            c.stop()
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------ pytest
def require_slurm() -> None:
    """Skip (or, with CI=true, fail) when a local cluster cannot be started."""
    why = missing_requirements()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the SLURM test cluster cannot run: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory, request):
    """A started ``LocalSlurm`` shared by the tests of one module; stopped at teardown."""
    require_slurm()
    root = tmp_path_factory.mktemp("slurm")
    if len(str(root)) > _MAX_TMPDIR_LEN:  # e.g. a deep --basetemp
        import tempfile
        root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    cluster = LocalSlurm(root)
    try:
        cluster.start()
    except SlurmError as e:
        pytest.fail(f"local SLURM cluster failed to start:\n{e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_collection_modifyitems(config, items):  # active when used via pytest_plugins
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)
