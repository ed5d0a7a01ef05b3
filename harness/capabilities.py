"""The backend registry: each backend's interpreter, transport, launcher and capabilities.

A backend is a row of :data:`BACKENDS`: ``kind`` (``simulated``: one process interprets every
worker; ``real``: one OS process per rank running :class:`harness.backends.rank.RankDriver`
over a *transport*), where its interpreter or transport class lives (``module:Class``, imported
on first use), how it is launched, and which features it supports. Everything that lists
backends reads this table (config validation, ``harness.experiment``, ``harness.backends``,
``harness sweep``, the CLI choices), so a new real backend is a transport module and a row
here; a new simulator an interpreter module and a row.

An algorithm declares the features it needs (``register(..., requires=...)``, see
:func:`harness.algorithms.requirements`); a run adds features of its config (faults,
backup workers). :func:`check` compares them with the backend's declaration below, so an
unsupported combination is one line at config time (``harness run``, ``--list``,
``sweep``, ``slurm submit``), never an error after ranks have started. The declarations
live here, apart from the interpreters, so that checking a config never imports SimPy,
mpi4py or a process group; ``tests/test_capabilities.py`` checks that every interpreter
handles the ops of every feature it declares.

=========  =============================================================================
feature    what it means
=========  =============================================================================
gossip     ``Gossip`` / ``Neighbors`` (needs a topology)
quorum     ``AllReduce(quorum=k)``: backup workers (reduce the first k arrivals)
p2p        ``Send`` / ``Recv``
server     a server rank (``register(server=True)``): asynchronous roles
overlap    ``Start`` / ``Wait``
members    collectives and gradients over a subset of workers (``members=``)
part       ``Grad(part=)``: a gradient on a chosen data part
codec      compressed payloads (``codec=``)
onesided   ``Put`` / ``Get`` / ``Accumulate`` / ``Exchange`` on peers' windows
faults     injected crashes (``faults:`` with policy ``wait``)
crash      permanent crashes (``faults.policy: continue``)
time       ``Sleep`` / ``Until``: wait in simulated (SimPy) or wall (real) seconds
timeout    ``Recv(timeout=, deadline=)``: give up a receive (gloo cannot: it closes the pair)
=========  =============================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

COMMON = {"gossip", "overlap", "members", "part", "codec"}


@dataclass(frozen=True)
class Backend:
    name: str
    kind: str  # "simulated" or "real"
    impl: str  # "module:Class": the interpreter (simulated) or the transport (real)
    supports: frozenset
    launcher: str = ""  # how a real run is started (docs/real-backends.md)
    selectable: bool = True  # a config may name it (loopback is for tests: harness.backends.loopback_run)

    def load(self):
        """The interpreter or transport class, imported now."""
        import importlib

        module, cls = self.impl.split(":")
        return getattr(importlib.import_module(module), cls)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("simpy", "simulated", "simulators.simpy_backend:SimPyBackend",
            frozenset(COMMON | {"quorum", "p2p", "server", "onesided", "faults", "crash", "time", "timeout"})),
    Backend("stacked", "simulated", "simulators.stacked:StackedBackend", frozenset(COMMON | {"quorum", "faults"})),
    Backend("mpi", "real", "harness.backends.mpi:MPITransport",
            frozenset(COMMON | {"p2p", "server", "onesided", "time", "timeout"}),
            launcher="mpiexec -n N harness run CONFIG --backend mpi (or srun)"),
    Backend("torch", "real", "harness.backends.torchdist:TorchTransport", frozenset(COMMON | {"p2p", "server", "time"}),
            launcher="torchrun --nproc-per-node N --no-python harness run CONFIG --backend torch (or srun)"),
    Backend("loopback", "real", "harness.backends.loopback:LoopbackTransport",
            frozenset(COMMON | {"p2p", "server", "onesided", "time", "timeout"}), selectable=False),
)}
SUPPORTS: dict[str, set[str]] = {name: set(b.supports) for name, b in BACKENDS.items()}
SELECTABLE = tuple(n for n, b in BACKENDS.items() if b.selectable)  # what backend: accepts
REAL = tuple(n for n, b in BACKENDS.items() if b.kind == "real" and b.selectable)
SIMULATED = tuple(n for n, b in BACKENDS.items() if b.kind == "simulated")
WHY = {
    "quorum": "backup workers need arrival order, which only a simulator controls; use backend simpy or stacked",
    "server": "server roles are asynchronous; use backend simpy (or mpi/torch)",
    "p2p": "point-to-point messages are asynchronous; use backend simpy (or mpi/torch)",
    "onesided": "one-sided windows need asynchronous workers; use backend simpy or mpi",
    "faults": "crash injection is simulated; a real run has real failures only: remove faults: or use backend simpy",
    "crash": "permanent crashes (faults.policy: continue) are modelled on backend simpy only",
    "time": "waiting (Sleep/Until) belongs to asynchronous roles; use backend simpy (or mpi/torch)",
    "timeout": ("a receive with a timeout must be abandoned when it expires, which gloo cannot do (a timed-out "
                "wait closes the connection); use backend simpy or mpi"),
}


def check(backend: str, features: set[str], who: str) -> None:
    """Raise ValueError (one line naming the field) if ``backend`` lacks a feature."""
    missing = sorted(set(features) - SUPPORTS[backend])
    if missing:
        f = missing[0]
        raise ValueError(f"backend: {who} needs '{f}', which backend {backend} does not support "
                         f"({WHY.get(f, 'choose another backend')})")


def run_features(cfg) -> set[str]:
    """Features a config needs beyond its algorithm's (faults)."""
    out = set()
    if cfg.faults is not None and (cfg.faults.crashes or cfg.faults.crash_rate_per_s):
        out.add("faults")
        if cfg.faults.policy == "continue":
            out.add("crash")
    return out


__all__ = ["BACKENDS", "REAL", "SELECTABLE", "SIMULATED", "SUPPORTS", "Backend", "check", "run_features"]
