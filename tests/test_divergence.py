"""Divergence (issue 14): a non-finite loss or model stops the run at once as ``diverged``,
naming step and worker in run.json and in one stderr line, keeping the rows so far; on
SimPy, stacked and the real driver (loopback: every rank stops at the same step); under
``on_divergence: continue`` the run goes on but is marked; summaries and the report say
"diverged" instead of an accuracy; ``harness run`` goes on with the other runs, exits 1."""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import results
from harness.backends import loopback
from harness.config import expand
from harness.experiment import run_to_dir, simulate
from harness.recording import Diverged

# A worker's loss (or model) turns non-finite at one step; rank-polymorphic ([d] or [n, d]).
PLUGIN = textwrap.dedent('''
    import torch
    from harness.algorithms import register
    from harness.algorithms.blocks import sample_members
    from harness.ops import AllReduce, Grad, Record


    @register("_div_inject")
    def div_inject(ctx, x, *, at: int = 17, worker: int = 3, what: str = "loss", lr: float = 0.1,
                   even_seeds: bool = False):
        """SGD whose ``worker`` gets a NaN loss (or an inf model) at step ``at`` (only with an
        even seed if ``even_seeds``)."""
        for t in range(ctx.steps):
            loss, g = yield Grad(x)
            x = yield AllReduce(x - lr * g)
            bad = (ctx.index == worker) & torch.tensor(t + 1 == at and not (even_seeds and ctx.seed % 2))
            if what == "loss":
                loss = torch.where(bad, torch.full_like(loss, float("nan")), loss)
            else:
                x = torch.where(bad.unsqueeze(-1) if x.dim() > 1 else bad, torch.full_like(x, float("inf")), x)
            yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
        return x


    @register("_div_sampled", requires={"members"})
    def div_sampled(ctx, x, *, lr: float = 0.1):
        """Two sampled workers step per round: the others' NaN loss is by design."""
        for t in range(ctx.steps):
            S = sample_members(ctx.seed, t, ctx.n_workers, 2)
            loss, g = yield Grad(x, members=S)
            x = yield AllReduce(torch.where(ctx.member(S).unsqueeze(-1), x - lr * g, x), members=S)
            yield Record(step=t + 1, round=t + 1, x=x, loss=loss)
        return x
''')
exec(compile(PLUGIN, "div_plugin", "exec"))

TASK = {"name": "quadratic", "dim": 4, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}


def cfg(backend="simpy", steps=30, seed=0, **alg):
    return expand({"n_workers": 4, "steps": steps, "seed": seed, "eval_every": 10, "task": TASK, "backend": backend,
                   "algorithm": {"name": "_div_inject", **alg}})[0]


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
@pytest.mark.parametrize("what,at,word", [("loss", 17, "train_loss is nan"), ("params", 20, "params contain inf")])
def test_simulated_run_stops_at_once_as_diverged(tmp_path, capsys, backend, what, at, word):
    c = cfg(backend, what=what, at=at)
    run_dir, ran = run_to_dir(c, tmp_path)
    rec = json.loads((run_dir / "run.json").read_text())
    assert ran and rec["status"] == "diverged" and rec["finished"]
    assert rec["diverged"] == {"step": at, "worker": 3, "what": "train_loss" if what == "loss" else "params",
                               "value": word.split()[-1], "stopped": True}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"harness: error: run {c.run_id} diverged at step {at} (worker 3: {word})"]
    df, _ = results.read_run(run_dir)
    assert df.step.max() == at  # stopped there: nothing after
    ev = df[df.event == "diverged"]
    assert ev[["worker", "step"]].values.tolist() == [[3, at]]
    assert (df[df.event == "step"].groupby("worker").step.max() == at).all()  # every worker's rows up to it
    evals = sorted(df[df.worker == -1].step)
    assert evals == ([0, 10] if what == "loss" else [0, 10, 20])  # the bad model's eval row is kept
    assert run_to_dir(c, tmp_path) == (run_dir, False)  # a diverged run is done: re-runs skip it


def test_continue_keeps_going_and_marks_the_run(tmp_path, capsys):
    c = cfg("stacked").model_copy(update={"on_divergence": "continue"})
    run_dir, _ = run_to_dir(c, tmp_path)
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "diverged" and rec["diverged"]["stopped"] is False and rec["diverged"]["step"] == 17
    assert "kept going (on_divergence: continue)" in capsys.readouterr().err
    df, _ = results.read_run(run_dir)
    assert df.step.max() == 30 and (df.event == "diverged").sum() == 1
    with pytest.raises(Diverged, match=r"^diverged at step 17 \(worker 3: train_loss is nan\)$") as e:
        simulate(cfg("stacked"))
    assert e.value.frame.step.max() == 17


@pytest.mark.parametrize("what,at", [("loss", 17), ("params", 20)])
def test_every_rank_of_the_real_driver_stops_at_the_same_step(what, at):
    """Loopback runs the real RankDriver on 4 ranks: they agree at the next evaluation step
    (20), leave the generator there, and the table is SimPy's, row for row."""
    c = cfg(what=what, at=at)
    res = loopback.run(c, trace=True)
    assert [ops.count("Record") for ops in res.ops] == [20, 20, 20, 20]  # not 30: every rank stopped
    with pytest.raises(Diverged) as sim:
        simulate(c)
    key = lambda d: sorted(zip(d.worker, d.step, d.event))  # noqa: E731
    assert key(res.rows) == key(sim.value.frame)
    ev = res.rows[res.rows.event == "diverged"]
    assert ev[["worker", "step"]].values.tolist() == [[3, at]]


@pytest.mark.parametrize("backend", ["simpy", "stacked", "loopback"])
def test_nan_loss_of_workers_that_sat_out_is_no_divergence(backend):
    c = expand({"n_workers": 4, "steps": 6, "seed": 5, "eval_every": 3, "task": TASK,
                "backend": "simpy" if backend == "loopback" else backend, "algorithm": {"name": "_div_sampled"}})[0]
    df = loopback.run(c).rows if backend == "loopback" else simulate(c)[0]
    assert df.train_loss.isna().any() and not (df.event == "diverged").any() and df.step.max() == 6


def test_summary_and_report_say_diverged(tmp_path, monkeypatch):
    from results import plots

    monkeypatch.setattr(plots, "FIGURES", {})  # the page's words are tested here, not its figures
    run_to_dir(cfg("stacked", steps=20, even_seeds=True), tmp_path)
    run_to_dir(cfg("stacked", steps=20, seed=1, even_seeds=True), tmp_path)  # the same setting, does not diverge
    df = results.load(tmp_path, finished_only=True)  # diverged runs ended: they are kept
    assert set(df.status) == {"diverged", "finished"}
    s = results.summary(df).set_index("status")
    assert s.loc["diverged", "diverged"] and s.loc["diverged", "diverged_step"] == 17
    assert np.isnan(s.loc["diverged", "final_test_acc"]) and not np.isnan(s.loc["finished", "final_test_acc"])
    assert not s.loc["finished", "diverged"]
    text = results.format_summary(results.summary(df))
    assert "(1/2 diverged)" in text, text
    only = results.format_summary(results.summary(df[df.status == "diverged"]))
    assert "diverged" in only.splitlines()[2] and "nan" not in only, only
    page = (results.write_report(tmp_path) / "index.html").read_text()
    assert "1 run(s) did not finish" in page and "up to step 17 (diverged there)" in page
    assert "partial data" not in page


def test_harness_run_goes_on_and_exits_1(tmp_path, capsys):
    from harness.cli import main

    # its own names: this process registered PLUGIN's already, and a plugin may not take a taken name
    (tmp_path / "plugin.py").write_text(PLUGIN.replace('"_div_', '"_div_cli_'))
    conf = tmp_path / "c.yaml"
    conf.write_text(json.dumps({"imports": ["plugin.py"], "n_workers": 4, "steps": 20, "eval_every": 10,
                                "task": TASK, "backend": "stacked", "algorithm": {"name": "_div_cli_inject"},
                                "grid": {"algorithm.at": [5, 99]}}))
    out = tmp_path / "out"
    assert main(["run", str(conf), "--out", str(out), "--quiet"]) == 1
    cap = capsys.readouterr()
    st = results.runs(out).set_index("cfg.algorithm.at")["status"]
    assert st.to_dict() == {5: "diverged", 99: "finished"}  # the sweep went on after the divergence
    assert "diverged at step 5 (worker 3: train_loss is nan)" in cap.err
    assert cap.err.strip().splitlines()[-1].startswith("harness: error: 1 of 2 run(s) diverged: _div_cli_inject-")
    assert ": diverged (" in cap.out and "diverged" in cap.out.split("Summary")[1]
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*.*")}
    assert main(["run", str(conf), "--out", str(out), "--quiet"]) == 1  # still diverged; skipped, not re-run
    assert capsys.readouterr().out.count("diverged before, skipped") == 1
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.*")} == before


def test_mpi_ranks_stop_and_rank0_marks_the_run(tmp_path):
    """The real runner (3 processes under mpiexec): status, run.json and stderr as on SimPy."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    venv = Path(sys.executable).parent
    mpiexec = shutil.which("mpiexec", path=str(venv)) or shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        pytest.skip("mpiexec or mpi4py not installed")
    (tmp_path / "plugin.py").write_text(PLUGIN)
    (tmp_path / "c.yaml").write_text(json.dumps({"imports": ["plugin.py"], "n_workers": 3, "steps": 30,
                                                 "eval_every": 10, "task": TASK,
                                                 "algorithm": {"name": "_div_inject", "worker": 2}}))
    r = subprocess.run([mpiexec, "-n", "3", str(venv / "harness"), "run", "c.yaml", "--backend", "mpi", "--out", "out",
                        "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1, r.stderr
    (run_dir,) = (tmp_path / "out").iterdir()
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "diverged" and rec["diverged"] == {"step": 17, "worker": 2, "what": "train_loss",
                                                               "value": "nan", "stopped": True}
    assert f"harness: error: run {run_dir.name} diverged at step 17 (worker 2: train_loss is nan)" in r.stderr
    df, _ = results.read_run(run_dir)
    assert df.step.max() == 17 and (df.event == "diverged").sum() == 1 and set(df.backend) == {"mpi"}
    assert not (run_dir / "claim.json").exists()
