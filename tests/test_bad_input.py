"""Bad input (issue 14, reliability): every malformed input is exit status 2 and exactly one
stderr line ``harness: error: <field>: ...`` naming the field and the fix; never a traceback,
never a silently accepted wrong value, never a run directory left behind.

The CLI runs in-process (``harness.cli.main``) so that argparse's own errors are covered too."""
from __future__ import annotations

import math

import pytest

from harness import schedules
from harness.cli import main
from harness.config import ConfigError, expand
from harness.transforms import Optimizer

GOOD = "algorithm: local_sgd\nn_workers: 2\nsteps: 2\neval_every: 1\ntask: {hidden: [4]}\n"


def cli(argv, capsys) -> tuple[int, str]:
    """Run ``harness ARGV``; return (exit status, stderr) with SystemExit turned into its code."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse must not get here any more
        rc = e.code
    return rc, capsys.readouterr().err


def assert_one_line(rc, err, starts):
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"harness: error: {starts}"), lines[0]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# -- config fields: (extra YAML, start of the message after "harness: error: ", words in it) --------------
CASES = [
    ("task: {batch_size: -5}", "task.batch_size: Input should be greater than or equal to 1", ""),
    ("task: {batch_size: 0}", "task.batch_size: Input should be greater than or equal to 1", ""),
    ("task: {dtype: float17}", "task.dtype: must be a floating-point dtype", "float32"),
    ("task: {dtype: int64}", "task.dtype: must be a floating-point dtype", "'int64'"),
    ("task: {hidden: [0]}", "task.hidden.0: Input should be greater than or equal to 1", ""),
    ("task: {hidden: [-4]}", "task.hidden.0: Input should be greater than or equal to 1", ""),
    ("task: {name: cifar10, batch_size: 0}", "task.batch_size: Input should be greater than or equal to 1", ""),
    ("task: {name: quadratic, dtype: int64}", "task.dtype: must be a floating-point dtype", ""),
    ("algorithm: {name: local_sgd, lr: .nan}", "algorithm.lr: expected a finite number, got nan", ""),
    ("algorithm: {name: local_sgd, lr: .inf}", "algorithm.lr: expected a finite number, got inf", ""),
    ("algorithm: {name: local_sgd, lr: '1e400'}", "algorithm.lr: learning rate must be >= 0 and finite", "inf"),
    ("algorithm: {name: local_sgd, lr: -0.1}", "algorithm.lr: learning rate must be >= 0 and finite", "-0.1"),
    ("algorithm: {name: local_sgd, lr: {name: cosine, lr: .nan}}", "algorithm.lr.lr: expected a finite number", ""),
    ("algorithm: {name: local_sgd, lr: {name: cosine, lr: '1e400'}}", "algorithm.lr: schedule 'cosine' needs a peak lr", ""),
    ("algorithm: {name: local_sgd, lr: {name: linear, lr: 0.1, final: -1}}", "algorithm.lr: schedule 'linear': final", ""),
    ("algorithm: {name: local_sgd, lr: {name: cosine, lr: 0.1, warmup: x}}", "algorithm.lr: schedule 'cosine': warmup", ""),
    ("algorithm: {name: local_sgd, lr: {name: step, lr: 0.1, milestones: [a]}}", "algorithm.lr: schedule 'step'", ""),
    ("algorithm: {name: local_sgd, momentum: .inf}", "algorithm.momentum: expected a finite number, got inf", ""),
    ("algorithm: {name: local_sgd, momentum: '1e400'}", "algorithm.momentum: Input should be a finite number", ""),
    ("faults: {crash_rate_per_s: .inf, recover_after_s: 1}", "faults.crash_rate_per_s: expected a finite number", ""),
    ("algorithm: {name: local_sgd, lr: [1]}", "algorithm.lr: expected a number or a schedule spec", ""),
    ("algorithm: {name: [1]}", "algorithm.name: expected a name (text)", ""),
    ("algorithm: {lr: 0.1}", "algorithm.name: missing", "sync_sgd"),
    ("n_workers: 4\ntopology: ring", "topology: algorithm 'local_sgd' does not gossip", "remove topology:"),
    ("seed: -1", "seed: Input should be greater than or equal to 0", ""),
    ("compute: {mean_s: .inf}", "compute.mean_s: expected a finite number, got inf", ""),
    ("network: {bandwidth_Bps: 1e400}", "network.bandwidth_Bps: expected a finite number, got inf", ""),
    ("target_acc: .nan", "target_acc: ", ""),
    ("name: a/b", "name: 'a/b' is not a folder name", ""),
    ("grid: {1: [2]}", "grid: 1: expected a dotted field name", ""),
    ("cases: [{imports: [x.py]}]", "cases: imports: belongs at the top level", ""),
    ("steps: 3\nsteps: 4", "", "line 6: duplicate key 'steps'"),
]


@pytest.mark.parametrize("extra, starts, words", CASES, ids=[c[0] for c in CASES])
def test_bad_config_field(tmp_path, capsys, extra, starts, words):
    keys = {line.split(":")[0] for line in extra.splitlines()}
    base = "".join(line + "\n" for line in GOOD.splitlines() if line.split(":")[0] not in keys)
    cfg = write(tmp_path, base + extra + "\n")
    rc, err = cli(["run", cfg, "--out", tmp_path / "out", "--quiet"], capsys)  # a real run, not --list
    assert_one_line(rc, err, starts or str(cfg))
    assert words in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_gossiping_algorithm_still_takes_its_topology():
    (cfg,) = expand({"algorithm": "dpsgd", "n_workers": 4, "topology": "ring"})
    assert cfg.topology == {"name": "ring"}
    with pytest.raises(ConfigError, match="^topology: algorithm 'sync_sgd' does not gossip"):
        expand({"algorithm": "sync_sgd", "n_workers": 4, "topology": "ring"})
    # in a config with cases the message says which case
    with pytest.raises(ConfigError, match=r"does not gossip.*\(case 1\)$"):
        expand({"n_workers": 4, "topology": "ring", "cases": [{"algorithm": "sync_sgd"}, {"algorithm": "dpsgd"}]})


# -- imports: ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("plugin, imports, starts, words", [
    ("def f(:\n", "[plugin.py]", "imports: 'plugin.py' has a syntax error at plugin.py line 1", "fix the module"),
    ("x = 1\nraise RuntimeError('boom')\n", "[plugin.py]", "imports: 'plugin.py' raised RuntimeError: boom at plugin.py line 2",
     "fix the module"),
    ("import sys\nsys.exit(3)\n", "[plugin.py]", "imports: 'plugin.py' called sys.exit(3)", ""),
    ("x = 1\n", "[missing.py]", "imports: cannot import 'missing.py'", "relative to the config"),
    ("x = 1\n", "[no_such_module_xyz]", "imports: cannot import 'no_such_module_xyz'", ""),
    ("x = 1\n", "{a: 1}", "imports: expected a list of module names", "imports: [my_algorithms.py]"),
    ("x = 1\n", "[1, 2]", "imports: expected a list of module names", ""),
])
def test_bad_imports(tmp_path, capsys, plugin, imports, starts, words):
    write(tmp_path, plugin, "plugin.py")
    cfg = write(tmp_path, f"imports: {imports}\n{GOOD}")
    rc, err = cli(["run", cfg, "--out", tmp_path / "out"], capsys)
    assert_one_line(rc, err, starts)
    assert words in err and not (tmp_path / "out").exists()


def test_imports_as_one_string_is_a_one_element_list(tmp_path, capsys):
    write(tmp_path, "from harness.algorithms import register\nfrom harness.ops import AllReduce, Grad, Record\n"
                    "@register('_bad_input_alias')\ndef alias(ctx, x, *, lr: float = 0.1):\n"
                    "    for t in range(ctx.steps):\n        loss, g = yield Grad(x)\n"
                    "        x = yield AllReduce(x - lr * g)\n        yield Record(step=t + 1, x=x, loss=loss)\n"
                    "    return x\n", "plugin.py")
    cfg = write(tmp_path, "imports: plugin.py\n" + GOOD.replace("local_sgd", "_bad_input_alias"))
    rc, err = cli(["run", cfg, "--list"], capsys)
    assert rc == 0 and err == ""


# -- the command line ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args, starts, words", [
    (["--set", "steps=[1,"], "--set steps: the value '[1,' is not valid YAML", "e.g."),
    (["--set", "steps={a: 1, a: 2}"], "--set steps: the value '{a: 1, a: 2}' has a duplicate key 'a'", ""),
    (["--set", "=3"], "--set '': expected a dotted field name", ""),
    (["--set", "steps"], "--set steps: expected key=value", ""),
    (["--set", "imports=[x.py]"], "--set imports: imports cannot be set from the command line", ""),
    (["--set", "seed=-1"], "seed: Input should be greater than or equal to 0", ""),
    (["--only", "-1"], "--only -1: expected run numbers in 1..1", ""),
    (["--only", "2"], "--only 2: expected run numbers in 1..1", ""),
    (["--only", "0"], "--only 0: runs are numbered from 1", "the first run is --only 1"),
    (["--only", "x"], "--only x: expected run numbers", ""),
    (["--backend", "bogus"], "--backend: invalid choice: 'bogus'", "see harness run --help"),
    (["--bogus"], "unrecognized arguments: --bogus", ""),
    (["--set"], "--set: expected one argument", ""),
])
def test_bad_command_line(tmp_path, capsys, args, starts, words):
    cfg = write(tmp_path, GOOD)
    rc, err = cli(["run", cfg, "--out", tmp_path / "out", "--quiet", *args], capsys)
    assert_one_line(rc, err, starts)
    assert words in err and not (tmp_path / "out").exists()


def test_argparse_errors_are_one_line(capsys):
    assert_one_line(*cli([], capsys), "the following arguments are required: command")
    assert_one_line(*cli(["bogus"], capsys), "command: invalid choice: 'bogus'")
    assert_one_line(*cli(["run"], capsys), "the following arguments are required: CONFIG")
    assert_one_line(*cli(["report"], capsys), "the following arguments are required: DIR")


def test_out_pointing_at_a_file(tmp_path, capsys):
    cfg = write(tmp_path, GOOD)
    afile = write(tmp_path, "not a directory", "afile")
    rc, err = cli(["run", cfg, "--out", afile, "--quiet"], capsys)
    assert_one_line(rc, err, f"--out: '{afile}' is a file, not a directory")
    rc, err = cli(["run", cfg, "--out", afile / "sub", "--quiet"], capsys)
    assert_one_line(rc, err, f"--out: '{afile}' is a file, so")
    assert afile.read_text() == "not a directory"


def test_config_path_problems(tmp_path, capsys):
    assert_one_line(*cli(["run", tmp_path], capsys), f"CONFIG: '{tmp_path}' is a directory")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00algorithm")
    assert_one_line(*cli(["run", binary], capsys), "CONFIG: cannot read")


def test_report_on_a_missing_or_empty_directory(tmp_path, capsys):
    rc, err = cli(["report", tmp_path / "nope"], capsys)
    assert_one_line(rc, err, f"DIR: '{tmp_path / 'nope'}': no such directory")
    assert not (tmp_path / "nope").exists()
    assert_one_line(*cli(["report", tmp_path], capsys), "DIR: no runs under")
    assert_one_line(*cli(["report", tmp_path, "--target", "2"], capsys), "--target: expected a test accuracy")
    assert_one_line(*cli(["report", tmp_path, "--target", "x"], capsys), "--target: invalid float value")


# -- the specs themselves (also used outside configs) ------------------------------------------------------
@pytest.mark.parametrize("lr", [math.nan, math.inf, -math.inf, -0.1, "1e400", "NaN", True, None, [0.1]])
def test_learning_rates_are_finite_and_non_negative(lr):
    with pytest.raises(ValueError):
        schedules.canonical(lr)
    with pytest.raises(ValueError):
        Optimizer(lr=lr)


def test_schedule_specs_never_raise_type_errors():
    for spec in [{"name": ["x"]}, {"name": "cosine", "lr": "x"}, {"name": "cosine", "lr": 1, "warmup": "x"},
                 {"name": "cosine", "lr": 1, "total": [1]}, {"name": "step", "lr": 1, "milestones": 3},
                 {"name": "step", "lr": 1, "every": 0.5}, {"name": "linear", "lr": 1, "final": {}}, {1: 2}]:
        with pytest.raises(ValueError):
            schedules.canonical(spec)
    # numeric text (YAML reads 1e-3 as text) is a number; an int stays an int in the canonical text
    assert schedules.canonical("1e-3") == 0.001
    assert '"lr": 0.001' in schedules.canonical({"name": "cosine", "lr": "1e-3"})
    assert '"lr": 1,' in schedules.canonical({"name": "cosine", "lr": 1})
