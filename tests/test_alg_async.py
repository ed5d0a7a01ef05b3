"""Asynchronous (server/worker roles) methods of issue [5]: rules by hand, claims in simulation."""
import pytest
import torch

from harness.algorithms import Ctx, get
from harness.config import ConfigError, expand
from harness.experiment import simulate
from harness.ops import ANY, SERVER, Message, Rate, Record, Recv, Send


class _Server:
    """Drives a server generator; the update rows it yields (``Record(staleness=...)``, one
    per applied update) are collected in ``updates`` instead of being returned."""

    def __init__(self, gen):
        self.gen, self.updates = gen, []

    def send(self, value):
        op = self.gen.send(value)
        while isinstance(op, Record) and op.staleness is not None:
            self.updates.append((op.src, op.staleness))
            op = self.gen.send(None)
        return op


def _server(name, n=2, steps=4, x=None, **hp):
    ctx = Ctx(n, steps, 0, index=torch.tensor(0), role="server", rank=0)
    return _Server(get(name)(ctx, x if x is not None else torch.zeros(3, dtype=torch.float64), **hp))


def test_async_easgd_server_elastic_rule():
    g = _server("async_easgd", n=2, steps=4, tau=4, beta=0.8)
    assert g.send(None) == Recv(ANY)
    xi = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    reply = g.send(Message(2, 0, xi))
    alpha = 0.8 / 2
    assert isinstance(reply, Send) and reply.dst == 2 and torch.allclose(reply.x, alpha * xi)  # e = alpha (x_i - x_c)
    assert g.send(None) == Recv(ANY)
    reply = g.send(Message(1, 0, -xi))
    assert torch.allclose(reply.x, alpha * (-xi - alpha * xi))  # against the moved center
    rec = g.send(None)
    assert isinstance(rec, Record) and torch.allclose(rec.x, alpha * xi + alpha * (-xi - alpha * xi))
    assert g.updates == [(2, 0), (1, 1)]  # worker 1's update came one version after its pull


def _feed_alsgd(g, src, delta, rate):
    assert g.send(None) == Recv(ANY)
    assert g.send(Message(src, 0, delta)) == Recv(src)
    x = g.send(Message(src, 0, torch.tensor(rate, dtype=torch.float64)))
    h = g.send(None)
    return x.x, int(h.x.item())


def test_delayed_nesterov_is_one_nesterov_step_per_buffer():
    lr, beta = 0.5, 0.9
    d1, d2 = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([3.0, -1.0, 0.0], dtype=torch.float64)
    g = _server("async_local_sgd", n=2, steps=16, period=8, outer_lr=lr, outer_momentum=beta, dynamic=True)
    x1, h1 = _feed_alsgd(g, 1, d1, 10.0)
    assert torch.allclose(x1, -lr * d1 / 2) and h1 == 8  # plain part only; the only rate seen is the max
    x2, h2 = _feed_alsgd(g, 2, d2, 5.0)
    m = (d1 + d2) / 2
    assert torch.allclose(x2, -lr * (d1 + d2) / 2 - lr * beta * m)  # = a Nesterov step with gradient (d1+d2)/2
    assert h2 == 4  # dynamic local updates: half the speed, half the local steps


def test_delayed_with_buffer_one_equals_naive_nesterov():
    ds = [torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    outs = []
    for delayed in (True, False):
        g = _server("async_local_sgd", n=1, steps=4, x=torch.zeros(4, dtype=torch.float64), period=1, buffer=1,
                    delayed=delayed, dynamic=False)
        xs = []
        for d in ds:
            x, _ = _feed_alsgd(g, 1, d, 1.0)
            xs.append(x)
            assert isinstance(g.send(None), Record)
        outs.append(torch.stack(xs))
    assert torch.allclose(outs[0], outs[1], atol=1e-14)


def test_worker_sends_delta_and_rate():
    ctx = Ctx(2, 2, 0, index=torch.tensor(0), role="worker", rank=1)
    x0 = torch.ones(3, dtype=torch.float64)
    g = get("async_local_sgd")(ctx, x0, period=2, lr=0.5)
    g.send(None)  # Grad
    g.send((torch.tensor(1.0), torch.ones(3, dtype=torch.float64)))
    op = g.send((torch.tensor(1.0), torch.ones(3, dtype=torch.float64)))
    assert isinstance(op, Send) and op.dst == SERVER and torch.allclose(op.x, torch.full((3,), 1.0, dtype=torch.float64))
    assert isinstance(g.send(None), Rate)


def _sim(alg, **over):
    raw = {"algorithm": alg, "n_workers": 8, "steps": 320, "eval_every": 80, "task": {"hidden": [32]},
           "compute": {"straggler_fraction": 0.25, "straggler_factor": 4}, **over}
    df, _ = simulate(expand(raw)[0])
    return df[df.worker == -1].iloc[-1]


def test_claims_in_simulation():
    dn = _sim({"name": "async_local_sgd"})
    naive = _sim({"name": "async_local_sgd", "delayed": False})
    fixed_h = _sim({"name": "async_local_sgd", "dynamic": False})
    assert dn.test_acc > 0.85 and dn.test_acc > naive.test_acc + 0.2  # Delayed Nesterov closes the gap
    assert dn.time_s < 0.5 * fixed_h.time_s  # slow workers take fewer local steps
    assert _sim({"name": "async_easgd"}).test_acc > 0.85


def test_async_methods_refused_by_stacked():
    with pytest.raises(Exception, match="stacked backend runs lock-step algorithms only"):
        simulate(expand({"algorithm": "async_easgd", "n_workers": 2, "steps": 4, "backend": "stacked"})[0])
