"""(init, update) transforms equal PyTorch's optimizers, on [d] and on stacked [n, d]."""
import pytest
import torch

from harness.transforms import adamw, chain, sgd


def _torch_run(opt_cls, kw, grads, p0):
    p = torch.nn.Parameter(p0.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def _ours(t, grads, p0):
    p, s = p0.clone(), t.init(p0)
    for g in grads:
        u, s = t.update(g, s, p)
        p = p + u
    return p


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)])
def test_sgd_matches_torch(kw):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(7, dtype=torch.float64, generator=g)
    grads = [torch.randn(7, dtype=torch.float64, generator=g) for _ in range(5)]
    ours = _ours(sgd(**kw), grads, p0)
    ref = _torch_run(torch.optim.SGD, kw, grads, p0)
    assert torch.allclose(ours, ref, atol=1e-14)


def test_adamw_matches_torch():
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(9, dtype=torch.float64, generator=g)
    grads = [torch.randn(9, dtype=torch.float64, generator=g) for _ in range(6)]
    kw = dict(lr=4e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours = _ours(adamw(**kw), grads, p0)
    ref = _torch_run(torch.optim.AdamW, kw, grads, p0)
    assert torch.allclose(ours, ref, atol=1e-12)


def test_stacked_rows_equal_single_runs():
    g = torch.Generator().manual_seed(2)
    P0 = torch.randn(3, 5, dtype=torch.float64, generator=g)
    G = [torch.randn(3, 5, dtype=torch.float64, generator=g) for _ in range(4)]
    t = adamw(lr=1e-2, weight_decay=0.01)
    stacked = _ours(t, G, P0)
    for i in range(3):
        assert torch.equal(stacked[i], _ours(t, [x[i] for x in G], P0[i]))


def test_chain_equals_applying_by_hand():
    a, b = sgd(lr=1.0, momentum=0.5), sgd(lr=0.1)  # lr=1 momentum as a gradient filter, then scaled step
    t = chain(a, b)
    p = torch.ones(4)
    s = t.init(p)
    sa, sb = a.init(p), b.init(p)
    for k in range(3):
        g = torch.full((4,), float(k + 1))
        u, s = t.update(g, s, p)
        ua, sa = a.update(g, sa, p)
        ub, sb = b.update(ua, sb, p)
        assert torch.equal(u, ub)
