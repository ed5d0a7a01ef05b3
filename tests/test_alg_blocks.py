"""Building blocks (harness.algorithms.blocks): triggers, averagers, the Optimizer spec spliced
into flat config keys, range annotations failing at config time, check/requires hooks."""
import math

import pytest
import torch

from harness import algorithms, schedules
from harness.algorithms import Ctx, get, hyperparameters, register, requirements, validate_params
from harness.algorithms.blocks import (Optimizer, after, elastic_pull, every, mean_average, outer_step, qsr_rule,
                                       warmup_then_periodic, weighted_average)
from harness.config import ConfigError, expand
from harness.ops import AllReduce
from harness.transforms import adamw, sgd

COSINE = schedules.spec("cosine", lr=0.1)
# every algorithm's defaults before the Optimizer spec: they must not change
OLD_DEFAULTS = {
    "async_easgd": {"tau": 4, "beta": 0.9, "lr": 0.1, "momentum": 0.9},
    "async_local_sgd": {"period": 16, "lr": 0.1, "momentum": 0.0, "inner": "sgd", "outer_lr": 0.7, "outer_momentum": 0.9,
                        "delayed": True, "buffer": 0, "dynamic": True, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0},
    "async_sgd": {"lr": 0.05, "momentum": 0.0},
    "diloco": {"period": 20, "inner": "adamw", "lr": 0.003, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95,
               "momentum": 0.0, "nesterov": False, "outer_lr": 0.7, "outer_momentum": 0.9, "outer_nesterov": True},
    "dppf": {"tau": 4, "alpha": 0.5, "lam": 0.05, "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    "dpsgd": {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "easgd": {"tau": 4, "beta": 0.1, "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    "lgrawa": {"tau": 8, "alpha": 0.5, "p2": 0.01, "smoothing": 0.43, "lr": 0.1, "momentum": 0.9, "nesterov": False,
               "weight_decay": 0.0},
    "local_sgd": {"period": 8, "lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    "lsgd": {"tau": 4, "pull": 0.1, "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    "mgrawa": {"tau": 8, "alpha": 0.5, "p2": 0.01, "smoothing": 0.43, "lr": 0.1, "momentum": 0.9, "nesterov": False,
               "weight_decay": 0.0},
    "palsgd": {"period": 32, "p": 0.2, "eta": 0.1, "sync_warmup": 0, "inner": "sgd", "lr": 0.1, "momentum": 0.9,
               "nesterov": False, "weight_decay": 0.0, "beta1": 0.9, "beta2": 0.95, "outer_lr": 0.7,
               "outer_momentum": 0.9, "outer_nesterov": True},
    "post_local_sgd": {"switch": None, "period": 16, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    "qsr": {"h_base": 4, "alpha": 0.1, "lr": COSINE, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    "sync_sgd": {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0, "backup": 0},
}


# ---- triggers ----------------------------------------------------------------------------
def test_every_and_after_then():
    e = every(3)
    assert [t for t in range(10) if e(t)] == [2, 5, 8] and [e.round(t) for t in range(6)] == [0, 0, 1, 1, 1, 2]
    w = after(4).then(every(3))
    assert [t for t in range(12) if w(t)] == [6, 9] and w == warmup_then_periodic(4, 3)
    assert [w.round(t) for t in range(11)] == [0] * 6 + [1, 1, 1, 2, 2]
    assert [t for t in range(5) if after(0).then(every(1))(t)] == list(range(5))


def test_qsr_rule_rounds_and_lengths():
    lr_at = schedules.make(COSINE, 20)
    q = qsr_rule(2, 0.1, lr_at, 20)
    ends, t = [], 0
    while t < 20:
        eta = lr_at(t)
        t = min(t + max(2, math.floor((0.1 / eta) ** 2)), 20)
        ends.append(t)
    assert [t + 1 for t in range(20) if q(t)] == ends == [2, 4, 6, 8, 10, 14, 20]
    assert [q.round(t) for t in range(20)] == [sum(e <= t + 1 for e in ends) for t in range(20)]
    assert [q.period(t) for t in range(10, 15)] == [4] * 4 + [23]  # the last round's H before the cut
    assert [t for t in range(6) if qsr_rule(4, 0.1, lambda t: 0.0, 6)(t)] == [5]  # lr 0: one round


# ---- averagers ---------------------------------------------------------------------------
def drive(gen):
    """Answer every all-reduce over the stacked rows; returns (result, ops)."""
    ops, value = [], None
    while True:
        try:
            op = gen.send(value)
        except StopIteration as stop:
            return stop.value, ops
        ops.append(op)
        assert isinstance(op, AllReduce)
        red = op.x.mean(0) if op.op == "mean" else op.x.sum(0)
        value = red.expand_as(op.x).clone()


def test_averagers_do_the_maths():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(3, 4, dtype=torch.float64, generator=g), torch.randn(4, dtype=torch.float64, generator=g)
    xbar = x.mean(0)
    assert torch.equal(drive(mean_average(x))[0], xbar.expand_as(x))
    (xn, cn), ops = drive(elastic_pull(x, c, 0.2, 0.6))
    assert len(ops) == 1 and torch.allclose(xn, x - 0.2 * (x - c)) and torch.allclose(cn, 0.4 * c + 0.6 * xbar)
    w = torch.tensor([[1.0, 2.0], [3.0, 1.0], [4.0, 1.0]], dtype=torch.float64)  # per layer: sizes 1 and 3
    center, ops = drive(weighted_average(x, w, torch.tensor([1, 3])))
    wn = w / w.sum(0)
    expect = torch.cat([(wn[:, :1] * x[:, :1]).sum(0), (wn[:, 1:] * x[:, 1:]).sum(0)])
    assert len(ops) == 2 and torch.allclose(center, expect.expand_as(x), atol=1e-14)
    out = Optimizer(lr=0.5, momentum=0.9, nesterov=True).build(10)
    (theta, _), _ = drive(outer_step(c, x, out.transform, out.transform.init(c), out.lr(0)))
    (ref, _), _ = drive(outer_step(c, x, sgd(0.5, 0.9, True), sgd(0.5, 0.9, True).init(c)))
    assert torch.equal(theta, ref)  # unit-rate transform times lr == the transform with lr


# ---- the Optimizer spec ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OLD_DEFAULTS))
def test_defaults_unchanged_and_flat(name):
    params = validate_params(name, {})
    assert {k: params[k] for k in OLD_DEFAULTS[name]} == OLD_DEFAULTS[name]
    assert list(params) == list(hyperparameters(name))
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in params.values())  # hashable hp.* columns
    assert validate_params(name, params) == params  # validated params validate to themselves


def test_splice_keys_and_reassembly():
    seen = {}

    @register("_test_two_optimizers")
    def two(ctx, x, *, period: int = 2, inner: Optimizer = Optimizer(lr=0.3), outer: Optimizer = Optimizer(lr=0.7)):
        seen.update(inner=inner, outer=outer)
        yield from ()

    keys = list(hyperparameters("_test_two_optimizers"))
    assert keys == ["period", "inner", "lr", "momentum", "nesterov", "weight_decay", "beta1", "beta2", "eps",
                    "outer", "outer_lr", "outer_momentum", "outer_nesterov", "outer_weight_decay", "outer_beta1",
                    "outer_beta2", "outer_eps"]
    p = validate_params("_test_two_optimizers", {"inner": "adamw", "beta2": 0.95, "outer_lr": {"name": "cosine", "lr": 1.0}})
    list(get("_test_two_optimizers")(Ctx(2, 4, 0), torch.zeros(2), **p))
    assert seen["inner"] == Optimizer(name="adamw", lr=0.3, beta2=0.95)
    assert seen["outer"] == Optimizer(lr=schedules.spec("cosine", lr=1.0), momentum=0.0)
    list(get("_test_two_optimizers")(Ctx(2, 4, 0), torch.zeros(2), inner=Optimizer(lr=0.2), momentum=0.5))
    assert seen["inner"] == Optimizer(lr=0.2, momentum=0.5) and seen["outer"] == Optimizer(lr=0.7)
    with pytest.raises(ValueError, match="collide"):
        register("_test_collide")(lambda ctx, x, *, inner=Optimizer(), lr=0.1: None)


@pytest.mark.parametrize("kw", [dict(lr=0.1), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                                dict(name="adamw", lr=3e-3, beta2=0.95, weight_decay=0.1)])
def test_build_equals_the_transform_with_its_lr_bit_for_bit(kw):
    opt = Optimizer(**kw)
    ref = adamw(kw["lr"], (0.9, 0.95), weight_decay=0.1) if opt.name == "adamw" else sgd(opt.lr, opt.momentum, opt.nesterov, opt.weight_decay)
    t, lr_at = opt.build(5)
    g = torch.Generator().manual_seed(1)
    p = q = torch.randn(6, dtype=torch.float64, generator=g)
    s, r = t.init(p), ref.init(q)
    for k in range(5):
        grad = torch.randn(6, dtype=torch.float64, generator=g)
        u, s = t.update(grad, s, p)
        v, r = ref.update(grad, r, q)
        p, q = p + lr_at(k) * u, q + v
    assert torch.equal(p, q)


# ---- config-time failures and hooks ------------------------------------------------------
@pytest.mark.parametrize("alg,msg", [
    ({"name": "local_sgd", "period": 0}, "algorithm.period: Input should be greater than or equal to 1"),
    ({"name": "palsgd", "p": 1.0}, "algorithm.p: Input should be less than 1"),
    ({"name": "easgd", "beta": 1.5}, "algorithm.beta: Input should be less than or equal to 1"),
    ({"name": "mgrawa", "smoothing": 1.0}, "algorithm.smoothing: Input should be less than 1"),
    ({"name": "diloco", "outer_momentum": -0.1}, "algorithm.outer_momentum: Input should be greater than or equal to 0"),
    ({"name": "diloco", "inner": "adam"}, "algorithm.inner: Input should be 'sgd' or 'adamw'"),
    ({"name": "post_local_sgd", "switch": -1}, "algorithm.switch: Input should be greater than or equal to 0"),
    ({"name": "sync_sgd", "backup": 4}, "algorithm.backup: must be in 0..n_workers-1 = 3, got 4"),
    ({"name": "palsgd", "eta": 0.3}, "algorithm.eta: must be <= p"),
])
def test_bad_values_fail_when_the_config_is_read(alg, msg):
    with pytest.raises(ConfigError) as e:
        expand({"algorithm": alg, "n_workers": 4})
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_requirements():
    assert requirements("sync_sgd", {}) == set() and requirements("sync_sgd", {"name": "sync_sgd", "backup": 1}) == {"quorum"}
    assert requirements("dpsgd", {}) == {"gossip"}
    for name in ("async_sgd", "async_easgd", "async_local_sgd"):
        assert requirements(name, {}) == {"p2p", "server"}
    for name in ("local_sgd", "post_local_sgd", "qsr", "diloco", "palsgd", "easgd", "lsgd", "mgrawa", "lgrawa", "dppf"):
        assert requirements(name, {}) == set()
    assert set().union(*(requirements(n, {}) for n in algorithms.ALGORITHMS if not n.startswith("_"))) <= \
        algorithms.FEATURES | {"server"}
    with pytest.raises(ValueError, match="unknown feature"):
        register("_test_bad_feature", requires={"telepathy"})


def test_a_nested_optimizer_block_means_the_flat_keys():
    from harness.config import expand

    flat = expand({"n_workers": 2, "algorithm": {"name": "diloco", "lr": 0.01, "outer_lr": 0.5}})[0]
    nested = expand({"n_workers": 2, "algorithm": {"name": "diloco", "inner": {"name": "adamw", "lr": 0.01},
                                                   "outer": {"lr": 0.5}}})[0]
    assert nested.algorithm == flat.algorithm and nested.run_id == flat.run_id
    for bad, word in (({"inner": {"lrr": 1}}, "algorithm.inner.lrr: not an optimizer field"),
                      ({"inner": {"lr": 1}, "lr": 2}, "given twice")):
        with pytest.raises(ValueError, match=word):
            expand({"n_workers": 2, "algorithm": {"name": "local_sgd", **bad}})
