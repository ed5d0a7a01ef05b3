"""Issue [3]: the simulator's time agrees with closed forms."""
import numpy as np
import pandas as pd
import pytest
import torch

from harness.algorithms import register
from harness.config import expand
from harness.experiment import simulate
from harness.ops import ANY, SERVER, Compute, Record, Recv, Send
from harness.cost import NetworkSpec
from tests.helpers import small

FREE = {"latency_s": 0.0, "bandwidth_Bps": 1e30}


def _cheap(steps, n, backend="stacked", **over):
    raw = {"algorithm": {"name": "sync_sgd", "lr": 0.05}, "n_workers": n, "steps": steps, "seed": 0, "backend": backend,
           "eval_every": steps, "log_every": steps, "task": {"name": "quadratic"},  # the clock is the point: cheap gradients
           "compute": {"model": "exponential", "mean_s": 1.0}, "network": FREE, **over}
    return expand(raw)[0]


def _step_times(df):
    w0 = df[df.worker == 0].sort_values("step")
    return w0.time_s.iloc[-1] / w0.step.iloc[-1]


def expected_order_stat(n, k):
    """E[k-th smallest of n Exp(1)] = sum_{i=0}^{k-1} 1/(n-i)."""
    return sum(1.0 / (n - i) for i in range(k))


@pytest.mark.parametrize("n", [4, 16])
def test_sync_step_time_is_expected_maximum(n):
    df, _ = simulate(_cheap(4000, n))
    assert _step_times(df) == pytest.approx(expected_order_stat(n, n), rel=0.02)  # H_n


@pytest.mark.parametrize("n, b", [(8, 2), (16, 4)])
def test_backup_workers_step_time_is_order_statistic(n, b):
    cfg = _cheap(4000, n, algorithm={"name": "sync_sgd", "lr": 0.05, "backup": b})
    df, _ = simulate(cfg)
    assert _step_times(df) == pytest.approx(expected_order_stat(n, n - b), rel=0.02)


def test_backup_workers_same_on_simpy_and_stacked():
    out = {b: simulate(small("sync_sgd", algorithm={"name": "sync_sgd", "lr": 0.1, "backup": 1}, backend=b, n_workers=5,
                             steps=12, compute={"model": "exponential", "mean_s": 1.0, "straggler_fraction": 0.0}))
           for b in ("simpy", "stacked")}
    (da, xa), (db, xb) = out["simpy"], out["stacked"]
    assert (xa - xb).abs().max() < 1e-10
    cols = ["worker", "step", "time_s", "compute_s", "comm_s", "idle_s"]
    a = da[da.worker >= 0][cols].sort_values(["worker", "step"]).reset_index(drop=True)
    b = db[db.worker >= 0][cols].sort_values(["worker", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, atol=1e-12, rtol=0)
    assert (a.groupby("step").time_s.nunique() == 1).all()  # everybody leaves each round together
    # the same draws without backup: the slowest worker's computation is no longer cut short
    full, _ = simulate(small("sync_sgd", backend="stacked", n_workers=5, steps=12,
                             compute={"model": "exponential", "mean_s": 1.0, "straggler_fraction": 0.0}))
    last = lambda d: d[(d.worker >= 0) & (d.step == 12)]  # noqa: E731
    assert last(db).compute_s.sum() < last(full).compute_s.sum() - 1e-9
    assert last(db).time_s.max() < last(full).time_s.max()


def test_collective_formulas():
    net = NetworkSpec(latency_s=1e-3, bandwidth_Bps=1e8, workers_per_node=4, intra={"latency_s": 1e-6, "bandwidth_Bps": 1e10})
    b, n = 4e6, 16
    ring = 2 * (n - 1) * 1e-3 + 2 * (n - 1) / n * b / 1e8
    assert net.allreduce_cost(b, range(n)).seconds == pytest.approx(ring, rel=1e-15)
    tree = net.model_copy(update={"allreduce": "tree"})
    assert tree.allreduce_cost(b, range(n)).seconds == pytest.approx(2 * 4 * (1e-3 + b / 1e8), rel=1e-15)
    hier = net.model_copy(update={"allreduce": "hierarchical"})
    intra = 2 * 3 * 1e-6 + 2 * 3 / 4 * b / 1e10
    inter = 2 * 3 * 1e-3 + 2 * 3 / 4 * b / 1e8
    assert hier.allreduce_cost(b, range(n)).seconds == pytest.approx(intra + inter, rel=1e-15)
    assert hier.allreduce_cost(b, range(n)).seconds < net.allreduce_cost(b, range(n)).seconds
    assert net.p2p(b, 0, 1) == pytest.approx(1e-6 + b / 1e10) and net.p2p(b, 0, 4) == pytest.approx(1e-3 + b / 1e8)


def test_collectives_count_their_own_messages():
    """Tree and hierarchical all-reduce count their own messages and bytes, not the ring's."""
    net = NetworkSpec(workers_per_node=4)
    b, n = 1000.0, 16
    ring = net.allreduce_cost(b, range(n)).traffic
    assert {t.messages for t in ring} == {2 * (n - 1)} and ring[0].sent == pytest.approx(2 * 15 / 16 * b)
    tree = net.model_copy(update={"allreduce": "tree"}).allreduce_cost(b, range(n)).traffic
    # binomial tree on 16: the root has children 1, 2, 4, 8; a leaf (e.g. 15) one parent
    assert tree[0].messages == 4 and tree[15].messages == 1 and tree[1].messages == 1 + 3
    assert sum(t.messages for t in tree) == 2 * (n - 1)  # every edge carries one block up, one down
    assert sum(t.sent for t in tree) == sum(t.recv for t in tree) == 2 * (n - 1) * b
    hier = net.model_copy(update={"allreduce": "hierarchical"}).allreduce_cost(b, range(n)).traffic
    leader, member = hier[0], hier[1]  # 4 nodes of 4: leaders also run the ring among 4 leaders
    assert member.messages == 2 * 3 and leader.messages == 2 * 3 + 2 * 3
    assert leader.sent == pytest.approx(2 * (2 * 3 / 4 * b)) and member.sent == pytest.approx(2 * 3 / 4 * b)
    gather = net.allgather_cost([10, 20, 30], [0, 1, 2]).traffic  # blocks of different sizes (codecs)
    assert [t.recv for t in gather] == [50, 40, 30] and [t.sent for t in gather] == [40, 30, 50]  # all but the successor's block


@pytest.mark.parametrize("algo", ["tree", "hierarchical"])
def test_allreduce_algorithm_prices_the_run(algo):
    net = {"latency_s": 1e-3, "bandwidth_Bps": 1e7, "workers_per_node": 2, "allreduce": algo}
    cfg = small("sync_sgd", steps=3, network=net, compute={"model": "constant", "mean_s": 1.0, "straggler_fraction": 0})
    df, x = simulate(cfg)
    nb = 8 * x.shape[1]
    expected = 3 * (1.0 + NetworkSpec(**net).allreduce_cost(nb, range(4)).seconds)
    assert df[df.worker >= 0].time_s.max() == pytest.approx(expected, rel=1e-12)


@register("_test_incast", server=True)
def incast(ctx, x):
    """Test-only: every worker sends its model to the server at t=0; the server records."""
    if ctx.role == "server":
        for _ in range(ctx.n_workers):
            yield Recv(ANY)
        yield Record(step=1, x=x)
        return x
    yield Send(SERVER, x)
    yield Record(step=1, x=x)
    return x


@pytest.mark.parametrize("contention", [True, False])
def test_parameter_server_incast_queues_on_its_downlink(contention):
    n, alpha, beta = 6, 0.002, 1e7
    cfg = small("sync_sgd", algorithm={"name": "_test_incast"}, n_workers=n, steps=1, eval_every=1,
                network={"latency_s": alpha, "bandwidth_Bps": beta, "contention": contention})
    df, x = simulate(cfg)
    nbytes = 8 * x.shape[1]
    server_done = df[(df.worker == -1) & (df.step == 1)].time_s.item()
    expected = (n if contention else 1) * nbytes / beta + alpha
    assert server_done == pytest.approx(expected, rel=1e-12)
    senders = df[(df.worker >= 0) & (df.step == 1)].sort_values("time_s")
    assert senders.bytes_sent.eq(nbytes).all()
    if contention:  # each sender leaves when its own serialisation ends: b/beta, 2b/beta, ...
        assert np.allclose(senders.time_s.to_numpy(), np.arange(1, n + 1) * nbytes / beta)


@pytest.mark.parametrize("alg", ["sync_sgd", "local_sgd", "dpsgd"])
def test_stacked_equals_simpy_with_heterogeneous_links(alg):
    net = {"latency_s": 0.002, "bandwidth_Bps": 1e7, "uplink_Bps": [1e7, 5e6, 2e7, 1e6, 1e7, 3e6],
           "downlink_Bps": [2e7, 1e7, 1e7, 4e6, 1e6, 1e7], "workers_per_node": 2}
    out = {b: simulate(small(alg, backend=b, n_workers=6, steps=10, network=net)) for b in ("simpy", "stacked")}
    (da, xa), (db, xb) = out["simpy"], out["stacked"]
    assert torch.allclose(xa, xb, atol=1e-10, rtol=0)
    cols = ["worker", "step", "time_s", "comm_s", "idle_s"]
    a = da[da.worker >= 0][cols].sort_values(["worker", "step"]).reset_index(drop=True)
    b = db[db.worker >= 0][cols].sort_values(["worker", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    if alg == "dpsgd":  # no barrier: heterogeneous links leave the clocks apart
        assert a[a.step == 10].time_s.nunique() > 1


def test_network_errors_name_the_field():
    from harness.config import ConfigError

    with pytest.raises(ConfigError, match="network.uplink_Bps"):
        small("sync_sgd", network={"uplink_Bps": [1e6, 1e6]})
    with pytest.raises(ConfigError, match="network.allreduce"):
        small("sync_sgd", network={"allreduce": "hierarchical"})
    with pytest.raises(ConfigError, match="workers_per_node"):
        small("sync_sgd", network={"workers_per_node": 3})


def test_dropped_messages_are_resent_and_counted():
    base = dict(n_workers=4, steps=30, eval_every=10)
    df0, _ = simulate(small("sync_sgd", algorithm={"name": "async_sgd"}, **base))
    df, x = simulate(small("sync_sgd", algorithm={"name": "async_sgd"}, **base,
                           network={"drop_prob": 0.2, "retransmit_s": 0.05}))
    last = lambda d: d[d.worker >= 0].groupby("worker").last()  # noqa: E731
    sent, sent0 = last(df).messages.sum(), last(df0).messages.sum()
    assert sent0 == 4 * 30 and 1.1 * sent0 < sent < 1.4 * sent0  # ~1/(1-0.2) attempts per message
    assert df.time_s.max() > df0.time_s.max()
    assert df[df.worker == -1].step.max() == 30  # nothing hangs: every message got through
