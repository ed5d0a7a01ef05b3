"""What each backend supports, checked against a run before anything starts.

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
=========  =============================================================================
"""
from __future__ import annotations

COMMON = {"gossip", "overlap", "members", "part", "codec"}
SUPPORTS: dict[str, set[str]] = {
    "simpy": COMMON | {"quorum", "p2p", "server", "onesided", "faults", "crash"},
    "stacked": COMMON | {"quorum", "faults"},
    "mpi": COMMON | {"p2p", "server", "onesided"},
    "torch": COMMON | {"p2p", "server"},
    "loopback": COMMON | {"p2p", "server", "onesided"},
}
WHY = {
    "quorum": "backup workers need arrival order, which only a simulator controls; use backend simpy or stacked",
    "server": "server roles are asynchronous; use backend simpy (or mpi/torch)",
    "p2p": "point-to-point messages are asynchronous; use backend simpy (or mpi/torch)",
    "onesided": "one-sided windows need asynchronous workers; use backend simpy or mpi",
    "faults": "crash injection is simulated; a real run has real failures only: remove faults: or use backend simpy",
    "crash": "permanent crashes (faults.policy: continue) are modelled on backend simpy only",
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


__all__ = ["SUPPORTS", "check", "run_features"]
