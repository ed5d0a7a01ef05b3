"""Configs: validation errors are one line naming the field; the CLI turns them into exit 2."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from harness.cli import main
from harness.config import ConfigError, expand

BASE = {"algorithm": "local_sgd", "n_workers": 4, "steps": 10, "eval_every": 5, "task": {"hidden": [8]}}


@pytest.mark.parametrize("change, field", [
    ({"algorithm": {"name": "nope"}}, "algorithm.name"),
    ({"algorithm": {"name": "local_sgd", "period": "x"}}, "algorithm.period"),
    ({"algorithm": {"name": "sync_sgd", "period": 3}}, "algorithm.period"),
    ({"stepz": 3}, "stepz"),
    ({"n_workers": 0}, "n_workers"),
    ({"task": {"partition": "zipf"}}, "task.partition"),
    ({"compute": {"sigma": -1}}, "compute.sigma"),
    ({"topology": {"name": "hypercube"}, "n_workers": 6}, "topology"),
    ({"topology": {"name": "moebius"}}, "topology.name"),
])
def test_bad_fields_are_one_line_errors(change, field):
    with pytest.raises(ConfigError) as e:
        expand({**BASE, **change})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(field), msg


def test_cases_and_grid_expand():
    runs = expand({**BASE, "cases": [{"algorithm": "sync_sgd"}, {"algorithm": {"name": "local_sgd", "period": 2}}],
                   "grid": {"seed": [0, 1, 2]}}, ["steps=5", "grid.task.partition=[iid, dirichlet]"])
    assert len(runs) == 2 * 3 * 2
    assert {r.steps for r in runs} == {5}
    assert len({r.run_id for r in runs}) == 12


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    bad = _write(tmp_path, "algorithm: local_sgd\nsteps: -1\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("harness: error: steps:") and "\n" not in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    broken = _write(tmp_path, "algorithm: [unclosed\n")
    assert main(["run", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_run_writes_table_and_run_json_then_skips(tmp_path, capsys):
    cfg = _write(tmp_path, "algorithm: {name: local_sgd, period: 2}\nn_workers: 4\nsteps: 10\neval_every: 5\n"
                           "task: {hidden: [8]}\n")
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "finished" and rec["config"]["algorithm"]["period"] == 2
    df = pd.read_parquet(run_dir / "metrics.parquet")
    for col in ["run_id", "algorithm", "backend", "task", "topology", "n_workers", "seed", "step", "round", "time_s",
                "bytes_sent", "bytes_recv", "messages", "train_loss", "test_loss", "test_acc", "consensus_dist"]:
        assert col in df.columns
    assert set(df.worker) == {-1, 0, 1, 2, 3} and df["hp.period"].eq(2).all()
    assert "final test acc" in capsys.readouterr().out
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "already finished, skipped" in capsys.readouterr().out


def test_user_algorithm_via_imports(tmp_path):
    (tmp_path / "mine.py").write_text(
        "from harness.algorithms import register\nfrom harness.ops import AllReduce, Grad, Record\n"
        "@register('mine')\ndef mine(ctx, x, *, lr: float = 0.1):\n"
        "    for t in range(ctx.steps):\n        loss, g = yield Grad(x)\n        x = x - lr * g\n"
        "        x = yield AllReduce(x)\n        yield Record(step=t + 1, x=x, loss=loss)\n    return x\n")
    cfg = _write(tmp_path, "imports: [mine.py]\nalgorithm: {name: mine, lr: 0.2}\nn_workers: 2\nsteps: 4\n"
                           "eval_every: 2\ntask: {hidden: [8]}\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    df = pd.read_parquet(next((tmp_path / "o").glob("*/metrics.parquet")))
    assert (df.algorithm == "mine").all() and df.step.max() == 4


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "run" in r.stdout and "report" in r.stdout
