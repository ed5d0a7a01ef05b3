"""Learning-rate schedules, their validation in configs, and the quadratic task."""
import json
import math

import pytest
import torch

from harness import schedules
from harness.config import ConfigError, expand
from harness.experiment import simulate
from harness.tasks import build_task


def values(spec, steps, n=None):
    at = schedules.make(spec, steps)
    return [at(t) for t in range(n or steps)]


def test_constant_and_number():
    assert values(0.3, 4) == [0.3] * 4
    assert values({"name": "constant", "lr": 0.2}, 3) == [0.2] * 3


def test_step_decay():
    assert values({"name": "step", "lr": 1.0, "milestones": [2, 4], "decay": 0.5}, 6) == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert values({"name": "step", "lr": 1.0, "every": 3, "decay": 0.1}, 7) == pytest.approx([1, 1, 1, .1, .1, .1, .01])


def test_cosine_and_linear():
    cos = values({"name": "cosine", "lr": 1.0, "final": 0.1}, 4, 5)
    assert cos == pytest.approx([1.0, 0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2, 0.55,
                                 0.1 + 0.9 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.1])
    assert values({"name": "linear", "lr": 1.0, "total": 4}, 100, 6) == pytest.approx([1, .75, .5, .25, 0, 0])


def test_warmup_composes_with_any_schedule():
    # 2 warm-up steps ramp to the peak, then the cosine runs over the remaining 4 steps
    v = values({"name": "cosine", "lr": 1.0, "warmup": 2}, 6)
    assert v == pytest.approx([0.5, 1.0, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    assert values({"name": "step", "lr": 1.0, "warmup": 4, "milestones": [1]}, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 0.1]


def test_spec_is_canonical_text_and_round_trips():
    text = schedules.canonical({"name": "cosine", "lr": 0.1})
    assert json.loads(text) == {"name": "cosine", "lr": 0.1, "final": 0.0, "warmup": 0, "total": None}
    assert schedules.canonical(text) == text == schedules.spec("cosine", lr=0.1)
    assert schedules.canonical("0.5") == 0.5 and schedules.canonical(2) == 2.0


@pytest.mark.parametrize("lr,msg", [({"name": "cosin", "lr": 0.1}, "unknown schedule 'cosin'"),
                                    ({"name": "cosine", "lr": 0.1, "every": 3}, "unknown key(s) ['every']"),
                                    ({"name": "cosine"}, "needs a peak lr"),
                                    ({"name": "linear", "lr": 1, "warmup": 5, "total": 5}, "warmup < total"),
                                    (-0.1, "must be >= 0"), ("fast", "expected a number")])
def test_bad_schedules_name_the_field(lr, msg):
    with pytest.raises(ConfigError) as e:
        expand({"algorithm": {"name": "easgd", "lr": lr}})
    assert str(e.value).startswith("algorithm.lr: ") and msg in str(e.value)


def test_schedule_drives_a_run_and_lands_in_a_hashable_column():
    cfg = expand({"n_workers": 2, "steps": 8, "eval_every": 4, "backend": "stacked", "task": {"name": "quadratic"},
                  "algorithm": {"name": "easgd", "lr": {"name": "step", "lr": 0.1, "milestones": [4], "decay": 0.0}}})[0]
    df, x = simulate(cfg)
    assert df["hp.lr"].nunique() == 1 and isinstance(df["hp.lr"].iloc[0], str)
    after = df[(df.worker == 0) & (df.step >= 5)].train_loss
    assert after.nunique() == 1  # lr 0 after the milestone: no more movement, same loss


def test_quadratic_gradients_are_exact_and_optimum_is_right():
    task = build_task({"name": "quadratic", "dim": 5, "a_min": 0.5, "a_max": 3.0, "batch_size": 7}, 3, seed=1)
    x = torch.randn(3, 5, dtype=torch.float64)
    idx = torch.tensor([[0] * 7, [1] * 7, [2] * 7])
    loss, g = task.loss_and_grad(x, idx)
    assert torch.allclose(g, task.a * (x - task.c), rtol=0, atol=1e-14)
    assert torch.allclose(loss, 0.5 * (task.a * (x - task.c) ** 2).sum(-1))
    l0, g0 = task.loss_and_grad(x[0], idx[0])  # per-worker form
    assert torch.allclose(g0, g[0]) and torch.allclose(l0, loss[0])
    full = (task.a * (task.optimum - task.c)).sum(0)  # gradient of sum_i f_i at x*
    assert full.abs().max() < 1e-12
    ev = task.evaluate(task.optimum)
    assert ev["test_acc"] == 1.0 and abs(ev["test_loss"]) < 1e-12
    worse = task.evaluate(task.optimum + 1)
    assert worse["test_loss"] > 0 and worse["test_acc"] == pytest.approx(math.exp(-math.sqrt(5)))
    assert task.segments == [(0, 2), (2, 5)]


def test_quadratic_params_are_validated():
    with pytest.raises(ConfigError, match="task.dim"):
        expand({"algorithm": "sync_sgd", "task": {"name": "quadratic", "dim": 0}})
    with pytest.raises(ConfigError, match="task.hidden"):
        expand({"algorithm": "sync_sgd", "task": {"name": "quadratic", "hidden": [3]}})
    with pytest.raises(ConfigError, match="a_max"):
        expand({"algorithm": "sync_sgd", "task": {"name": "quadratic", "a_min": 2.0, "a_max": 1.0}})
