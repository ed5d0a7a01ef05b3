"""Issue [21], second round of bad input: sbatch scripts that nothing can inject into, YAML
that cannot explode, environment variables checked like config fields, and plugins that
cannot end a command silently. Each test failed on the code before its fix."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "name: r2\nalgorithm: sync_sgd\nn_workers: 2\nsteps: 2\neval_every: 1\ntask: {hidden: [4], batch_size: 8}\n"


def harness(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), err
    assert "Traceback" not in err and all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return path


# -- item 6: harness slurm submit ------------------------------------------------------------------------
INJECT = "\ntouch /tmp/harness-injected"


@pytest.mark.parametrize("option", ["--job-name", "--sbatch-arg", "--partition", "--time", "--mem", "--mpi"])
def test_slurm_values_cannot_inject_a_line(capsys, cfg, tmp_path, option):
    value = ("--qos=low" if option == "--sbatch-arg" else "x") + INJECT
    rc, out, err = harness(capsys, "slurm", "submit", cfg, "--out", tmp_path / "o", "--backend", "mpi",
                           option, value, "--dry-run")
    assert rc == 2 and out == "", out  # no script printed with a shell line of the attacker's
    one_line(err, option)


def test_slurm_config_name_cannot_inject_through_the_default_job_name(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("name: r2", 'name: "r2 x;$(touch y)"'))
    rc, out, err = harness(capsys, "slurm", "submit", path, "--out", tmp_path / "o", "--dry-run")
    assert rc == 0, err
    assert not any(line.startswith("touch") for line in out.splitlines()), out
    assert re.search(r"^#SBATCH --job-name=[A-Za-z0-9._+-]+$", out, re.M), out


@pytest.mark.parametrize("key", ["steps=1\ntouch x", "name=a\rb"])
def test_slurm_set_values_with_control_characters_are_refused(capsys, cfg, tmp_path, key):
    rc, out, err = harness(capsys, "slurm", "submit", cfg, "--out", tmp_path / "o", "--set", key, "--dry-run")
    assert rc == 2 and out == ""
    one_line(err, "--set")


@pytest.mark.parametrize("option,value", [("--nodes", "0"), ("--nodes", "-2"), ("--ntasks-per-node", "0"),
                                          ("--cpus-per-task", "0"), ("--cpus-per-task", "-1"),
                                          ("--max-concurrent", "0"), ("--max-concurrent", "-3"),
                                          ("--gpus-per-node", "-1"), ("--time", "-5"), ("--time", "1h"),
                                          ("--mem", "-4G"), ("--mem", "lots"), ("--job-name", "my job"),
                                          ("--sbatch-arg", "qos=low"), ("--out", "")])
def test_slurm_counts_and_formats_are_checked(capsys, cfg, tmp_path, option, value):
    args = ["--out", tmp_path / "o"] if option != "--out" else []
    rc, out, err = harness(capsys, "slurm", "submit", cfg, *args, "--backend", "mpi", option, value, "--dry-run")
    assert rc == 2 and out == "", out
    one_line(err, option)


def test_slurm_good_values_still_make_a_script(capsys, cfg, tmp_path):
    rc, out, err = harness(capsys, "slurm", "submit", cfg, "--out", tmp_path / "o", "--backend", "mpi", "--nodes", "1",
                           "--ntasks-per-node", "2", "--time", "1-02:00:00", "--mem", "4G", "--partition", "cpu,gpu",
                           "--sbatch-arg=--qos=low", "--job-name", "my-sweep_1", "--set", "steps=3", "--dry-run")
    assert rc == 0, err
    for line in ("#SBATCH --job-name=my-sweep_1", "#SBATCH --time=1-02:00:00", "#SBATCH --mem=4G",
                 "#SBATCH --partition=cpu,gpu", "#SBATCH --qos=low", "#SBATCH --nodes=1"):
        assert line in out.splitlines(), (line, out)
    assert "--set steps=3" in out


# -- item 9: YAML ----------------------------------------------------------------------------------------
def laughs(levels: int, width: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]" for k in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,words", [
    ("grid: &g {seed: *g}\n", ("line 7", "recursive alias *g")),
    ("x: &a [1, [2, *a]]\n", ("line 7", "recursive alias *a")),
    ("cases: &c [{algorithm: local_sgd}, *c]\n", ("recursive alias *c",)),
    (laughs(7), ("line", "aliases expand", "100000")),
    ("task: &t {hidden: [4]}\n" + laughs(6).replace("lol", "*t"), ("aliases expand",)),
])
def test_yaml_aliases_are_bounded(capsys, tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + text)
    t0 = time.perf_counter()
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")
    assert rc == 2 and out == ""
    one_line(err, "c.yaml", *words)
    assert time.perf_counter() - t0 < 2


def test_yaml_aliases_within_bounds_still_work(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: sync_sgd\nn_workers: 2\nsteps: 2\ntask: &t {hidden: [4]}\n"
                    "cases: [{task: *t}, {algorithm: local_sgd, task: *t}]\n")
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")
    assert rc == 0 and len(out.splitlines()) == 2, err
    from harness.config import yaml_load

    assert yaml_load("b: &b {x: 1}\nc: {<<: *b, y: 2}\n") == {"b": {"x": 1}, "c": {"x": 1, "y": 2}}  # merge keys


@pytest.mark.parametrize("field,value", [("steps", "1:30"), ("n_workers", "0:4"), ("eval_every", "1:00:00"),
                                         ("seed", "1_0:0")])
def test_yaml_base_60_is_not_a_number(capsys, tmp_path, field, value):
    path = tmp_path / "c.yaml"
    lines = [line for line in CONFIG.splitlines() if not line.startswith(f"{field}:")]
    path.write_text("\n".join([*lines, f"{field}: {value}"]) + "\n")
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")
    assert rc == 2, out
    one_line(err, field)


def test_yaml_1_2_scalars():
    from harness.config import yaml_load

    got = yaml_load("a: 1:30\nb: yes\nc: off\non: 1\nd: 010\ne: 0o17\nf: 0x1F\ng: 1e-3\nh: .inf\ni: ~\nj: True\n"
                    "k: 2001-12-14\nl: +5\nm: -2.5e+2\n")
    assert got == {"a": "1:30", "b": "yes", "c": "off", "on": 1, "d": 10, "e": 15, "f": 31, "g": 0.001,
                   "h": float("inf"), "i": None, "j": True, "k": "2001-12-14", "l": 5, "m": -250.0}
    assert [type(got[k]) for k in "dgl"] == [int, float, int]


def test_yaml_set_values_use_the_same_rules(capsys, cfg, tmp_path):
    rc, out, err = harness(capsys, "run", cfg, "--out", tmp_path / "o", "--list", "--set", "steps=1:30")
    assert rc == 2
    one_line(err, "steps")
