"""Issue [27], CLI items: ``--help``/``--version`` without torch (fast), ``--print-config``,
runs numbered from 1 (``--list``, ``--only``, SLURM array ids), did-you-mean for names."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.config import expand, load

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """name: v27
algorithm: {name: sync_sgd, lr: 0.1}
n_workers: 2
steps: 2
eval_every: 1
task: {name: quadratic}
backend: stacked
grid: {seed: [0, 1, 2]}
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return path


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["run", "--help"], ["report", "--help"]])
def test_help_and_version_import_no_torch_and_are_fast(args):
    code = ("import sys, time; t = time.perf_counter(); from harness.cli import main; rc = main(sys.argv[1:]); "
            "dt = time.perf_counter() - t; "
            "print('HEAVY', sorted({'torch', 'pandas', 'numpy'} & set(sys.modules)), round(dt, 3), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    heavy, dt = re.search(r"HEAVY (\[.*\]) ([\d.]+)", r.stderr).groups()
    assert heavy == "[]" and float(dt) < 0.5, r.stderr
    if args == ["--version"]:
        assert r.stdout.startswith("harness ")


def test_list_and_only_count_from_one(capsys, cfg, tmp_path):
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--list")
    ids = [r.run_id for r in load(cfg)]
    assert rc == 0 and out.splitlines() == [f"{i:4d}  {rid}" for i, rid in enumerate(ids, 1)], out
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--list", "--only", "3,1")
    assert rc == 0 and out.splitlines() == [f"   3  {ids[2]}", f"   1  {ids[0]}"], out
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--only", "0")
    assert rc == 2 and err.strip() == ("harness: error: --only 0: runs are numbered from 1 (as --list shows them, "
                                       "like cases.N); the first run is --only 1")
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--only", "4")
    assert rc == 2 and "expected run numbers in 1..3" in err and len(err.strip().splitlines()) == 1
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--only", "2", "--quiet")
    assert rc == 0 and [p.name for p in (tmp_path / "o").iterdir() if p.is_dir()] == [ids[1]]


def test_print_config_prints_the_resolved_runs_and_runs_nothing(capsys, cfg, tmp_path):
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--print-config", "--only", "2,3")
    assert rc == 0 and err == ""
    docs = list(yaml.safe_load_all(out))
    ids = [r.run_id for r in load(cfg)]
    assert [d["seed"] for d in docs] == [1, 2] and out.startswith(f"# run 2: {ids[1]}\n")
    assert "momentum" in docs[0]["algorithm"] and "batch_size" in docs[0]["task"]  # every default filled in
    assert [r.run_id for d in docs for r in expand(d)] == ids[1:]  # each document is that run again
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sets, expect", [
    ("algorithm.name=sync_sdg", "algorithm.name: unknown algorithm 'sync_sdg' (did you mean 'sync_sgd'?)"),
    ("task.name=quadratc", "task.name: unknown task 'quadratc' (did you mean 'quadratic'?)"),
    ("backend=stackd", "backend: did you mean 'stacked'?"),
])
def test_did_you_mean_in_config_errors(capsys, cfg, tmp_path, sets, expect):
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--list", "--set", sets)
    assert rc == 2 and err.startswith(f"harness: error: {expect}") and len(err.strip().splitlines()) == 1, err


def test_did_you_mean_for_a_topology_and_a_backend_option(capsys, cfg, tmp_path):
    rc, out, err = cli(capsys, "run", cfg, "--out", tmp_path / "o", "--list", "--set", "algorithm.name=dpsgd",
                       "--set", "topology.name=rign")
    assert rc == 2 and "unknown topology 'rign' (did you mean 'ring'?)" in err, err
    rc, out, err = cli(capsys, "run", cfg, "--backend", "simpyy")
    assert rc == 2 and "invalid choice: 'simpyy'" in err and "did you mean 'simpy'?" in err, err
    rc, out, err = cli(capsys, "run", cfg, "--list", "--set", "algorithm.name=zzzz")
    assert rc == 2 and "did you mean" not in err  # nothing close: no guess


def test_slurm_array_ids_are_the_run_numbers_of_only(capsys, cfg, tmp_path):
    """The array script passes SLURM_ARRAY_TASK_ID to --only: ids must be run numbers from 1."""
    out = tmp_path / "o"
    assert cli(capsys, "run", cfg, "--out", out, "--only", "2", "--quiet")[0] == 0  # run 2 finished
    rc, script, err = cli(capsys, "slurm", "submit", cfg, "--out", out, "--dry-run")
    assert rc == 0, err
    array = re.search(r"^#SBATCH --array=(\S+)%\d+$", script, re.M).group(1)
    assert array == "1,3" and 'run=$((SLURM_ARRAY_TASK_ID + 0))' in script and '--only "$run"' in script
    ids = [r.run_id for r in load(cfg)]
    for task_id in array.split(","):  # what each array task would run
        rc, listed, err = cli(capsys, "run", cfg, "--out", out, "--only", task_id, "--list")
        assert listed.split() == [task_id, ids[int(task_id) - 1]]
        assert not (out / ids[int(task_id) - 1]).exists()  # a pending run, not the finished one


# -- one parser tree ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["sweep"], ["slurm", "submit"], ["slurm", "status"], ["topology"], ["calibrate"],
                                  ["predict"]])
def test_every_command_is_a_subparser_with_one_help_style(capsys, argv):
    rc, top, err = cli(capsys, "--help")
    assert rc == 0 and all(re.search(rf"^\s+{name}\b", top, re.M) for name in
                           ("run", "report", "list", "topology", "sweep", "slurm", "calibrate", "predict")), top
    rc, out, err = cli(capsys, *argv, "--help")
    assert rc == 0 and out.startswith(f"usage: harness {' '.join(argv)} ") and "\nexamples:\n  " in out, out
    assert "\noptions:\n  -h, --help " in out


def test_an_unknown_option_is_named_by_its_command_with_a_guess(capsys, cfg):
    rc, out, err = cli(capsys, "sweep", cfg, "--jbos", "2")
    assert rc == 2 and err == ("harness: error: unrecognized arguments: --jbos 2; did you mean '--jobs'?; "
                               "see harness sweep --help\n")
    rc, out, err = cli(capsys, "slurm", "submit", cfg, "--grce=60")
    assert rc == 2 and "did you mean '--grace'?; see harness slurm submit --help" in err


def test_calibrate_only_counts_from_one(capsys):
    rc, out, err = cli(capsys, "calibrate", ROOT / "presets/calibrate-mpi.yaml", "--backend", "mpi", "--only", "0")
    assert rc == 2 and err == ("harness: error: --only 0: expected a run number in 1..4 (as harness run --list shows "
                               "them; the first run is --only 1)\n")
