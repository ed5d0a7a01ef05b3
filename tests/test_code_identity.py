"""Issue [27], item 1: the code is in a run's identity. A run records the package version, the
git commit and a fingerprint of the files that define it; re-running a config after its plugin
algorithm was edited does not skip silently: it refuses with one line naming the file and the
flags (``--rerun-changed`` re-runs, ``--keep-changed`` keeps), before anything runs.

The CLI runs in-process (each ``harness run`` reads the plugin and hashes the files from disk
again, as a new process would); the plugin registers with ``replace=True`` so that importing
its edited version again in this process is no name conflict. Edits change the file's length:
Python's bytecode cache tells versions apart by size and mtime in seconds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

PLUGIN = '''
from harness.algorithms import register
from harness.ops import AllReduce, Grad, Record


@register("t27_sgd", replace=True)
def t27_sgd(ctx, x, *, lr: float = 0.1):
    for t in range(ctx.steps):
        loss, g = yield Grad(x)
        x = yield AllReduce(x - {scale} * lr * g, op="mean")
        yield Record(step=t + 1, x=x, loss=loss)
    return x
'''

CONFIG = """name: t27
imports: [plugin.py]
algorithm: {name: t27_sgd, lr: 0.1}
backend: stacked
n_workers: 2
steps: 4
eval_every: 2
task: {name: quadratic}
"""


class Result:
    def __init__(self, rc, out, err):
        self.returncode, self.stdout, self.stderr = rc, out, err


@pytest.fixture
def harness(capsys, monkeypatch):
    def call(tmp: Path, *args: str) -> Result:
        monkeypatch.chdir(tmp)
        capsys.readouterr()
        rc = main(["run", str(tmp / "c.yaml"), "--out", str(tmp / "out"), *args])
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return call


def record(tmp: Path) -> dict:
    (run_json,) = (tmp / "out").glob("*/run.json")
    return json.loads(run_json.read_text())


@pytest.fixture
def setup(tmp_path, harness):
    (tmp_path / "plugin.py").write_text(PLUGIN.format(scale=1.0))
    (tmp_path / "c.yaml").write_text(CONFIG)
    first = harness(tmp_path)
    assert first.returncode == 0, first.stderr
    return tmp_path


def test_run_json_records_version_git_and_the_defining_files(setup):
    code = record(setup)["code"]
    assert code["version"] and code["files"]
    names = set(code["files"])
    assert str(setup / "plugin.py") in names  # a plugin outside the package: by absolute path
    assert {"harness/ops.py", "harness/parts.py", "simulators/stacked.py", "simulators/base.py"} <= names
    assert "harness/tasks/quadratic.py" in names
    repo = Path(__file__).resolve().parent.parent
    if (repo / ".git").exists():  # a checkout: the commit and whether it has uncommitted edits
        assert len(code["git"]["sha"]) == 40 and isinstance(code["git"]["dirty"], bool)


def test_unchanged_code_is_skipped(setup, harness):
    again = harness(setup)
    assert again.returncode == 0 and "already finished, skipped" in again.stdout, again.stdout


def test_an_edited_plugin_refuses_with_one_line_then_reruns_with_the_flag(setup, harness):
    import results

    before, old_table = record(setup), results.load(setup / "out")
    (setup / "plugin.py").write_text(PLUGIN.format(scale=0.25))  # the edit changes the numbers
    refused = harness(setup)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert lines[0].startswith("harness: error: 1 finished run(s) in ") and "(plugin.py)" in lines[0]
    assert "--rerun-changed" in lines[0] and "--keep-changed" in lines[0]
    assert record(setup) == before  # nothing ran, nothing written

    kept = harness(setup, "--keep-changed")
    assert kept.returncode == 0 and "kept as they are" in kept.stderr and record(setup) == before

    rerun = harness(setup, "--rerun-changed")
    assert rerun.returncode == 0 and "running them again" in rerun.stderr, rerun.stderr
    after = record(setup)
    plugin = str(setup / "plugin.py")
    assert after["code"]["files"][plugin] != before["code"]["files"][plugin]
    assert after["started"] >= before["started"] and after["status"] == "finished"
    df = results.load(setup / "out")
    assert df.run_id.nunique() == 1  # replaced, not added
    assert not df["train_loss"].equals(old_table["train_loss"])  # the new code's numbers
    again = harness(setup)  # the new code is now the recorded one: skipped
    assert again.returncode == 0 and "already finished, skipped" in again.stdout, again.stdout


def test_a_run_json_without_a_fingerprint_is_unknown_said_once_and_kept(setup, harness):
    (path,) = (setup / "out").glob("*/run.json")
    rec = json.loads(path.read_text())
    del rec["code"]  # as written before issue [27]
    path.write_text(json.dumps(rec))
    (setup / "plugin.py").write_text(PLUGIN.format(scale=0.25))
    r = harness(setup)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "no code fingerprint" in line]
    assert len(notes) == 1 and "--force" in notes[0] and "already finished, skipped" in r.stdout


def test_a_function_without_a_file_is_fingerprinted_by_its_source():
    """A notebook cell: no file on disk holds the function; its code is hashed instead."""
    from harness import algorithms, codeid
    from harness.config import expand

    def define(scale):
        ns: dict = {}
        src = PLUGIN.format(scale=scale).replace('"t27_sgd"', '"t27_cell"')
        exec(compile(src, "<notebook cell>", "exec"), ns)  # noqa: S102 - the test's own text
        return expand({"algorithm": {"name": "t27_cell"}, "backend": "stacked", "n_workers": 2, "steps": 2,
                       "task": {"name": "quadratic"}})[0]

    try:
        a = codeid.fingerprint(define(1.0))
        b = codeid.fingerprint(define(0.5))
    finally:
        algorithms.ALGORITHMS.pop("t27_cell", None)
    assert "<algorithm t27_cell>" in a and codeid.changed_files(a, b) == ["<algorithm t27_cell>"]
