"""Time in the language (issue [22]): ``Sleep``/``Until`` and ``Recv(timeout=, deadline=)`` on SimPy
(simulated seconds, exact) and on the real interpreter over loopback (wall seconds, loose bounds);
a backend without the feature is refused when the config is read; bad values are one line."""
from __future__ import annotations

import pytest
import torch

from harness.algorithms import register
from harness.config import ConfigError, expand
from harness.experiment import simulate
from harness.ops import ANY, SERVER, Record, Recv, Send, Sleep, Until

COMPUTE = {"model": "constant", "mean_s": 1.0, "straggler_fraction": 0}
NET = {"latency_s": 0.0, "bandwidth_Bps": 1e12}


@register("_test_time", server=True, requires={"p2p", "time", "timeout"})
def timed(ctx, x):
    """Test-only. The server polls (nothing yet), waits 0.5 s for a message that comes at 1 s
    (None), then until deadline 3 s for it (arrives), then sleeps to t = 5 and records the
    timeline as metrics of its step-1 row; the worker sleeps 1 s, sends, sleeps 0.25 s."""
    if ctx.role == "server":
        got = [(yield Recv(ANY, timeout=0))]
        got.append((yield Recv(ANY, timeout=0.5)))
        got.append((yield Recv(SERVER + 1, deadline=3.0)))
        got.append((yield Recv(ANY, timeout=0.2)))  # nothing more: None after 0.2 s
        yield Until(5.0)
        yield Until(1.0)  # passed: returns at once
        assert [g is None for g in got] == [True, True, False, True], got
        yield Record(step=1, x=x + got[2].x)
        return x
    yield Sleep(1.0)
    yield Send(SERVER, torch.ones_like(x))
    yield Sleep(0.25)
    yield Record(step=1, x=x)
    return x


@register("_test_sleep", requires={"time"})
def sleeper(ctx, x):
    """Test-only, lock-step: worker i sleeps i + 1 seconds per step, then all average."""
    from harness.ops import AllReduce

    for t in range(ctx.steps):
        yield Sleep(float(ctx.index) + 1.0)
        x = yield AllReduce(x)
        yield Record(step=t + 1, x=x)
    return x


def cfg(backend="simpy", **over):
    raw = {"n_workers": 1, "steps": 1, "eval_every": 1, "seed": 0, "backend": backend,
           "task": {"name": "quadratic", "dim": 3, "layers": 1, "dtype": "float64"},
           "compute": COMPUTE, "network": NET, "algorithm": {"name": "_test_time"}, **over}
    return expand(raw)[0]


def test_simpy_waits_in_simulated_seconds_and_a_late_message_is_not_lost():
    df, _ = simulate(cfg())
    server = df[(df.worker == -1) & (df.event == "eval") & (df.step == 1)]
    # 0 (poll) -> 0.5 (timeout) -> 1.0 (message) -> 1.2 (timeout) -> Until(5) -> Until(1) at once
    assert server.time_s.item() == pytest.approx(5.0, abs=1e-12)
    worker = df[(df.worker == 0) & (df.step == 1)]
    assert worker.time_s.item() == pytest.approx(1.25, abs=1e-9)  # + 24 bytes at 1e12 B/s
    assert worker.idle_s.item() == pytest.approx(1.25, abs=1e-12)  # sleeping is idle time


def test_lock_step_sleep_waits_for_the_slowest():
    df, _ = simulate(cfg(n_workers=3, steps=2, algorithm={"name": "_test_sleep"}))
    rows = df[(df.worker >= 0) & (df.step == 2)]
    assert rows.time_s.to_numpy() == pytest.approx([6.0] * 3, abs=1e-9)  # 2 x the slowest's 3 s (+ the all-reduce)
    assert sorted(rows.idle_s.round(6)) == pytest.approx([6.0, 6.0, 6.0], abs=1e-6)  # sleeping, then the barrier


def test_loopback_waits_in_wall_seconds():
    from harness.backends.loopback_run import run

    res = run(cfg(), timeout_s=30)
    rows = res.rows
    server = rows[(rows.worker == -1) & (rows.step == 1)]
    assert 5.0 <= server.time_s.max() < 6.5  # wall clock: Until(5) ended it
    assert torch.allclose(res.finals[0], res.finals[1])  # the server's x is unchanged (x + 1 was only recorded)


def test_recv_timeout_op_values_are_checked():
    with pytest.raises(ValueError, match="Recv.timeout must be a finite number of seconds >= 0"):
        Recv(ANY, timeout=-1)
    with pytest.raises(ValueError, match="Sleep.seconds"):
        Sleep(float("nan"))
    with pytest.raises(ValueError, match="Until.t"):
        Until("soon")
    assert Recv(ANY, timeout=2.0, deadline=1.5).limit(1.0) == 0.5
    assert Recv(ANY, deadline=0.5).limit(1.0) == 0.0 and Recv(ANY).limit(1.0) is None


def test_backends_without_time_are_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="needs 'time', which backend stacked does not support"):
        cfg(backend="stacked", algorithm={"name": "_test_sleep"})
    with pytest.raises(ConfigError, match="needs 'timeout'.*gloo"):
        cfg(backend="torch")
