"""Divergence, second round (issue [21]): ``on_divergence: stop`` ends server/worker methods
(async SGD, async EASGD, async Local SGD) on the real backends too, not only lock-step ones;
and a *finite* blow-up (the train loss above ``divergence.loss_factor`` times a worker's first
loss) marks a run ``diverged`` exactly as a NaN does, on every backend."""
from __future__ import annotations

import json

import pytest

import results
from harness.backends import loopback
from harness.config import ConfigError, expand
from harness.experiment import run_to_dir, simulate
from harness.recording import Diverged
from tests.helpers import small

TASK = {"name": "quadratic", "dim": 4, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}
ROLES = {"async_sgd": {}, "async_easgd": {"tau": 2}, "async_local_sgd": {"period": 2}}


def role_cfg(name, backend="simpy", steps=30, **over):
    """A server method whose lr of 1e200 makes every worker's loss inf at step 2."""
    return expand({"n_workers": 3, "steps": steps, "eval_every": 10, "task": TASK, "backend": backend,
                   "algorithm": {"name": name, **ROLES[name], "lr": 1e200}, **over})[0]


def blowup_cfg(backend="stacked", **over):
    """sync SGD at lr 1000 on digits: the loss goes from 2.4 to 6e3 (2500 x) at step 2 and 1e11 later, all finite."""
    return small("sync_sgd", backend=backend, steps=24, algorithm={"name": "sync_sgd", "lr": 1000.0}, **over)


# -- 1. stop is honoured by server methods on the real driver -------------------------------
@pytest.mark.parametrize("name", list(ROLES))
def test_server_methods_stop_every_rank_on_the_real_driver(name):
    c = role_cfg(name)
    with pytest.raises(Diverged, match="diverged at step 2 "):
        simulate(c)
    res = loopback.run(c, trace=True)
    full = loopback.run(c.model_copy(update={"on_divergence": "continue"}), trace=True)
    for stopped, went_on in zip(res.ops, full.ops):
        assert stopped.count("Record") < went_on.count("Record") / 2, (stopped.count("Record"), went_on.count("Record"))
    ev = res.rows[res.rows.event == "diverged"]
    assert len(ev) == 1 and ev.step.tolist() == [2], ev  # one divergence for the run, the first one
    assert (full.rows.event == "diverged").sum() >= 1 and full.rows.step.max() == 30


@pytest.mark.parametrize("backend", [pytest.param("mpi", marks=pytest.mark.mpi), "torch"])
def test_real_processes_stop_server_methods_and_flag_blowups(backend, tmp_path):
    """One launch, two runs: the issue's async SGD (on MPI it ran every step, run.json said not
    stopped, the line said continue) and sync SGD at lr 1000 (finite losses: marked finished)."""
    from tests.test_real_backends import launch

    runs = {"async": role_cfg("async_sgd", steps=60), "blowup": blowup_cfg("simpy")}
    conf = tmp_path / "c.yaml"
    conf.write_text(json.dumps({"cases": [{k: v for k, v in c.model_dump(mode="json").items() if k != "backend"}
                                          for c in runs.values()]}))
    proc = launch(backend, conf, tmp_path / "out", timeout=150)
    assert proc.returncode == 1, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("harness: error: run ")]
    assert len(lines) == 2 and not any("continue" in ln for ln in lines), proc.stderr
    for key, c in runs.items():
        (run_dir,) = (tmp_path / "out").glob(f"{c.algorithm['name']}-*")
        rec = json.loads((run_dir / "run.json").read_text())
        d = rec["diverged"]
        assert rec["status"] == "diverged" and d["stopped"] is True and d["step"] == 2, (key, rec)
        df, _ = results.read_run(run_dir)
        assert (df.event == "diverged").sum() == 1 and not (run_dir / "claim.json").exists()
        if key == "async":
            assert d["value"] == "inf" and df.step.max() < 30, df.step.max()
        else:  # lock-step: every rank stops at the next evaluation (8), the table is cut at 2 as in SimPy
            assert d["worker"] == 0 and float(d["value"]) > 1000 * float(d["first"]) and df.step.max() == 2
            assert any(f"over 1000 x its first value {d['first']}" in ln for ln in lines)


# -- 2. a finite blow-up is a divergence -----------------------------------------------------
@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_finite_blowup_is_diverged_in_simulators(tmp_path, capsys, backend):
    c = blowup_cfg(backend)
    run_dir, _ = run_to_dir(c, tmp_path)
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "diverged", rec["status"]
    d = rec["diverged"]
    assert (d["step"], d["what"], d["stopped"]) == (2, "train_loss", True) and float(d["value"]) > 1000 * 2.3, d
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"harness: error: run {c.run_id} diverged at step 2 (worker {d['worker']}: train_loss is "
                   f"{d['value']}, over 1000 x its first value {d['first']})"], err
    df, _ = results.read_run(run_dir)
    assert df.step.max() == 2 and (df.event == "diverged").sum() == 1
    row = df[df.event == "diverged"].iloc[0]
    assert row.worker == d["worker"] and f"{row.train_loss:.3g}" == d["value"]


def test_blowup_is_the_same_on_simpy_stacked_and_the_real_driver():
    """Every worker blows up at step 2: SimPy names the first to get there in simulated time,
    stacked and the real driver (agreeing at every step) the lowest worker."""
    got = {}
    for backend in ("simpy", "stacked"):
        with pytest.raises(Diverged) as e:
            simulate(blowup_cfg(backend))
        got[backend] = e.value.frame
    got["loopback"] = loopback.run(blowup_cfg("simpy", eval_every=1)).rows  # agreement at every step
    ev = {name: df[df.event == "diverged"][["worker", "step"]].values.tolist() for name, df in got.items()}
    assert ev["stacked"] == ev["loopback"] == [[0, 2]] and len(ev["simpy"]) == 1 and ev["simpy"][0][1] == 2, ev
    for name, df in got.items():
        assert df.step.max() == 2, name


def test_continue_keeps_going_and_the_rule_can_be_turned_off(capsys):
    df, _ = simulate(blowup_cfg(on_divergence="continue"))
    assert df.step.max() == 24 and (df.event == "diverged").sum() == 1
    df, _ = simulate(blowup_cfg(divergence={"loss_factor": None}))
    assert df.step.max() == 24 and not (df.event == "diverged").any()
    df, _ = simulate(blowup_cfg(divergence={"loss_factor": 1e12}))
    assert not (df.event == "diverged").any()


def test_healthy_runs_are_not_flagged():
    for alg in ("sync_sgd", "local_sgd", "dpsgd"):
        df, _ = simulate(small(alg, backend="stacked", steps=40))
        assert not (df.event == "diverged").any(), alg


@pytest.mark.parametrize("bad,word", [({"loss_factor": 1}, "greater than 1"), ({"loss_factor": -5}, "greater than 1"),
                                      ({"loss_factr": 10}, "loss_factr"), ({"loss_factor": "big"}, "number")])
def test_bad_rule_is_one_line(bad, word):
    with pytest.raises(ConfigError) as e:
        blowup_cfg(divergence=bad)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("divergence.") and word in msg, msg


def test_default_rule_leaves_run_ids_alone():
    c = blowup_cfg()
    assert c.run_id == blowup_cfg(divergence={"loss_factor": 1000}).run_id
    assert c.run_id != blowup_cfg(divergence={"loss_factor": 100}).run_id
