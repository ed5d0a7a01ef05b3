import numpy as np
import pytest
import torch

from harness.tasks import Sampler, build_task
from harness.tasks.partition import PartitionError, dirichlet, iid


def test_batched_model_gradients_equal_per_worker_and_vmap():
    task = build_task({"name": "digits", "dtype": "float64"}, 5, 0)
    s = Sampler(task.shards, 8, 0)
    P = torch.stack([task.init_params(k) for k in range(5)])
    idx = s.all()
    loss_b, G_b = task.loss_and_grad(P, idx)
    for i in range(5):
        li, gi = task.loss_and_grad(P[i], idx[i])
        assert torch.allclose(G_b[i], gi, atol=1e-13) and torch.allclose(loss_b[i], li, atol=1e-13)
    task.batched = False  # the torch.func.vmap fallback
    loss_v, G_v = task.loss_and_grad(P, idx)
    assert torch.allclose(G_v, G_b, atol=1e-13) and torch.allclose(loss_v, loss_b, atol=1e-13)


@pytest.mark.parametrize("n", [1, 7, 16])
def test_iid_partition_is_exact_cover(n):
    labels = np.arange(200) % 10
    shards = iid(labels, n, seed=1)
    allidx = np.concatenate(shards)
    assert sorted(allidx) == list(range(200))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_dirichlet_partition_cover_and_skew():
    labels = np.repeat(np.arange(10), 100)
    shards = dirichlet(labels, 8, seed=0, alpha=0.1)
    assert sorted(np.concatenate(shards)) == list(range(1000))
    # with alpha=0.1 most workers are dominated by a few classes
    top_share = [np.bincount(labels[s], minlength=10).max() / len(s) for s in shards]
    assert np.median(top_share) > 0.4
    iid_share = [np.bincount(labels[s], minlength=10).max() / len(s) for s in iid(labels, 8, 0)]
    assert np.median(iid_share) < 0.2


def test_partition_errors_name_the_field():
    with pytest.raises(PartitionError, match="task.alpha"):
        dirichlet(np.zeros(100, int), 4, 0, alpha=0)
    with pytest.raises(PartitionError, match="n_workers"):
        iid(np.zeros(3, int), 4, 0)


def test_sampler_streams_do_not_depend_on_visit_order():
    shards = [np.arange(10), np.arange(10, 30)]
    a, b = Sampler(shards, 4, 0), Sampler(shards, 4, 0)
    a0, a1 = a.worker(0), a.worker(1)
    b1, b0 = b.worker(1), b.worker(0)
    assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert set(a1.tolist()) <= set(range(10, 30))
