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


# -- item 10: environment variables, checked like config fields ------------------------------------------
BAD_ENV = [("HARNESS_TIMEOUT_S", v) for v in ("abc", "-5", "nan", "inf", "1e400", "5s")] + \
    [("HARNESS_SUPERVISE", v) for v in ("maybe", "2", "yes", "true")] + \
    [("HARNESS_CLAIM_STALE_S", v) for v in ("0", "-1", "soon", "nan")] + \
    [("HARNESS_PROGRESS_EVERY", v) for v in ("0", "never", "-inf")] + \
    [("HARNESS_TORCH_BACKEND", v) for v in ("cuda", "GLOO", "mpi")] + \
    [("HARNESS_IMPORT_TIMEOUT_S", v) for v in ("-1", "x", "nan")]


@pytest.mark.parametrize("var,value", BAD_ENV)
@pytest.mark.parametrize("command", ["run", "list", "slurm"])
def test_bad_environment_variables_are_named(capsys, monkeypatch, cfg, tmp_path, var, value, command):
    monkeypatch.setenv(var, value)
    argv = {"run": ["run", cfg, "--out", tmp_path / "o", "--list"], "list": ["list", "algorithms", "--config", cfg],
            "slurm": ["slurm", "submit", cfg, "--out", tmp_path / "o", "--dry-run"]}[command]
    rc, out, err = harness(capsys, *argv)
    assert rc == 2 and out == "", out
    line = one_line(err, f"{var}={value!r}: expected", f"e.g. {var}=")
    assert line.startswith(f"harness: error: {var}="), line


def test_every_reader_goes_through_envvars(monkeypatch):
    """The readers of each variable give the checked value, and refuse what check_all refuses."""
    from harness import claims, envvars, progress
    from harness.backends import launch

    readers = {"HARNESS_TIMEOUT_S": launch.op_timeout_s, "HARNESS_CLAIM_STALE_S": claims.stale_after_s,
               "HARNESS_PROGRESS_EVERY": progress.every_s}
    for var, read in readers.items():
        monkeypatch.setenv(var, "7.5")
        assert read() == 7.5
        monkeypatch.setenv(var, "")
        assert read() == envvars.VARS[var].default
        monkeypatch.setenv(var, "abc")
        with pytest.raises(envvars.EnvError, match=f"^{var}='abc': expected"):
            read()
    monkeypatch.setenv("HARNESS_TIMEOUT_S", "0")
    assert launch.op_timeout_s() == 0  # 0 still means "no limit"


def test_readme_lists_every_environment_variable():
    from harness import envvars

    readme = (ROOT / "README.md").read_text()
    assert envvars.markdown_table() in readme, "README 'When things go wrong': paste python -m harness.envvars"
    used = set()
    for path in [*ROOT.glob("harness/**/*.py"), *ROOT.glob("results/**/*.py"), *ROOT.glob("simulators/**/*.py")]:
        used |= set(re.findall(r"\bHARNESS_[A-Z_]+\b", path.read_text()))
    assert used <= set(envvars.VARS), f"read but not declared in harness/envvars.py: {used - set(envvars.VARS)}"


# -- item 8: plugins that exit or hang while imported ----------------------------------------------------
PLUGIN_CFG = "imports: [plugin.py]\n" + CONFIG


PLUGINS = [
    ("import os\nos._exit(0)\n", ("os._exit(0)", "plugin.py line 2")),
    ("import os\nos._exit(3)\n", ("os._exit(3)",)),
    ("import sys\nsys.exit(0)\n", ("sys.exit(0)", "plugin.py line 2")),
    ("raise GeneratorExit\n", ("GeneratorExit",)),
    ("class Stop(BaseException):\n    pass\nraise Stop('now')\n", ("Stop: now", "line 3")),
    ("import time\ntime.sleep(60)\n", ("HARNESS_IMPORT_TIMEOUT_S", "after 0.5 s", "line 2")),
    ("import time\ntry:\n    time.sleep(60)\nexcept Exception:\n    pass\n", ("HARNESS_IMPORT_TIMEOUT_S",)),
    ("while True:\n    pass\n", ("HARNESS_IMPORT_TIMEOUT_S",)),
]
_RUN_PLUGINS = """
import contextlib, io, json, sys
from harness.cli import main
for d in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        rc = main(["run", d + "/c.yaml", "--out", d + "/o", "--quiet"])
    print(json.dumps([d, rc, err.getvalue()]), flush=True)
"""


def test_a_plugin_cannot_end_or_hang_the_command(tmp_path):
    """All cases in one fresh process (os._exit would end pytest itself on today's code), each
    in-process there: every case must report, with status 2 and its one line, in time."""
    dirs = []
    for k, (body, _) in enumerate(PLUGINS):
        d = tmp_path / f"p{k}"
        d.mkdir()
        (d / "plugin.py").write_text(body)
        (d / "c.yaml").write_text(PLUGIN_CFG)
        dirs.append(str(d))
    env = {**os.environ, "HARNESS_IMPORT_TIMEOUT_S": "0.5"}
    r = subprocess.run([sys.executable, "-c", _RUN_PLUGINS, *dirs], capture_output=True, text=True, env=env,
                       timeout=120, cwd=ROOT)
    import json

    got = {d: (rc, err) for d, rc, err in map(json.loads, r.stdout.splitlines())}
    for d, (body, words) in zip(dirs, PLUGINS):
        assert d in got, (body, "ended the process", r.returncode, r.stdout[-500:], r.stderr[-500:])
        rc, err = got[d]
        assert rc == 2, (body, rc, err)
        one_line(err, "imports: 'plugin.py'", *words)
        assert not Path(d, "o").exists(), body


def test_a_plugin_that_forks_still_imports(capsys, tmp_path):
    """os._exit is only guarded in this process: a child the plugin forks exits for real."""
    (tmp_path / "plugin.py").write_text(
        "import multiprocessing as mp\np = mp.get_context('fork').Process(target=print)\np.start()\np.join()\n"
        "assert p.exitcode == 0, p.exitcode\n")
    (tmp_path / "c.yaml").write_text(PLUGIN_CFG)
    rc, out, err = harness(capsys, "run", tmp_path / "c.yaml", "--out", tmp_path / "o", "--list")
    assert rc == 0, err
    import signal

    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0 and signal.getsignal(signal.SIGALRM) in (
        signal.SIG_DFL, signal.default_int_handler, None)


# -- item 10: options that were silently ignored ---------------------------------------------------------
@pytest.mark.parametrize("extra,words", [
    ("compute: {model: lognormal, params: {p: 0.2}}", ("compute.params.p", "takes no params")),
    ("compute: {model: constant, params: {seconds: 1}}", ("compute.params.seconds",)),
    ("compute: {model: pareto}\ngrid: {compute.params.x: [1]}", ("compute.params.x",)),
    ("network: {intra: {latency_s: 2e-6}}", ("network.intra", "workers_per_node")),
    ("network: {intra: {bandwidth_Bps: 1e10}, workers_per_node: null}", ("network.intra",)),
])
def test_options_a_run_would_ignore_are_named(capsys, tmp_path, extra, words):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + extra + "\n")
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")
    assert rc == 2, out
    line = one_line(err, *words)
    assert line.startswith(f"harness: error: {words[0]}"), line


def test_options_a_run_uses_are_still_fine(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("n_workers: 2", "n_workers: 4") +
                    "compute: {model: pareto, mean_s: 0.02, alpha: 2.5, straggler_fraction: 0.25}\n"
                    "network: {workers_per_node: 2, intra: {latency_s: 1e-6}, allreduce: hierarchical}\n")
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")
    assert rc == 0, err


def test_a_declared_plugin_compute_model_checks_its_params(capsys, tmp_path):
    (tmp_path / "plugin.py").write_text(
        "from simulators.compute import register_compute\n"
        "@register_compute('r2_bimodal', params=('p',))\n"
        "def bimodal(times, i):\n    return times.mean_s * (5.0 if times.rngs[i].random() < times.spec.params.get('p', 0.1)"
        " else 1.0)\n")
    path = tmp_path / "c.yaml"
    path.write_text(PLUGIN_CFG + "compute: {model: r2_bimodal, params: {p: 0.2}}\n")
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")
    assert rc == 0, err
    path.write_text(PLUGIN_CFG + "compute: {model: r2_bimodal, params: {q: 0.2}}\n")
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")
    assert rc == 2
    one_line(err, "compute.params.q: model 'r2_bimodal' takes the params p")


@pytest.mark.parametrize("rows,words", [
    ("0,1,0.1\n0,2,-0.5\n1,1,0.1\n", ("row 3", "-0.5")),
    ("0,1,0.1\n0,2,fast\n1,1,0.1\n", ("row 3", "'fast'")),
    ("0,1,inf\n1,1,0.1\n", ("row 2", "inf")),
    ("0,1,0.1\n1,1,\n", ("row 3", "nan")),
    ("0,1,0.1\n", ("no rows for worker 1",)),
])
def test_a_bad_compute_trace_is_named_when_the_config_is_read(capsys, tmp_path, rows, words):
    (tmp_path / "t.csv").write_text("worker,step,seconds\n" + rows)
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + f"compute: {{model: trace, trace: {tmp_path / 't.csv'}}}\n")
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--list")  # --list: nothing runs
    assert rc == 2, out
    one_line(err, "compute.trace", *words)


@pytest.mark.parametrize("quorum", ["0", "-1", "1.5", "True"])
def test_allreduce_quorum_zero_is_not_no_quorum(capsys, tmp_path, quorum):
    (tmp_path / "plugin.py").write_text(
        "from harness.algorithms import register\nfrom harness.ops import AllReduce, Grad, Record\n"
        f"@register('r2_quorum_{quorum.replace('.', '_').replace('-', 'm')}')\n"
        f"def alg(ctx, x, *, lr: float = 0.1):\n    for t in range(ctx.steps):\n"
        f"        loss, g = yield Grad(x)\n        g = yield AllReduce(g, quorum={quorum})\n"
        f"        x = x - lr * g.value\n        yield Record(step=t + 1, x=x, loss=loss)\n    return x\n")
    path = tmp_path / "c.yaml"
    name = f"r2_quorum_{quorum.replace('.', '_').replace('-', 'm')}"
    path.write_text(PLUGIN_CFG.replace("algorithm: sync_sgd", f"algorithm: {name}"))
    rc, out, err = harness(capsys, "run", path, "--out", tmp_path / "o", "--quiet")
    assert rc == 2, (out, err)
    one_line(err, "AllReduce.quorum", quorum)


@pytest.mark.parametrize("argv", [["run", "{cfg}", "--out", ""], ["run", "{cfg}", "--out", " ", "--list"],
                                  ["report", "{dir}", "--out", ""], ["sweep", "{cfg}", "--out", ""]])
def test_an_empty_out_is_named(capsys, cfg, tmp_path, argv):
    argv = [a.replace("{cfg}", str(cfg)).replace("{dir}", str(tmp_path)) for a in argv]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc, out, err = harness(capsys, *argv)
    finally:
        os.chdir(cwd)
    assert rc == 2 and not (tmp_path / "runs").exists()
    one_line(err, "--out: empty")


def test_every_config_model_forbids_unknown_keys():
    """Each pydantic model in the packages (config sections, task params, specs) refuses a key it
    does not know: a new section without extra='forbid' would accept a misspelling silently."""
    import importlib
    import pkgutil

    from pydantic import BaseModel

    import harness
    import results
    import simulators
    import topologies

    for pkg in (harness, simulators, results, topologies):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if not mod.name.endswith("__main__"):
                importlib.import_module(mod.name)

    def subclasses(c):
        for s in c.__subclasses__():
            yield s
            yield from subclasses(s)

    ours = [c for c in set(subclasses(BaseModel))
            if c.__module__.split(".")[0] in ("harness", "simulators", "results", "topologies")]
    assert len(ours) >= 10, ours
    loose = sorted(f"{c.__module__}.{c.__name__}" for c in ours if c.model_config.get("extra") != "forbid")
    assert not loose, f"models that accept unknown keys: {loose}"


def test_a_resolved_config_loads_again(tmp_path):
    """run.json holds cfg.model_dump(): every default written out. The new checks (intra, params)
    must accept it, or a dumped config (tests, a user copying run.json) would not load."""
    import json

    from harness.config import load, resolve

    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.replace("n_workers: 2", "n_workers: 4") + "compute: {model: trace, trace: t.csv}\n"
                    "cases: [{}, {network: {workers_per_node: 2, intra: {bandwidth_Bps: 1e10}}},"
                    " {compute: {model: pareto, params: {}}}]\n")
    (tmp_path / "t.csv").write_text("worker,step,seconds\n" + "".join(f"{w},1,0.1\n" for w in range(4)))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for cfg in load(path):
            again = resolve(json.loads(json.dumps(cfg.model_dump(mode="json"))))
            assert again.run_id == cfg.run_id
    finally:
        os.chdir(cwd)
