"""Calibration (issue [17]): the fits recover known values from synthetic traces, slowdown
injection makes known stragglers on the real interpreter, and ``harness calibrate`` on 4 MPI
ranks writes a fragment that loads as a config and that ``harness predict`` replays.

Synthetic traces are drawn from the simulators' own models (``ComputeTimes``, ``NetworkSpec``)
with noise, so "recovered" means: the fit gives back the parameters the simulator would need
to reproduce the trace.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.calibration.fit import fit_compute, fit_network, insitu_delay
from harness.calibration.measure import step_compute
from harness.config import ConfigError, deep_merge, expand, resolve
from harness.cost import NetworkSpec
from harness.models.compute import ComputeSpec, ComputeTimes
from tests.test_real_backends import BACKENDS

ROOT = Path(__file__).resolve().parents[1]


def _launch_env() -> dict:
    """The environment of a calibrate/run/predict launch: one thread per rank, this checkout."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_TIMEOUT_S": "60",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _compute_trace(spec: dict, n=4, steps=400, seed=1) -> pd.DataFrame:
    t = ComputeTimes(ComputeSpec(**spec), n, seed)
    return pd.DataFrame([(w, s, t.sample(w)) for s in range(steps) for w in range(n)],
                        columns=["worker", "step", "seconds"])


@pytest.mark.parametrize("spec, check", [
    ({"model": "lognormal", "mean_s": 0.004, "sigma": 0.3}, {"sigma": 0.3}),
    ({"model": "shifted_exp", "mean_s": 0.005, "shift_s": 0.003}, {"shift_s": 0.003}),
    ({"model": "pareto", "mean_s": 0.002, "alpha": 3.0}, {"alpha": 3.0}),
])
def test_compute_fit_recovers_model_factors_and_parameters(spec, check):
    factors = [1.0, 1.0, 3.0, 0.8]
    sec, good = fit_compute(_compute_trace({**spec, "worker_factors": factors}))
    assert sec["model"] == spec["model"], good["aic"]
    # factors are relative to the median worker: compare ratios
    got = np.array(sec["worker_factors"])
    np.testing.assert_allclose(got / got[0], np.array(factors) / factors[0], rtol=0.08)
    assert sec["mean_s"] * np.median(factors) == pytest.approx(spec["mean_s"], rel=0.1)
    for k, v in check.items():
        assert sec[k] == pytest.approx(v, rel=0.15), (k, sec)
    assert good["ks_distance"] < 0.05 and good["samples"] == 1600
    # the fitted section is a valid compute: section and replays the workers' means
    ComputeSpec(**sec).check_workers(4)


def _net_trace(spec: NetworkSpec, sizes=(64, 4096, 65536, 1 << 20), m=4, nodes=1, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    ids = list(range(m))
    links = {"intra": (0, 1)} if nodes == 1 else {"intra": (0, 1), "inter": (0, m - 1)}
    for b in sizes:
        for rep in range(7):
            e = lambda: float(np.exp(noise * rng.standard_normal()))  # noqa: E731
            for link, (s, d) in links.items():
                rows.append(("p2p", b, 2, 1 + (link == "inter"), link, rep, spec.p2p(b, s, d) * e()))
            rows.append(("allreduce", b, m, nodes, "", rep, spec.allreduce_cost(b, ids).seconds * e()))
            rows.append(("allgather", b, m, nodes, "", rep, spec.allgather_cost([b] * m, ids).seconds * e()))
    return pd.DataFrame(rows, columns=["op", "nbytes", "members", "nodes", "link", "rep", "seconds"])


@pytest.mark.parametrize("alg", ["ring", "tree"])
def test_network_fit_recovers_alpha_beta_and_the_allreduce_algorithm(alg):
    spec = NetworkSpec(latency_s=3e-5, bandwidth_Bps=2e9, allreduce=alg)
    sec, good = fit_network(_net_trace(spec))
    assert sec["allreduce"] == alg, good["rel_rms_by_allreduce"]
    assert sec["latency_s"] == pytest.approx(3e-5, rel=0.15)
    assert sec["bandwidth_Bps"] == pytest.approx(2e9, rel=0.15)
    assert good["rel_rms"] < 0.1
    assert NetworkSpec(**sec).allreduce == alg


def test_network_fit_two_link_classes_across_nodes():
    spec = NetworkSpec(latency_s=5e-5, bandwidth_Bps=1e9, workers_per_node=2, allreduce="hierarchical",
                       intra={"latency_s": 2e-6, "bandwidth_Bps": 2e10})
    sec, good = fit_network(_net_trace(spec, nodes=2), workers_per_node=2)
    assert sec["allreduce"] == "hierarchical" and sec["workers_per_node"] == 2
    assert sec["latency_s"] == pytest.approx(5e-5, rel=0.2)
    assert sec["bandwidth_Bps"] == pytest.approx(1e9, rel=0.2)
    assert sec["intra"]["bandwidth_Bps"] == pytest.approx(2e10, rel=0.2)
    NetworkSpec(**sec).check_workers(4)


def test_insitu_delay_recovers_a_known_synchronisation_delay():
    compute = {"model": "lognormal", "mean_s": 0.002, "sigma": 0.2}
    net = {"latency_s": 2e-5, "bandwidth_Bps": 2e9, "allreduce": "ring"}
    nbytes, delay = 340_000, 0.0015
    t = ComputeTimes(ComputeSpec(**compute), 4, 0)
    e_max = np.mean([max(t.sample(i) for i in range(4)) for _ in range(3000)])
    step = e_max + NetworkSpec(**net).allreduce_cost(nbytes, range(4)).seconds + delay
    sec, found = insitu_delay(net, compute, step, 4, nbytes, seed=5)
    assert sec["sync_delay_s"] == pytest.approx(delay, rel=0.1) and sec["latency_s"] == 2e-5
    # harness.cost charges it once per op: a collective, a message
    spec = NetworkSpec(**sec)
    assert spec.allreduce_cost(nbytes, range(4)).seconds == pytest.approx(step - e_max, rel=0.1)
    assert spec.p2p(1000) == pytest.approx(NetworkSpec(**net).p2p(1000) + sec["sync_delay_s"])
    same, found = insitu_delay(net, compute, e_max, 4, nbytes)  # no delay: none fitted
    assert same["sync_delay_s"] == 0 and found["sync_delay_s"] == 0


def _small(**over):
    raw = {"n_workers": 4, "steps": 30, "eval_every": 30, "seed": 2, "algorithm": {"name": "sync_sgd"},
           "task": {"name": "digits", "hidden": [16], "batch_size": 16}, **over}
    return expand(raw)[0]


def test_slowdown_on_the_real_interpreter_is_recovered_as_a_factor():
    """A worker that sleeps a known time per Grad (loopback: the real RankDriver on threads)
    shows up in the fitted factors: its median step is the others' plus the sleep."""
    from harness.backends.loopback_run import run

    cfg = _small(slowdown={"workers": [2], "model": "constant", "mean_s": 0.01})
    steps = step_compute(run(cfg).rows)
    sec, good = fit_compute(steps)
    med = good["worker_median_s"]
    others = np.median([med[0], med[1], med[3]])
    assert med[2] - others == pytest.approx(0.01, abs=0.003)
    assert sec["worker_factors"][2] > 1.5 * max(sec["worker_factors"][i] for i in (0, 1, 3))


def test_slowdown_draws_are_seeded_and_checked():
    from harness.calibration.slowdown import SlowdownSpec

    spec = SlowdownSpec(workers=[1], model="exponential", mean_s=0.01)
    a, b = spec.draws(3, 1), spec.draws(3, 1)
    xs = [a() for _ in range(2000)]
    assert xs[:5] == [b() for _ in range(5)] and spec.draws(3, 0) is None
    assert np.mean(xs) == pytest.approx(0.01, rel=0.1)
    with pytest.raises(ConfigError, match=r"slowdown\.workers: \[4\] not in 0\.\.3"):
        _small(slowdown={"workers": [4], "mean_s": 0.01})
    with pytest.raises(ConfigError, match=r"compute\.worker_factors: needs 4 values"):
        _small(compute={"worker_factors": [1.0, 2.0]})
    # unset, the new fields leave run ids alone; set, they change them
    assert _small().run_id != _small(slowdown={"workers": [1], "mean_s": 0.01}).run_id
    assert _small().run_id != _small(compute={"worker_factors": [1, 1, 1, 2]}).run_id
    assert _small().run_id == _small(network={"sync_delay_s": 0.0}).run_id != _small(network={"sync_delay_s": 1e-3}).run_id


@pytest.mark.parametrize("backend", BACKENDS)
def test_calibrate_on_4_ranks_writes_a_fragment_that_loads_and_predicts(tmp_path, backend):
    """Under mpiexec (MPI ops) and torchrun (gloo): the same files, loadable and replayable."""
    from tests.test_real_backends import _mpiexec, _torchrun

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "c", "n_workers": 4, "steps": 20, "eval_every": 20,
                                   "task": {"name": "digits", "hidden": [16], "batch_size": 16},
                                   "algorithm": {"name": "sync_sgd"}}))
    out = tmp_path / "calib"
    env = _launch_env()
    launcher = [_mpiexec(), "-n", "4", sys.executable] if backend == "mpi" else _torchrun(4)
    cmd = [*launcher, "-m", "harness.cli", "calibrate", str(cfg), "--backend", backend,
           "--out", str(out), "--sizes", "64,65536", "--reps", "3"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    for name in ("calibration.yaml", "calibration-insitu.yaml", "calibration-trace.yaml"):
        frag = yaml.safe_load((out / name).read_text())
        assert set(frag) == {"compute", "network"}
        merged = resolve(deep_merge(yaml.safe_load(cfg.read_text()), frag))
        assert merged.network.latency_s >= 0 and merged.network.sync_delay_s >= 0
        if name == "calibration-trace.yaml":  # the measured steps, replayed: 17 per worker
            assert merged.compute.model == "trace" and len(pd.read_csv(merged.compute.trace)) == 4 * 17
        else:
            assert len(merged.compute.worker_factors) == 4
    info = json.loads((out / "calibration.json").read_text())
    assert info["ranks"] == 4 and info["backend"] == backend and info["compute"]["samples"] == 4 * (20 - 3)
    comm = pd.read_csv(out / "comm.csv")
    assert set(comm.op) == {"allreduce", "allgather", "p2p"} and (comm.seconds > 0).all()
    # predict: the calibration's own measured job, replayed on simpy with each fragment
    p = subprocess.run([sys.executable, "-m", "harness.cli", "predict", str(out / "job"), "--calibration",
                        str(out / "calibration.yaml"), "--calibration", str(out / "calibration-insitu.yaml")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    table = pd.read_csv(out / "job" / "predict" / "predict.csv")
    assert list(table.calibration) == ["calibration", "calibration-insitu"]
    assert (table.measured_s > 0).all() and (table.predicted_s > 0).all()
    np.testing.assert_allclose(table.error, table.predicted_s / table.measured_s - 1)
    assert (out / "job" / "predict" / "predict.png").stat().st_size > 0


@pytest.mark.parametrize("argv, line", [
    (["calibrate", "presets/calibrate-mpi.yaml", "--backend", "mpi", "--only", "4"],
     "--only 4: calibrate on a lock-step algorithm (every rank a worker), such as sync_sgd; 'async_sgd' has a server rank"),
    (["calibrate", "presets/calibrate-mpi.yaml", "--backend", "mpi", "--sizes", "1,x"],
     "--sizes 1,x: expected payload sizes in bytes (>= 4), comma separated"),
    (["predict", "no/such/dir", "--calibration", "c.yaml"], "RUNS: 'no/such/dir' is not a directory of runs"),
])
def test_bad_calibrate_and_predict_input_is_one_line(argv, line, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    assert capsys.readouterr().err == f"harness: error: {line}\n"


@pytest.mark.mpi
@pytest.mark.slow
def test_the_preset_calibrates_on_sync_sgd_and_predicts_the_four_algorithms(tmp_path):
    """Issue [17]'s workflow on 4 local MPI ranks, shortened to 30 steps: calibrate on sync SGD,
    run sync SGD, Local SGD (H=8), D-PSGD (ring) and async SGD for real, predict each one.
    The errors themselves are measured by benchmarks/calibration.py (docs/benchmarks.md)."""
    from tests.test_real_backends import _mpiexec

    env = _launch_env()
    short = ["--set", "steps=30", "--set", "eval_every=30"]
    out, mpi = tmp_path / "calib", [_mpiexec(), "-n", "4", sys.executable, "-m", "harness.cli"]
    for argv in (["calibrate", "presets/calibrate-mpi.yaml", "--backend", "mpi", "--out", out, "--sizes", "64,65536",
                  "--reps", "3", *short],
                 ["run", "presets/calibrate-mpi.yaml", "--backend", "mpi", "--out", out / "real", "--quiet", *short]):
        p = subprocess.run([*mpi, *map(str, argv)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([sys.executable, "-m", "harness.cli", "predict", str(out / "real"), "--calibration",
                        str(out / "calibration-insitu.yaml")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    table = pd.read_csv(out / "real" / "predict" / "predict.csv").set_index("algorithm")
    assert sorted(table.index) == ["async_sgd", "dpsgd", "local_sgd", "sync_sgd"]
    assert (table.steps == 30).all() and (table.measured_s > 0).all() and (table.predicted_s > 0).all()
    np.testing.assert_allclose(table.error, table.predicted_s / table.measured_s - 1)
    assert table.loc["async_sgd", "note"] == "factors of ranks 1..n"  # 3 workers on ranks 1-3
    for alg in table.index:  # every algorithm appears in the printed table with its error
        assert alg in p.stdout and f"{table.loc[alg, 'error']:+.1%}" in p.stdout
