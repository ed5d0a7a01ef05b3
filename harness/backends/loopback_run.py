"""Run a whole config in this process over the loopback transport: one thread per rank, each
running the real :class:`harness.backends.rank.RankDriver` as ``runner.run_rank`` does for a
launch, minus the files. Why: rule tests and cross-backend checks of the real interpreter
without launching processes, with op traces and injected failures."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from harness.backends.loopback import LoopbackError, LoopbackTransport, LoopbackWorld, RunFailed


@dataclass
class LoopbackResult:
    """What a loopback run returns (the real runner writes the same into files)."""

    finals: list  # per rank: what the generator returned (rank 0 = server for server algorithms)
    rows: object  # pandas.DataFrame: the table run_rank would write
    ops: list | None  # per rank: op type names in yield order (trace=True)
    server: bool

    @property
    def workers(self) -> torch.Tensor:
        """The workers' finals, ``[n, d]``, as ``harness.experiment.simulate`` returns them."""
        return torch.stack(self.finals[1:] if self.server else self.finals)


def run(cfg, *, inject=None, trace: bool = False, timeout_s: float = 60.0) -> LoopbackResult:
    """Run ``cfg`` with the real :class:`RankDriver` on one thread per rank; ``inject``: the
    keyword arguments of :meth:`LoopbackWorld.inject` (a dict, or a list of them). Raises
    :class:`RunFailed` naming the first failing rank, like ``run_rank``'s one-line error."""
    from harness import algorithms
    from harness.backends.rank import RankDriver
    from harness.backends.runner import rows_frame

    if cfg.faults:
        raise ValueError("faults: crash injection is simulated; on loopback use run(cfg, inject={'rank': 1, ...})")
    server = bool(getattr(algorithms.get(cfg.algorithm["name"]), "has_server", False))
    cfg = cfg.model_copy(update={"backend": "loopback"})  # the table's backend column
    world = LoopbackWorld(cfg.n_workers + server, timeout_s)
    for spec in [inject] if isinstance(inject, dict) else inject or []:
        world.inject(**spec)
    ops = [[] for _ in range(world.size)] if trace else None
    errors, out = {}, {}

    def main(rank):  # run_rank's body, without files; a failure marks the rank dead instead of aborting
        tr, drv = LoopbackTransport(world, rank), None
        try:
            drv = RankDriver(cfg, tr, on_timeout=lambda why: world.abort(f"rank {rank}: {why}"))
            if trace:
                drv.on_op = lambda op: ops[rank].append(type(op).__name__)
            final = drv.run()
            if rank == 0:
                drv.rec.finish()  # test metrics of the consensus rows, off the clock
            parts = tr.gather_obj({"rank": rank, "role": drv.role, "rows": drv.rec.rows, "final": final.detach()})
            if rank == 0:
                out.update(rows=rows_frame(parts, drv.server_alg), finals=[p["final"] for p in parts])
            tr.barrier()
        except BaseException as e:  # noqa: BLE001 - reported by run()
            where = f" ({drv.where})" if drv is not None else ""
            errors[rank] = f"rank {rank}{where} failed: {type(e).__name__}: {e}"
            world.fail(rank, f"{type(e).__name__}: {e}")
        finally:
            if drv is not None:
                drv.dog.stop()
            tr.close()

    threads = [threading.Thread(target=main, args=(r,), daemon=True, name=f"loopback-{r}") for r in range(world.size)]
    deadline = time.monotonic() + timeout_s + 5  # waits time out on their own first
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        world.abort(f"the run took longer than {timeout_s:g} s")
        raise LoopbackError(f"loopback: the run did not end within {timeout_s:g} s [run {cfg.run_id}]")
    if errors:
        first = next((r for r in world.failed if r in errors), min(errors))
        raise RunFailed(f"{errors[first]} [run {cfg.run_id}, {world.size} ranks on loopback]", first, errors)
    return LoopbackResult(out["finals"], out["rows"], ops, server)
