"""Non-blocking collectives: communication hidden behind computation, same on both simulators."""
import pandas as pd
import pytest

from harness.algorithms import register
from harness.experiment import simulate
from harness.ops import AllReduce, Grad, Record, Start, Wait
from tests.helpers import small


@register("_test_overlap")
def overlap(ctx, x, *, lr: float = 0.1, blocking: bool = False):
    """Test-only: average the model while taking the next gradient step (overlap)."""
    for t in range(ctx.steps):
        if blocking:
            avg = yield AllReduce(x)
            loss, g = yield Grad(x)
            x = avg - lr * g
        else:
            h = yield Start(AllReduce(x))
            loss, g = yield Grad(x)
            x = (yield Wait(h)) - lr * g
        yield Record(step=t + 1, x=x, loss=loss)
    return x


def _run(backend, blocking):
    cfg = small("sync_sgd", algorithm={"name": "_test_overlap", "blocking": blocking}, backend=backend, steps=6,
                compute={"model": "lognormal", "mean_s": 0.05, "sigma": 0.3, "straggler_fraction": 0.0},
                network={"latency_s": 0.01, "bandwidth_Bps": 1e7})
    return simulate(cfg)


def test_overlap_same_on_both_backends_and_faster():
    (da, xa), (db, xb) = _run("simpy", False), _run("stacked", False)
    assert (xa - xb).abs().max() < 1e-10
    cols = ["worker", "step", "time_s", "compute_s", "comm_s", "idle_s", "bytes_sent"]
    a = da[da.worker >= 0][cols].sort_values(["worker", "step"]).reset_index(drop=True)
    b = db[db.worker >= 0][cols].sort_values(["worker", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, atol=1e-12, rtol=0)
    dblock, xblock = _run("simpy", True)
    # hidden communication: the overlapped run is faster, sends the same bytes
    assert da.time_s.max() < dblock.time_s.max() - 0.05
    assert da.bytes_sent.max() == dblock.bytes_sent.max()
    # the arithmetic is the same in both (the average does not depend on the gradient)
    assert (xa - xblock).abs().max() < 1e-10
