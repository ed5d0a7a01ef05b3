"""The loopback transport (n ranks as threads of one process) and loopback runs of the real
RankDriver: collectives, gossip and point-to-point semantics, failures that end a run with an
error naming the rank and never hang, and lock-step algorithms ending with SimPy's parameters
and table (float64, 1e-10): the in-process version of test_real_backends.py's check."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from harness.backends import loopback
from harness.backends.loopback import Aborted, Deadlock, LoopbackError, LoopbackTransport, LoopbackWorld, PeerFailed
from harness.config import expand

TASK = {"name": "quadratic", "dim": 4, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}


def spmd(fn, size=3, world=None, limit=10.0):
    """``fn(transport)`` on every rank (threads); returns each rank's result or exception."""
    world = world or LoopbackWorld(size, timeout_s=5)
    out = [None] * world.size

    def main(r):
        tr = LoopbackTransport(world, r)
        try:
            out[r] = fn(tr)
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            out[r] = e
        finally:
            tr.close()

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(world.size)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    assert time.monotonic() - t0 < limit
    return out


def test_allreduce_sums_in_rank_order_and_allgather_stacks():
    big = [1.0, 1e16, -1e16]  # ascending rank order: (1 + 1e16) - 1e16 == 0; in reverse order it is 1

    def fn(tr):
        x = torch.tensor([big[tr.rank], float(tr.rank)], dtype=torch.float64)
        return tr.allreduce_sum(x), tr.allgather(x)

    for s, g in spmd(fn):
        assert s.tolist() == [0.0, 3.0]
        assert g.tolist() == [[1.0, 0.0], [1e16, 1.0], [-1e16, 2.0]]


def test_objects_are_copied_and_gather_eval_goes_to_the_first_worker():
    def fn(tr):
        tr.setup([1, 2])  # a server layout: rank 0 takes no part in worker collectives
        mine = {"rank": tr.rank}
        got = tr.gather_obj(mine)
        b = tr.bcast_obj([tr.rank])
        ev = None if tr.rank == 0 else tr.gather_eval(torch.full((2,), float(tr.rank)), np.array([tr.rank, 7.0]))
        return mine, got, b, ev

    (m0, got, b0, ev0), (_, none, b1, ev1), (_, _, _, ev2) = spmd(fn)
    assert [g["rank"] for g in got] == [0, 1, 2] and got[0] is not m0 and none is None
    assert b0 == b1 == [0] and ev0 is None and ev2 is None
    X, C = ev1
    assert X.tolist() == [[1.0, 1.0], [2.0, 2.0]] and C.tolist() == [[1.0, 7.0], [2.0, 7.0]]


def test_exchange_on_a_ring_matches_each_edges_tag():
    def fn(tr):
        r, n = tr.rank, tr.size
        x = torch.tensor([float(r)])
        first = tr.exchange(x, {(r + 1) % n: 3}, {(r - 1) % n: 3})
        # both neighbours send with tag 9 then 8; receiving tag 8 first must skip the tag-9 message
        tr.exchange(x + 10, {(r + 1) % n: 9}, {})
        tr.exchange(x + 20, {(r + 1) % n: 8}, {})
        return first, tr.exchange(x, {}, {(r - 1) % n: 8}), tr.exchange(x, {}, {(r - 1) % n: 9})

    for r, (first, t8, t9) in enumerate(spmd(fn)):
        left = (r - 1) % 3
        assert list(first) == [left] and first[left].item() == left
        assert t8[left].item() == left + 20 and t9[left].item() == left + 10


def test_recv_matches_source_and_tag_in_per_sender_order():
    def fn(tr):
        t = lambda v: torch.tensor([float(v)])  # noqa: E731
        if tr.rank == 1:
            for v, tag in ((1, 5), (2, 7), (3, 5)):
                tr.send(0, t(v), tag, nbytes=v)  # a codec's wire size travels with the message
            tr.barrier()
        elif tr.rank == 2:
            tr.barrier()
            tr.send(0, t(4), 7)  # sent after rank 0 passed the barrier: recv(ANY) must wait for it
        else:
            tr.barrier()
            got = [tr.recv(1, 7), tr.recv(-1, 5), tr.recv(-1, 5), tr.recv(-1, None)]
            return [(s, tag, x.item(), nbytes) for s, tag, x, _, nbytes in got]

    assert spmd(fn)[0] == [(1, 7, 2.0, 2), (1, 5, 1.0, 1), (1, 5, 3.0, 3), (2, 7, 4.0, 4)]  # 4: float32 payload


def test_injected_failure_raises_on_that_rank_and_peer_failed_on_the_others():
    world = LoopbackWorld(3, timeout_s=5)
    world.inject(1, exc=RuntimeError("boom"), op="allreduce_sum", after=1)
    out = spmd(lambda tr: [tr.allreduce_sum(torch.ones(2)) for _ in range(3)], world=world)
    assert isinstance(out[1], RuntimeError) and str(out[1]) == "boom"
    for e in (out[0], out[2]):  # their second all-reduce needed rank 1
        assert isinstance(e, PeerFailed) and e.rank == 1 and "rank 1 failed (RuntimeError: boom)" in str(e)


def test_mismatch_deadlock_and_abort_raise_instead_of_hanging():
    out = spmd(lambda tr: tr.allgather(torch.ones(1)) if tr.rank == 2 else tr.allreduce_sum(torch.ones(1)))
    assert any(isinstance(e, LoopbackError) and "mismatched collectives" in str(e) for e in out), out
    out = spmd(lambda tr: tr.recv(1 - tr.rank, None), size=2)  # both wait for the other
    assert all(isinstance(e, Deadlock) and "rank 0 waits in recv from rank 1" in str(e) for e in out), out

    def fn(tr):
        if tr.rank == 0:
            time.sleep(0.1)
            tr.abort("giving up")
        tr.barrier()

    out = spmd(fn)
    assert all(isinstance(e, Aborted) and "rank 0 aborted: giving up" in str(e) for e in out), out


def cfg(alg, steps=8, n=3, **over):
    return expand({"n_workers": n, "steps": steps, "seed": 2, "eval_every": 4, "task": TASK, "algorithm": alg,
                   **over})[0]


@pytest.mark.parametrize("op,alg,where", [
    ("allreduce_sum", {"name": "sync_sgd"}, " (worker 1, after step 2)"),  # the 3rd all-reduce
    ("exchange", {"name": "dpsgd"}, " (worker 1, after step 2)"),
    (None, {"name": "sync_sgd"}, ""),  # the very first call: setup, in RankDriver's constructor
])
def test_injected_failure_ends_the_run_naming_the_rank(op, alg, where):
    extra = {"topology": {"name": "ring"}} if alg["name"] == "dpsgd" else {}
    t0 = time.monotonic()
    with pytest.raises(loopback.RunFailed) as err:
        loopback.run(cfg(alg, **extra), inject={"rank": 1, "op": op, "after": 0 if op is None else 2,
                                                 "exc": RuntimeError("boom")}, timeout_s=20)
    assert time.monotonic() - t0 < 10
    e = err.value
    assert str(e).startswith(f"rank 1{where} failed: RuntimeError: boom [run "), str(e)
    assert "\n" not in str(e) and e.rank == 1 and sorted(e.errors) == [0, 1, 2]
    assert all("PeerFailed: rank 1 failed" in e.errors[r] for r in (0, 2)), e.errors


CASES = {
    "sync_sgd": dict(alg={"name": "sync_sgd", "lr": 0.1, "momentum": 0.9}),
    "local_sgd": dict(alg={"name": "local_sgd", "period": 3, "lr": 0.1, "momentum": 0.9}),
    "dpsgd_ring": dict(alg={"name": "dpsgd", "lr": 0.1, "momentum": 0.9}, topology={"name": "ring"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lockstep_algorithms_end_with_simpys_parameters_and_table(case):
    from harness.experiment import simulate

    c = cfg(**CASES[case], n=4)  # 4 ranks: the ring is not complete, so D-PSGD does not reach consensus
    res = loopback.run(c, trace=True)
    sdf, sfinal = simulate(c)
    assert res.workers.dtype == torch.float64 and res.workers.shape == sfinal.shape
    assert (res.workers - sfinal).abs().max().item() < 1e-10
    if case.startswith("dpsgd"):  # gossip never reaches exact consensus: the comparison is not trivial
        assert (res.workers - res.workers.mean(0)).abs().max().item() > 1e-6
    assert len(res.ops) == 4 and res.ops[0].count("Record") == c.steps
    a, b = (d.sort_values(["worker", "step"]).reset_index(drop=True) for d in (res.rows, sdf))
    assert set(a.backend) == {"loopback"} and len(a) == len(b) and set(b.columns) <= set(a.columns)
    cols = ["worker", "step", "round", "bytes_sent", "bytes_recv", "messages"]
    assert (a[cols].to_numpy() == b[cols].to_numpy()).all(), "bytes per worker and step differ from SimPy"
    for col in ("train_loss", "test_loss", "test_acc", "consensus_dist"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=0, atol=1e-10, err_msg=col)
    w = a[a.worker >= 0].groupby("worker").last()
    assert (w.time_s > 0).all() and (w.comm_s > 0).all()  # wall clock, really measured


def test_server_algorithm_runs_with_a_server_rank():
    """async_sgd: rank 0 serves Recv(ANY); which worker's gradient comes first depends on
    thread scheduling, so check what does not: ops, rows and bytes as SimPy counts them."""
    steps = 30
    res = loopback.run(cfg({"name": "async_sgd", "lr": 0.2}, steps=steps, eval_every=10), trace=True)
    assert res.server and len(res.finals) == 4 and res.workers.shape == (3, 4)
    # one update row (staleness) per applied gradient, plus a consensus record per step
    assert res.ops[0].count("Recv") == res.ops[0].count("Send") == 3 * steps and res.ops[0].count("Record") == 4 * steps
    assert "Grad" not in res.ops[0] and all(o.count("Grad") == steps for o in res.ops[1:])  # rank 0 is the server
    ev = res.rows[res.rows.worker == -1].sort_values("step")
    assert list(ev.step) == [0, 10, 20, 30] and (ev.test_loss > 0).all()
    last = res.rows[(res.rows.worker >= 0) & (res.rows.event == "step")].groupby("worker").last()
    assert list(last.index) == [0, 1, 2] and (last.step == steps).all()
    assert (last.bytes_sent == steps * 4 * 8).all() and (last.bytes_recv == steps * 4 * 8).all()
    assert (last.messages == steps).all()
    assert ev.bytes_sent.iloc[-1] >= 3 * steps * 4 * 8  # the server's replies, plus workers' (rows_frame)
