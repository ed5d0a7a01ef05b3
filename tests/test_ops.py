"""AllGather, Rand and ctx.mine behave the same on per-worker and stacked backends."""
import torch

from harness.cost import NetworkSpec
from harness.algorithms import register
from harness.experiment import simulate
from harness.ops import AllGather, AllReduce, Grad, Rand, Record
from tests.helpers import small


@register("_test_leader_pull")
def leader_pull(ctx, x, *, lr: float = 0.1, pull: float = 0.5):
    """Test-only: pull towards the lowest-loss worker, skip the step on a coin flip."""
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        coin = (yield Rand()) < 0.3
        x = torch.where(coin.unsqueeze(-1), x, x - lr * g)
        losses = yield AllGather(loss)                                  # [n] or [n, n]
        onehot = (losses == losses.min(-1, keepdim=True).values).to(x.dtype)
        leader = yield AllReduce(ctx.mine(onehot).unsqueeze(-1) * x, op="sum")
        x = x - pull * (x - leader)
        yield Record(step=t + 1, x=x, loss=loss, metrics={"coin": coin.to(torch.float64)})
    return x


def test_leader_pull_same_on_both_backends():
    out = {b: simulate(small("sync_sgd", algorithm={"name": "_test_leader_pull"}, backend=b, steps=10)) for b in ("simpy", "stacked")}
    (da, xa), (db, xb) = out["simpy"], out["stacked"]
    assert (xa - xb).abs().max() < 1e-12
    assert 0 < da.coin.sum() < 40 and da.coin.sum() == db.coin.sum()  # the coin really varied
    # bytes: gather of one float64 loss + all-reduce of the model, per step
    d = xa.shape[1]
    net = NetworkSpec()
    per_step = net.allgather_cost([8] * 4, range(4)).traffic[0].sent + net.allreduce_cost(8 * d, range(4)).traffic[0].sent
    last = da[(da.worker == 0) & (da.step == 10)].bytes_sent.item()
    assert last == 10 * per_step


def test_mine_picks_own_entry():
    from harness.algorithms import Ctx

    v = torch.tensor([[0.0, 1.0, 2.0], [10.0, 11.0, 12.0], [20.0, 21.0, 22.0]])
    stacked = Ctx(3, 1, 0, index=torch.arange(3))
    assert torch.equal(stacked.mine(v), torch.tensor([0.0, 11.0, 22.0]))
    assert Ctx(3, 1, 0, index=torch.tensor(2)).mine(v[2]).item() == 22.0
