"""Issue [20]: state with an owner.

* a stateful method with momentum under client sampling, written with parts (``masked`` +
  ``keyed``), equals the same method threaded and masked by hand, bit for bit; unsampled
  workers keep their model and their momentum; SimPy = stacked bit for bit, the real driver
  (loopback here; MPI and gloo in test_real_backends) equal to 1e-10 in float64;
* a user adds an aggregator, an op of a known pattern and a codec, each in one file
  (``tests/plugins/``), and every interpreter runs them with the same numbers;
* keyed rows: a key never saved reads its default, a non-member saves nothing.
"""
import pandas as pd
import pytest
import torch

import tests.plugins.absmax_aggregator  # noqa: F401 (registers "absmax")
import tests.plugins.int8_codec  # noqa: F401 (registers "int8")
from harness import aggregators, codecs, ops, parts
from harness.algorithms import Ctx, register
from harness.algorithms.blocks import Optimizer, every, sample_members
from harness.experiment import simulate
from harness.keyed import DictStore, RowStore
from tests.helpers import small
from tests.plugins.broadcast_op import Broadcast

M = 2  # sampled workers per step


@register("_v3_masked_momentum", requires={"members"})
def v3_masked_momentum(*, m: int = M, inner: Optimizer = Optimizer(lr=0.1, momentum=0.9)):
    """Momentum SGD on m sampled workers per step; the others keep model and momentum."""
    local = parts.keyed(parts.chain(parts.grad(), parts.local_step(inner)), name="opt")
    norm = parts.metric("xnorm", lambda ctx, s: torch.linalg.vector_norm(s.x, dim=-1))
    return parts.chain(parts.when(every(1), parts.masked(local, parts.sampled(m))), norm)


@register("_v3_by_hand", requires={"members"})
def v3_by_hand(ctx, x, *, m: int = M, lr: float = 0.1, mu: float = 0.9):
    """The same method with its state threaded and masked by hand (the v2 way)."""
    mom = torch.zeros_like(x)
    for t in range(ctx.steps):
        S = sample_members(ctx.seed, t, ctx.n_workers, m)
        loss, g = yield ops.Grad(x, members=S)
        new = mu * mom + g
        mine = ctx.member(S).unsqueeze(-1)
        x, mom = torch.where(mine, x + lr * (-1.0 * new), x), torch.where(mine, new, mom)
        yield ops.Record(step=t + 1, round=t + 1, x=x, loss=loss,
                         metrics={"xnorm": torch.linalg.vector_norm(x, dim=-1)})
    return x


@register("_v3_plugins", requires={"codec"})
def v3_plugins(ctx, x, *, lr: float = 0.1):
    """Uses the three plugins: an absmax all-reduce of int8-coded gradients, then the root's model."""
    for t in range(ctx.steps):
        loss, g = yield ops.Grad(x)
        g = yield ops.AllReduce(g, reduce="absmax", codec="int8")
        x = yield Broadcast(x - lr * g, root=t % ctx.n_workers)
        yield ops.Record(step=t + 1, round=t + 1, x=x, loss=loss)
    return x


def _cfg(alg, backend="simpy", dtype="float64", **over):
    return small("sync_sgd", backend=backend, steps=10, eval_every=5, algorithm={"name": alg, **over},
                 task={"name": "digits", "dtype": dtype, "hidden": [16], "batch_size": 16})


def _rows(df):
    cols = ["worker", "step", "event", "train_loss", "xnorm", "time_s", "bytes_sent", "messages", "test_acc"]
    return df[[c for c in cols if c in df]].sort_values(["worker", "step", "event"]).reset_index(drop=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parts_with_masked_keyed_state_equal_the_method_masked_by_hand(dtype):
    for b in ("simpy", "stacked"):
        a, xa = simulate(_cfg("_v3_masked_momentum", b, dtype))
        h, xh = simulate(_cfg("_v3_by_hand", b, dtype))
        assert torch.equal(xa, xh), b
        pd.testing.assert_frame_equal(_rows(a), _rows(h), check_exact=True)
    s, xs = simulate(_cfg("_v3_masked_momentum", "simpy", dtype))
    k, xk = simulate(_cfg("_v3_masked_momentum", "stacked", dtype))
    assert torch.equal(xs, xk)
    pd.testing.assert_frame_equal(_rows(s), _rows(k), check_exact=True)


def test_unsampled_workers_keep_model_and_momentum():
    cfg = _cfg("_v3_masked_momentum", "stacked")
    df, _ = simulate(cfg)
    w = df[(df.worker >= 0) & (df.event == "step")].pivot(index="step", columns="worker", values="xnorm")
    moved = 0
    for t in range(1, cfg.steps + 1):
        S = sample_members(cfg.seed, t - 1, cfg.n_workers, M)
        for i in range(cfg.n_workers):
            if t > 1 and i not in S:
                assert w.loc[t, i] == w.loc[t - 1, i], (t, i)  # the model did not move
            moved += i in S and t > 1 and w.loc[t, i] != w.loc[t - 1, i]
    assert moved > 0
    # the momentum did not decay while a worker sat out: equal to the by-hand method, whose
    # momentum is masked explicitly (a decayed momentum would change the next sampled step)
    hand, _ = simulate(_cfg("_v3_by_hand", "stacked"))
    pd.testing.assert_series_equal(_rows(df).xnorm, _rows(hand).xnorm, check_exact=True)


def test_real_driver_equals_simpy_with_keyed_masked_state():
    from harness.backends import loopback_run

    cfg = _cfg("_v3_masked_momentum")
    got = loopback_run.run(cfg)
    _, sim = simulate(cfg)
    assert (got.workers - sim).abs().max().item() < 1e-10


def test_plugins_aggregator_op_codec_in_one_file_each_on_every_interpreter():
    from harness.backends import loopback_run

    out = {b: simulate(_cfg("_v3_plugins", b)) for b in ("simpy", "stacked")}
    (ds, xs), (dk, xk) = out["simpy"], out["stacked"]
    assert torch.equal(xs, xk)
    pd.testing.assert_frame_equal(_rows(ds), _rows(dk), check_exact=True)
    assert torch.equal(xs, xs[0].expand_as(xs))  # the broadcast left every worker with the root's model
    real = loopback_run.run(_cfg("_v3_plugins"))
    assert (real.workers - xs).abs().max().item() < 1e-10
    # bytes: the int8 payloads (8 bits an entry + a 32-bit scale) of a gathered (non-linear) reduce
    d = xs.shape[1]
    agg = small("sync_sgd").network.allgather_cost([(8 * d + 32 + 7) // 8] * 4, range(4)).traffic[0].sent
    bc = small("sync_sgd").network.allgather_cost([d * 8, 0, 0, 0], range(4)).traffic[0].sent
    last = ds[(ds.worker == 0) & (ds.event == "step")].bytes_sent.max()
    assert last > 0 and abs(last - 10 * agg - sum(
        small("sync_sgd").network.allgather_cost([d * 8 if j == t % 4 else 0 for j in range(4)], range(4)).traffic[0].sent
        for t in range(10))) < 1e-6, (last, agg, bc)


def test_aggregators_median_trimmed_mean_and_one_line_errors():
    p = [torch.tensor([1.0, -5.0]), torch.tensor([2.0, 0.0]), torch.tensor([9.0, 1.0])]
    assert torch.equal(aggregators.parse("median").combine(p), torch.tensor([2.0, 0.0]))
    assert torch.equal(aggregators.parse("trimmed_mean:1").combine(p), torch.tensor([2.0, 0.0]))
    assert torch.equal(aggregators.parse("absmax").combine(p), torch.tensor([9.0, -5.0]))
    assert ops.AllReduce(p[0], reduce="median").native is None  # gathered, never a native sum
    assert ops.AllReduce(p[0]).native == "sum"
    for bad, word in (("krum", "unknown aggregator"), ("trimmed_mean:x", "whole number"), ("median:3", "no arguments")):
        with pytest.raises(ValueError, match=word):
            aggregators.parse(bad)
    with pytest.raises(ValueError, match="built-in codec"):
        codecs.register("sign")
    assert codecs.parse("int8").wire_bits(torch.zeros(10)) == 112


def test_keyed_rows_default_and_members():
    store = RowStore(5)
    default = (torch.zeros(3, 2), torch.zeros(3, 1))
    keys = torch.tensor([4, 0, 2])
    got = store.load("s", keys, default, rows=[0, 1, 2])
    assert all(torch.equal(a, b) for a, b in zip(got, default))  # never saved: the default
    store.save("s", keys, (torch.ones(3, 2), torch.full((3, 1), 7.0)), rows=[0, 2])  # worker 1 is no member
    got = store.load("s", torch.tensor([0, 4, 2]), default, rows=[0, 1, 2])
    assert got[0][:, 0].tolist() == [0.0, 1.0, 1.0] and got[1][:, 0].tolist() == [0.0, 7.0, 7.0]
    d = DictStore(4, hosted=lambda k: k % 2 == 0)
    assert d.load("s", 2, "dflt") == "dflt"
    with pytest.raises(ValueError, match="hosted by another rank"):
        d.load("s", 1, "dflt")
    with pytest.raises(ValueError, match="key 9 is not in 0..3"):
        d.save("s", 9, 0)


def test_register_refuses_to_overwrite_a_builtin_and_a_factory_must_return_a_part():
    with pytest.raises(ValueError, match="exists already"):
        register("sync_sgd")(lambda ctx, x: None)

    @register("_v3_not_a_part")
    def bad(*, lr: float = 0.1):
        return 42

    with pytest.raises(TypeError, match="must return a harness.parts.Part"):
        next(bad(Ctx(1, 1, 0), torch.zeros(2)))


def test_one_assembly_gives_ctx_the_parameter_shapes_and_clients():
    from harness.assembly import assemble

    a = assemble(_cfg("local_sgd"))
    assert a.ctx.n_clients == a.ctx.n_workers == 4
    assert sum(s[0] for _, s in a.ctx.params) == a.task.dim and len(a.ctx.params) == len(a.task.segments)
    assert a.params["period"] == 8 and a.sampler is not None and a.topology is None


def test_masked_forwards_what_the_backend_throws_in():
    def inner_step(ctx, s, state):
        try:
            yield ops.AllReduce(s.x)
        except ops.WorkerFailed:
            return s._replace(x=s.x + 1), state
        return s, state

    p = parts.masked(parts.part(inner_step), (0, 1))
    ctx = Ctx(2, 1, 0, index=torch.tensor(0))
    gen = p.step(ctx, parts.Step(t=0, x=torch.zeros(2)), ())
    op = next(gen)
    assert op.members == (0, 1)
    with pytest.raises(StopIteration) as stop:
        gen.throw(ops.WorkerFailed(1, 0.5))
    assert torch.equal(stop.value.value[0].x, torch.ones(2))
