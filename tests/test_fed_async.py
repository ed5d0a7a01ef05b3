"""Asynchronous federated methods (issue [22]): FedAsync, FedBuff, FedFix. Server rules by hand
(the generator driven with scripted arrivals), FedBuff(K=1, no weighting) == FedAsync(mixing 1),
staleness rows and exact bytes on SimPy, the real interpreter over loopback, config-time refusals."""
import math

import pytest
import torch

from harness.algorithms import Ctx, get
from harness.algorithms.fedasync import META, MODEL, STOP, staleness_factor
from harness.config import ConfigError, expand
from harness.experiment import simulate
from harness.ops import ANY, Message, Rand, Record, Recv, Send

F64 = torch.float64


def t(*v):
    return torch.tensor(v, dtype=F64)


def drive(name, arrivals, n=2, steps=3, sizes=(3, 1, 2, 2), **hp):
    """Run a server generator: ``Rand`` answers 0 (the lowest idle client), ``Recv(ANY)`` takes the
    next of ``arrivals`` (``(src, x)``, or ``None``: the deadline passed), ``Recv(src)`` (the final
    collection) gets zeros. Returns the sends, update rows (src, staleness), models, Recv ops."""
    ctx = Ctx(n, steps, 0, index=torch.tensor(0), role="server", rank=0, n_clients=len(sizes), part_sizes=sizes,
              batch_size=1)
    gen = get(name)(ctx, torch.zeros(2, dtype=F64), **hp)
    sends, updates, models, recvs, value, script = [], [], [], [], None, iter(arrivals)
    while True:
        try:
            op = gen.send(value)
        except StopIteration as stop:
            assert next(script, "end") == "end", "arrivals left over"
            return sends, updates, models, recvs, stop.value
        value = None
        if isinstance(op, Rand):
            value = torch.tensor(0.0, dtype=F64)
        elif isinstance(op, Send):
            sends.append(op)
        elif isinstance(op, Recv):
            recvs.append(op)
            if op.src == ANY:
                a = next(script)
                value = None if a is None else Message(a[0], MODEL, a[1])
            else:
                value = Message(op.src, MODEL, torch.zeros(2, dtype=F64))
        elif isinstance(op, Record):
            (updates.append((op.src, op.staleness)) if op.staleness is not None else models.append(op.x))


def metas(sends):
    return [(s.dst, *s.x.tolist()) for s in sends if s.tag == META]


def test_fedasync_mixes_with_the_polynomial_staleness_function_by_hand():
    sends, updates, models, _, _ = drive("fedasync", [(1, t(4, 0)), (2, t(0, 8)), (1, t(2, 2))], alpha=0.5,
                                         staleness="polynomial", a=1.0)
    # s(t - tau) = 1 / (t - tau + 1): arrival 1 is fresh (t - tau = 1): alpha_t = 0.25; arrivals 2, 3: 1/6
    x1 = 0.25 * t(4, 0)
    x2 = 5 / 6 * x1 + 1 / 6 * t(0, 8)
    x3 = 5 / 6 * x2 + 1 / 6 * t(2, 2)
    assert torch.allclose(torch.stack(models), torch.stack([x1, x2, x3]), atol=1e-15, rtol=0)
    assert updates == [(1, 0), (2, 1), (1, 1)]
    # (slot, client, assignment j, version tau): the lowest idle client each time
    assert metas(sends) == [(1, 0, 0, 0), (2, 1, 1, 0), (1, 0, 2, 1), (2, 1, 3, 2)]
    stops = [s.dst for s in sends if s.tag == STOP]
    assert stops == [1, 2] and all(s.x.numel() == 0 for s in sends if s.tag == STOP)


def test_staleness_functions_are_the_papers():
    assert staleness_factor("constant", 7, 0.5, 4) == 1.0
    assert staleness_factor("polynomial", 3, 0.5, 4) == 4 ** -0.5
    assert staleness_factor("hinge", 1, 0.5, 1) == 1.0 and staleness_factor("hinge", 3, 0.5, 1) == 0.5


def test_fedbuff_buffers_k_updates_weighted_by_staleness_by_hand():
    d = [t(2, 0), t(0, 4), t(3, 3), t(1, -1)]
    _, updates, models, _, _ = drive("fedbuff", [(1, d[0]), (2, d[1]), (1, d[2]), (2, d[3])], steps=2, buffer=2,
                                     server_lr=0.5)
    x1 = -0.5 * (d[0] + d[1]) / 2
    x2 = x1 - 0.5 * (d[2] / math.sqrt(2) + d[3]) / 2  # slot 1 pulled version 0 and arrives after version 1
    assert torch.allclose(torch.stack(models), torch.stack([x1, x2]), atol=1e-15, rtol=0)
    assert updates == [(1, 0), (2, 0), (1, 1), (2, 0)]


def test_fedfix_aggregates_what_arrived_before_each_deadline_by_hand():
    arrivals = [(1, t(4, 0)), (2, t(0, 4)), None, (2, t(2, 2)), None, (1, t(1, 1)), None]
    sends, updates, models, recvs, _ = drive("fedfix", arrivals, steps=3, period_s=1.5)
    x1 = -(3 / 4 * t(4, 0) + 1 / 4 * t(0, 4))  # clients 0 (3 samples) and 1 (1 sample)
    x2 = x1 - t(2, 2)
    x3 = x2 - t(1, 1)
    assert torch.allclose(torch.stack(models), torch.stack([x1, x2, x3]), atol=1e-15, rtol=0)
    assert updates == [(1, 0), (2, 0), (2, 0), (1, 1)]  # slot 1 kept computing through round 2
    assert [r.deadline for r in recvs if r.src == ANY] == [1.5, 1.5, 1.5, 3.0, 3.0, 4.5, 4.5]
    assert metas(sends) == [(1, 0, 0, 0), (2, 1, 1, 0), (1, 0, 2, 1), (2, 1, 3, 1), (2, 1, 4, 2)]


def cfg(name, backend="simpy", n=3, clients=6, steps=6, **hp):
    raw = {"n_workers": n, "n_clients": clients, "steps": steps, "eval_every": 2, "seed": 1, "backend": backend,
           "task": {"name": "quadratic", "dim": 4, "layers": 1, "dtype": "float64"},
           "compute": {"model": "lognormal", "mean_s": 0.01, "sigma": 0.5},
           "network": {"latency_s": 0.001, "bandwidth_Bps": 1e7},
           "algorithm": {"name": name, "local_epochs": 0, "local_steps": 2, **hp}}
    return expand(raw)[0]


def test_fedbuff_with_k1_and_no_weighting_equals_fedasync_with_mixing_1():
    a, _ = simulate(cfg("fedasync", n=1, alpha=1.0, staleness="constant"))
    b, _ = simulate(cfg("fedbuff", n=1, buffer=1, staleness_weighting=False, server_lr=1.0))
    for df in (a, b):
        assert (df[df.event == "update"].staleness == 0).all()  # one slot: never stale
    ea, eb = (d[d.event == "eval"].sort_values("step") for d in (a, b))
    assert ea.test_loss.to_numpy() == pytest.approx(eb.test_loss.to_numpy(), rel=1e-12, abs=0)
    wa, wb = (d[d.worker == 0].sort_values(["step", "round"]) for d in (a, b))
    assert wa.train_loss.to_numpy() == pytest.approx(wb.train_loss.to_numpy(), rel=1e-12, abs=0, nan_ok=True)
    assert (wa.time_s.to_numpy() == wb.time_s.to_numpy()).all() and wa.client.fillna(-1).eq(wb.client.fillna(-1).values).all()


def test_fedasync_staleness_rows_and_exact_bytes_on_simpy():
    n, steps = 3, 6
    df, _ = simulate(cfg("fedasync", n=n, steps=steps))
    up = df[df.event == "update"].sort_values("step")
    assert len(up) == steps and up.staleness.max() >= 1 and set(up.worker) <= set(range(n))
    model = 8 * 4  # float64, dim 4
    last = up.iloc[-1]  # the server's counters when it applied the last update
    assert last.bytes_recv == steps * model
    assert last.bytes_sent == (n + steps - 1) * (model + 3 * 8)  # model + (client, j, tau) per assignment
    assert last.messages == 2 * (n + steps - 1)
    assert df[df.worker >= 0].client.dropna().between(0, 5).all()


@pytest.mark.parametrize("name,hp", [("fedasync", {}), ("fedbuff", {"buffer": 2}), ("fedfix", {"period_s": 0.05})])
def test_the_real_interpreter_runs_them_over_loopback(name, hp):
    from harness.backends.loopback_run import run

    res = run(cfg(name, steps=4, **hp), timeout_s=60)
    rows = res.rows
    assert set(rows[rows.event == "eval"].step) == {0, 2, 4}
    up = rows[rows.event == "update"]
    assert len(up) >= (4 if name != "fedbuff" else 8) - (4 if name == "fedfix" else 0) and (up.staleness >= 0).all()
    assert torch.isfinite(res.finals[0]).all()


def test_backends_that_cannot_run_them_are_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="needs 'timeout'.*gloo"):
        cfg("fedfix", backend="torch")
    with pytest.raises(ConfigError, match="stacked"):
        cfg("fedasync", backend="stacked")
    with pytest.raises(ConfigError, match="algorithm.local_epochs: give local_epochs or local_steps"):
        cfg("fedbuff", local_steps=0)
    with pytest.raises(ConfigError, match="algorithm.alpha"):
        cfg("fedasync", alpha=1.5)


@pytest.mark.mpi
@pytest.mark.slow
def test_fedfix_and_fedasync_under_mpiexec(tmp_path):
    """The real MPI transport: FedFix's receive with a deadline (Iprobe) and FedAsync's arrivals."""
    import pandas as pd
    import yaml

    from tests.test_real_backends import launch

    base = {"n_workers": 3, "n_clients": 6, "steps": 4, "eval_every": 2, "seed": 1,
            "task": {"name": "quadratic", "dim": 4, "layers": 1, "dtype": "float64"}}
    cases = [{"algorithm": {"name": "fedfix", "period_s": 0.05, "local_epochs": 0, "local_steps": 2}},
             {"algorithm": {"name": "fedasync", "local_epochs": 0, "local_steps": 2}}]
    path = tmp_path / "fed.yaml"
    path.write_text(yaml.safe_dump({**base, "cases": cases}))
    proc = launch("mpi", path, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = [pd.read_parquet(p) for p in sorted((tmp_path / "out").glob("*/metrics.parquet"))]
    assert len(runs) == 2
    for df in runs:
        assert set(df[df.event == "eval"].step) == {0, 2, 4} and (df[df.event == "update"].staleness >= 0).all()
    fix = next(d for d in runs if d["cfg.algorithm.name" if "cfg.algorithm.name" in d else "algorithm"].iloc[0] == "fedfix")
    assert fix[fix.event == "eval"].time_s.max() >= 4 * 0.05  # four rounds of 50 ms on the wall clock
