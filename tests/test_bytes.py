"""Bytes per step follow the textbook formulas exactly (fp32 payloads)."""
import pytest

from harness.experiment import simulate
from tests.helpers import small


def _per_step(alg, backend, n):
    cfg = small(alg, backend=backend, n_workers=n, steps=8, task={"dtype": "float32"})
    df, x = simulate(cfg)
    d = x.shape[1]
    w = df[df.worker >= 0].sort_values(["worker", "step"])
    return w, d


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
@pytest.mark.parametrize("n", [4, 5])
def test_allreduce_bytes(backend, n):
    w, d = _per_step("sync_sgd", backend, n)
    step = w.groupby("worker").bytes_sent.diff().dropna()
    assert (step == 2 * (n - 1) / n * 4 * d).all()
    assert (w.groupby("worker").messages.diff().dropna() == 2 * (n - 1)).all()
    assert (w.bytes_recv == w.bytes_sent).all()


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_local_sgd_bytes_every_period(backend):
    w, d = _per_step("local_sgd", backend, 4)  # period 4
    last = w[w.step == 8].bytes_sent
    assert (last == 2 * (2 * 3 / 4 * 4 * d)).all()
    assert (w[w.step == 3].bytes_sent == 0).all() and (w[w.step == 4].bytes_sent > 0).all()


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_ring_gossip_bytes(backend):
    w, d = _per_step("dpsgd", backend, 6)
    step = w.groupby("worker").bytes_sent.diff().dropna()
    assert (step == 2 * 4 * d).all()
    assert (w.groupby("worker").bytes_recv.diff().dropna() == 2 * 4 * d).all()
    assert (w.groupby("worker").messages.diff().dropna() == 2).all()
