"""Issue [27], item 2: the Python API in the package's namespace (docs/api.md):
``harness.run`` (a YAML path or a dict, a backend; the table back), ``harness.load``,
``harness.report``, ``harness.register``; ``import harness`` stays light (no torch)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import harness
from harness.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = {"name": "tiny", "algorithm": {"name": "sync_sgd", "lr": 0.1}, "n_workers": 2, "steps": 4, "eval_every": 2,
        "task": {"name": "quadratic"}, "grid": {"seed": [0, 1]}}


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_import_harness_imports_neither_torch_nor_pandas():
    code = "import sys, harness; print(harness.__version__); print(sorted({'torch', 'pandas'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 0, r.stderr
    version, heavy = r.stdout.splitlines()
    assert version and heavy == "[]"


def test_the_namespace_lists_the_api():
    assert {"run", "load", "report", "register", "register_task"} <= set(dir(harness))
    with pytest.raises(AttributeError):
        harness.no_such_thing  # noqa: B018


def test_run_a_dict_returns_this_calls_table_and_skips_when_run_again(tmp_path):
    df = harness.run(TINY, backend="stacked", out=tmp_path)
    assert isinstance(df, pd.DataFrame) and set(df.seed) == {0, 1} and set(df.backend) == {"stacked"}
    other = harness.run({**TINY, "grid": {"seed": [5]}}, backend="stacked", out=tmp_path)  # same directory
    assert set(other.seed) == {5}  # only this call's runs, not everything in out
    again = harness.run(TINY, backend="stacked", out=tmp_path, only="2")
    assert set(again.seed) == {1} and again.equals(df[df.seed == 1].reset_index(drop=True))
    assert harness.load(tmp_path).run_id.nunique() == 3


def test_run_a_yaml_file_with_a_plugin_and_get_the_final_parameters(tmp_path):
    (tmp_path / "plug.py").write_text(
        "from harness.algorithms import register\nfrom harness.ops import AllReduce, Grad, Record\n\n"
        "@register('api_avg', replace=True)\ndef api_avg(ctx, x, *, lr: float = 0.1):\n"
        "    for t in range(ctx.steps):\n        loss, g = yield Grad(x)\n"
        "        x = yield AllReduce(x - lr * g, op='mean')\n        yield Record(step=t + 1, x=x, loss=loss)\n"
        "    return x\n")
    (tmp_path / "c.yaml").write_text("imports: [plug.py]\nalgorithm: api_avg\nn_workers: 2\nsteps: 3\n"
                                     "task: {name: quadratic}\n")
    df, params = harness.run(tmp_path / "c.yaml", backend="simpy", out=tmp_path / "o", params=True)
    (run_id,) = df.run_id.unique()
    assert set(df.algorithm) == {"api_avg"} and params[run_id]["workers"].shape[0] == 2


def test_report_refuses_a_bad_target_before_drawing(tmp_path):
    """The page itself is drawn by the example script below (matplotlib takes seconds)."""
    harness.run(TINY, backend="stacked", out=tmp_path / "o", sets=["steps=2"])
    with pytest.raises(ConfigError, match=r"^target: expected a test accuracy in \(0, 1\], got 2"):
        harness.report(tmp_path / "o", target=2)
    assert not (tmp_path / "o" / "report").exists()


@pytest.mark.parametrize("kw, starts", [
    ({"backend": "mpi"}, "backend: mpi runs one process per rank"),
    ({"changed": "maybe"}, "changed: 'maybe'; choose one of refuse, rerun, keep"),
    ({"only": "0"}, "--only 0: runs are numbered from 1"),
    ({"sets": ["algorithm.name=sync_sdg"]}, "algorithm.name: unknown algorithm 'sync_sdg' (did you mean 'sync_sgd'?)"),
])
def test_mistakes_are_one_line_errors(tmp_path, kw, starts):
    with pytest.raises(ConfigError) as e:
        harness.run(TINY, out=tmp_path / "o", **kw)
    assert str(e.value).startswith(starts) and "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_example_script_runs(tmp_path):
    """docs/api.md's example, as a user runs it (its own process, another directory)."""
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "api_example.py"), str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 runs" in r.stdout and "example_local_sgd" in r.stdout and "report:" in r.stdout
    assert (tmp_path / "out" / "report" / "index.html").is_file()  # harness.report
    assert not (tmp_path / "runs").exists()  # out= was honoured
