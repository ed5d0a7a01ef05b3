"""Fuzzing the command line with malformed input (issue 14): whatever is wrong, ``harness``
answers exit status 2 and exactly one stderr line ``harness: error: ...`` that names the field
(the dotted key or its first component; the file for broken YAML; the option for command-line
mistakes), with no traceback and no run directory left behind.

Hypothesis (derandomized, so CI sees the same cases every time) generates one mistake per
example on top of a valid config (D-PSGD on a ring, with compute, network and faults blocks):
wrong types and out-of-range or non-finite values for fields at every level, unknown keys at
every level, the same through ``--set``, broken YAML (in the file and in ``--set``), broken
``imports:`` plugins, bad ``cases:``/``grid:``, bad options and bad ``harness report`` calls;
since issue [21] also ``harness slurm submit`` values (injection through control characters,
counts, SLURM formats), YAML aliases (recursive, exploding) and YAML 1.1-only scalars (base 60),
environment variables, plugins that exit or hang, and options a run would ignore (compute
params, ``network.intra`` without nodes); and data files damaged in every way (CIFAR-10 batches
with float or out-of-range pixels, bad labels, wrong shapes, truncated or garbage pickles, missing
or unreadable files; text files that are not UTF-8, too short, missing or a directory).
The CLI runs in-process (``harness.cli.main``), half of the examples with ``--list`` and half as
real runs into ``--out``, which must not exist afterwards.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from harness import algorithms, envvars, tasks  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.config import BACKENDS, RunConfig  # noqa: E402
from harness.cost import LinkSpec, NetworkSpec  # noqa: E402
from harness.tasks.digits import DigitsParams  # noqa: E402
from harness.models.compute import COMPUTE_MODELS, ComputeSpec, MarkovSpec  # noqa: E402
from harness.models.faults import FaultSpec  # noqa: E402
from topologies.catalog import DYNAMIC, STATIC  # noqa: E402

BASE = {
    "name": "fuzz", "algorithm": {"name": "dpsgd", "lr": 0.1}, "n_workers": 4, "steps": 2, "eval_every": 1,
    "task": {"name": "digits", "hidden": [4], "batch_size": 8}, "topology": {"name": "ring"},
    "compute": {"model": "lognormal", "mean_s": 0.01, "markov": {"p_slow": 0.1}},
    "network": {"latency_s": 1e-4, "workers_per_node": 2, "intra": {"latency_s": 2e-6}}, "faults": {"policy": "wait"},
}
# CI: the same cases every run (derandomized). Deeper local fuzzing with fresh cases:
# HARNESS_FUZZ_SCALE=20 HARNESS_FUZZ_RANDOM=1 pytest tests/test_fuzz_inputs.py
SCALE = int(os.environ.get("HARNESS_FUZZ_SCALE", "1"))
SETTINGS = settings(derandomize=not os.environ.get("HARNESS_FUZZ_RANDOM"), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Case:
    """One malformed input: files to write, the arguments after ``harness``, and the words one
    of which the error line must contain (the field)."""
    what: str
    config: dict | str | None = None  # a mapping is dumped as YAML; a str is written as is
    args: list = field(default_factory=list)  # "{cfg}" and "{dir}" are replaced
    expect: tuple = ()
    files: dict = field(default_factory=dict)
    command: str = "run"  # run, report, slurm (slurm submit --dry-run)
    env: dict = field(default_factory=dict)  # environment variables set for the call
    data: tuple | None = None  # a damaged data set to write first (see write_data)


# -- values that are wrong for a field of a given kind ------------------------------------------------------
def _numberish(s: str) -> bool:
    try:
        float(s.strip().replace("_", ""))
        return True
    except ValueError:
        return False


TEXT = st.text(st.characters(codec="utf-8"), max_size=8).filter(lambda s: not _numberish(s))
JUNK = st.one_of(TEXT, st.lists(st.integers(-3, 3), min_size=0, max_size=3),
                 st.dictionaries(st.from_regex(r"[a-z]{1,4}", fullmatch=True), st.integers(0, 3), max_size=2))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
FRACTIONAL = st.floats(-1e6, 1e6).filter(lambda x: x != int(x))
NEGATIVE = st.one_of(st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False), st.integers(max_value=-1))


def bad(kind: str, allowed=()):
    """A strategy of values that are invalid for a field of ``kind``."""
    if kind == "posint":  # int >= 1
        return st.one_of(st.integers(max_value=0), FRACTIONAL, NON_FINITE, JUNK)
    if kind == "seed":  # 0 <= int < 2**63
        return st.one_of(st.integers(max_value=-1), st.integers(2**63, 2**70), FRACTIONAL, NON_FINITE, JUNK)
    if kind == "nonneg":  # finite float >= 0
        return st.one_of(NEGATIVE, NON_FINITE, JUNK)
    if kind == "pos":  # finite float > 0
        return st.one_of(NEGATIVE, st.just(0.0), NON_FINITE, JUNK)
    if kind == "unit":  # (0, 1]
        return st.one_of(bad("pos"), st.floats(1.0001, 1e6))
    if kind == "below1":  # [0, 1)
        return st.one_of(bad("nonneg"), st.floats(1.0, 1e6))
    if kind == "closed01":  # [0, 1]
        return st.one_of(bad("nonneg"), st.floats(1.0001, 1e6))
    if kind == "open01":  # (0, 1)
        return st.one_of(bad("pos"), st.floats(1.0, 1e6))
    if kind == "ge1":  # finite float >= 1
        return st.one_of(st.floats(-1e6, 0.999), NON_FINITE, JUNK)
    if kind == "enum":  # one of ``allowed`` (a callable: registries grow as tests register plugins)
        return st.one_of(TEXT.filter(lambda s: s not in allowed()), st.integers(), st.lists(st.integers(), max_size=2))
    if kind == "poslist":  # list of ints >= 1
        return st.one_of(st.lists(st.integers(max_value=0), min_size=1, max_size=3).map(lambda v: [4, *v]),
                         st.lists(TEXT, min_size=1, max_size=2), TEXT, st.integers())
    if kind == "section":  # a mapping (or a name)
        return st.one_of(st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2), st.booleans())
    if kind == "folder":  # the run name: a folder name
        return st.one_of(st.integers(), st.lists(st.integers(), max_size=2),
                         st.sampled_from(["", ".", "..", "a/b", "/abs", "x\\y", "nul\0"]))
    raise ValueError(kind)


FIELDS = [  # (dotted key, kind, allowed values for enums)
    ("steps", "posint"), ("n_workers", "posint"), ("eval_every", "posint"), ("log_every", "posint"),
    ("threads", "posint"), ("seed", "seed"), ("target_acc", "unit"), ("name", "folder"),
    ("backend", "enum", lambda: BACKENDS), ("on_divergence", "enum", lambda: ("stop", "continue")),
    ("algorithm", "section"), ("algorithm.name", "enum", lambda: algorithms.ALGORITHMS),
    ("algorithm.lr", "nonneg"), ("algorithm.momentum", "nonneg"), ("algorithm.weight_decay", "nonneg"),
    ("algorithm.beta1", "below1"), ("algorithm.eps", "nonneg"), ("algorithm.inner", "enum", lambda: ("sgd", "adamw")),
    ("task", "section"), ("task.name", "enum", lambda: tasks.TASKS), ("task.batch_size", "posint"),
    ("task.dtype", "enum", lambda: ("float32", "float64", "float16", "bfloat16")),
    ("task.partition", "enum", lambda: ("iid", "dirichlet")), ("task.alpha", "pos"), ("task.hidden", "poslist"),
    ("task.test_fraction", "open01"), ("task.parts", "posint"),
    ("topology", "section"), ("topology.name", "enum", lambda: {*STATIC, *DYNAMIC}),
    ("compute", "section"), ("compute.model", "enum", lambda: COMPUTE_MODELS), ("compute.mean_s", "pos"),
    ("compute.sigma", "nonneg"), ("compute.straggler_fraction", "closed01"), ("compute.straggler_factor", "ge1"),
    ("compute.markov.p_slow", "closed01"), ("compute.markov.factor", "ge1"),
    ("network", "section"), ("network.latency_s", "nonneg"), ("network.bandwidth_Bps", "pos"),
    ("network.allreduce", "enum", lambda: ("ring", "tree", "hierarchical")), ("network.drop_prob", "below1"),
    ("network.workers_per_node", "posint"), ("network.intra.bandwidth_Bps", "pos"),
    ("faults", "section"), ("faults.policy", "enum", lambda: ("wait", "continue")),
    ("faults.crash_rate_per_s", "nonneg"), ("faults.recover_after_s", "pos"),
]
KNOWN = {  # level -> keys that exist there (an unknown key is anything else)
    "": set(RunConfig.model_fields) | {"cases", "grid", "imports"},
    "algorithm": set(algorithms.hyperparameters("dpsgd")) | {"name"},
    "task": set(DigitsParams.model_fields),
    "topology": {"name", "weights"},
    "compute": set(ComputeSpec.model_fields), "compute.markov": set(MarkovSpec.model_fields),
    "network": set(NetworkSpec.model_fields), "network.intra": set(LinkSpec.model_fields),
    "faults": set(FaultSpec.model_fields),
}
IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
BROKEN_YAML = ["[", "{", "[1,", "{a: 1", "'x", '"x', "a: b: c", "@x", "`x", "*nowhere", "!!python/object:os.system x",
               "{a: 1, a: 2}", "]", "}"]


def set_dotted(d: dict, key: str, value) -> dict:
    d = copy.deepcopy(d)
    *path, last = key.split(".")
    node = d
    for k in path:
        node = node[k]
    node[last] = value
    return d


def flow(v) -> str:
    """A value as one YAML flow text, for ``--set key=TEXT``."""
    text = yaml.safe_dump(v, default_flow_style=True, width=10**9, allow_unicode=True).rstrip("\n")
    return text.removesuffix("\n...").strip()


@st.composite
def field_value(draw):
    spec = draw(st.sampled_from(FIELDS))
    key, kind = spec[0], spec[1]
    value = draw(bad(kind, *spec[2:]))
    expect = (key, key.split(".")[0])
    if draw(st.booleans()):
        return Case(f"{key}={value!r} in the file", config=set_dotted(BASE, key, value), expect=expect)
    return Case(f"--set {key}={value!r}", config=BASE, args=["--set", f"{key}={flow(value)}"], expect=expect)


@st.composite
def unknown_key(draw):
    level = draw(st.sampled_from(sorted(KNOWN)))
    key = draw(IDENT.filter(lambda k: k not in KNOWN[level]))
    dotted = f"{level}.{key}" if level else key
    expect = (dotted, dotted.split(".")[0])
    if draw(st.booleans()):
        return Case(f"unknown {dotted} in the file", config=set_dotted(BASE, dotted, 1), expect=expect)
    return Case(f"unknown --set {dotted}", config=BASE, args=["--set", f"{dotted}=1"], expect=expect)


@st.composite
def broken_yaml(draw):
    text = yaml.safe_dump(BASE, default_flow_style=False, sort_keys=False)
    lines = text.splitlines()
    at = draw(st.integers(0, len(lines)))
    kind = draw(st.sampled_from(["fragment", "tab", "duplicate", "not a mapping"]))
    if kind == "fragment":
        new = f"{draw(IDENT)}: {draw(st.sampled_from(BROKEN_YAML))}"
    elif kind == "tab":
        new = f"\t{draw(IDENT)}: 1"
    elif kind == "duplicate":
        new = f"{draw(st.sampled_from([k for k in BASE if not isinstance(BASE[k], dict)]))}: 3"
    else:
        return Case("a YAML list", config="- a\n- b\n", expect=("c.yaml",))
    return Case(f"broken YAML: {new!r} at line {at + 1}", config="\n".join([*lines[:at], new, *lines[at:]]) + "\n",
                expect=("c.yaml",))


@st.composite
def broken_set(draw):
    key = draw(st.sampled_from([f[0] for f in FIELDS]))
    kind = draw(st.sampled_from(["yaml", "no =", "empty key", "unsettable"]))
    if kind == "yaml":
        return Case(f"--set {key}=<broken>", config=BASE, expect=(f"--set {key}",),
                    args=["--set", f"{key}={draw(st.sampled_from(BROKEN_YAML))}"])
    if kind == "no =":
        return Case("--set without =", config=BASE, args=["--set", draw(IDENT)], expect=("--set",))
    if kind == "empty key":
        return Case("--set with an empty key part", config=BASE, expect=("--set",),
                    args=["--set", draw(st.sampled_from(["=1", ".steps=1", "task..hidden=1", "task.=1", " =1"]))])
    return Case("--set of an unsettable key", config=BASE, expect=("--set",),
                args=["--set", f"{draw(st.sampled_from(['imports', 'cases', 'grid']))}=[1]"])


@st.composite
def broken_import(draw):
    body = draw(st.sampled_from([
        "def f(:\n", "x = (\n", "if True:\nx = 1\n", "1/0\n", "raise ValueError('no')\n", "raise KeyError('k')\n",
        "import no_such_module_for_fuzzing\n", "import sys\nsys.exit(3)\n", "raise SystemExit('bye')\n",
        "assert False, 'plugin assertion'\n", "open('/no/such/file/at/all')\n",
    ]))
    imports = draw(st.sampled_from([["plugin.py"], "plugin.py", ["missing.py"], ["no_such_mod_xyz"], [1], {"a": 1},
                                    [["plugin.py"]], 7]))
    expect = ("imports",)
    return Case(f"imports {imports!r} of {body!r}", config={"imports": imports, **BASE}, files={"plugin.py": body},
                expect=expect)


@st.composite
def bad_structure(draw):
    kind = draw(st.sampled_from(["cases", "case item", "case key", "grid", "grid value", "grid key", "top"]))
    if kind == "cases":
        return Case("cases not a list", config={**BASE, "cases": draw(st.one_of(st.integers(), TEXT, st.just({"a": 1})))},
                    expect=("cases",))
    if kind == "case item":
        return Case("a case that is not a mapping", config={**BASE, "cases": [{}, draw(st.one_of(st.integers(), TEXT))]},
                    expect=("cases",))
    if kind == "case key":
        key = draw(IDENT.filter(lambda k: k not in KNOWN[""]))
        return Case("unknown key in a case", config={**BASE, "cases": [{}, {key: 1}]}, expect=(key,))
    if kind == "grid":
        return Case("grid not a mapping", config={**BASE, "grid": draw(st.one_of(st.integers(), st.just([1])))},
                    expect=("grid",))
    if kind == "grid value":
        key = draw(st.sampled_from(["seed", "steps", "task.partition"]))
        return Case("grid axis not a list", config={**BASE, "grid": {key: draw(st.one_of(st.integers(), TEXT, st.just([])))}},
                    expect=(f"grid.{key}",))
    if kind == "grid key":
        key = draw(IDENT.filter(lambda k: k not in KNOWN[""]))
        return Case("grid over an unknown field", config={**BASE, "grid": {key: [1, 2]}}, expect=(key,))
    return Case("topology for an algorithm that does not gossip", expect=("topology",),
                config=set_dotted(BASE, "algorithm.name", draw(st.sampled_from(["sync_sgd", "local_sgd", "easgd"]))))


OPTIONS = ("--backend", "--out", "--set", "--only", "--list", "--force", "--quiet", "--save-params", "--help",
           "--print-config", "--rerun-changed", "--keep-changed")


@st.composite
def bad_option(draw):
    kind = draw(st.sampled_from(["backend", "only", "flag", "missing value", "out file"]))
    if kind == "backend":
        return Case("--backend", config=BASE, expect=("--backend",),
                    args=["--backend", draw(TEXT.filter(lambda s: s not in BACKENDS and not s.startswith("-")))])
    if kind == "only":
        only = draw(st.one_of(st.integers().filter(lambda i: i != 1).map(str), TEXT, st.just("0,1"), st.just("0,")))
        try:  # runs are numbered from 1 (issue 27)
            if all(int(p) == 1 for p in only.split(",")):
                only = "5"  # a valid selection of the one run: make it out of range
        except ValueError:
            pass
        return Case(f"--only {only!r}", config=BASE, args=["--only", only], expect=("--only",))
    if kind == "flag":
        flag = "--" + draw(IDENT.filter(lambda k: not any(o.startswith("--" + k) for o in OPTIONS)))
        return Case(f"unknown {flag}", config=BASE, args=[flag], expect=(flag,))
    if kind == "missing value":
        opt = draw(st.sampled_from(["--backend", "--set", "--only", "--out"]))
        return Case(f"{opt} without a value", config=BASE, args=[opt], expect=(opt,))
    return Case("--out is a file", config=BASE, files={"afile": "x"}, args=["--out", "{dir}/afile"], expect=("--out",))


@st.composite
def bad_report(draw):
    kind = draw(st.sampled_from(["missing", "file", "empty", "target"]))
    if kind == "missing":
        return Case("report on a missing dir", command="report", args=["{dir}/nope"], expect=("DIR",))
    if kind == "file":
        return Case("report on a file", command="report", files={"afile": "x"}, args=["{dir}/afile"], expect=("DIR",))
    if kind == "empty":
        return Case("report on an empty dir", command="report", files={"empty/.keep": ""}, args=["{dir}/empty"],
                    expect=("DIR",))
    target = draw(st.one_of(st.floats(1.0001, 1e9).map(str), st.floats(-1e9, 0).map(str), TEXT.filter(
        lambda s: not s.startswith("-"))))
    return Case("report --target", command="report", files={"empty/.keep": ""}, args=["{dir}/empty", "--target", target],
                expect=("--target",))


@contextlib.contextmanager
def _environ(env: dict):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_case(case: Case, list_mode: bool) -> tuple[int, str, str, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        for name, text in case.files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        if case.data is not None:
            write_data(tmp, case.data)
        cfg = tmp / "c.yaml"
        if case.config is not None:
            cfg.write_text((case.config if isinstance(case.config, str) else
                            yaml.safe_dump(case.config, sort_keys=False, allow_unicode=True)).replace("{dir}", str(tmp)))
        args = [a.replace("{dir}", str(tmp)) for a in case.args]
        out = ["--out", str(tmp / "out")] if "--out" not in args else []
        if case.command == "run":
            argv = ["run", str(cfg), *out, "--quiet", *(["--list"] if list_mode else []), *args]
        elif case.command == "slurm":
            argv = ["slurm", "submit", str(cfg), *out, "--dry-run", *args]
        else:
            argv = ["report", *args]
        err, std = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std), _environ(case.env):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse must not exit on its own any more
                rc = f"SystemExit({e.code})"
        left = sorted(p.name for p in tmp.iterdir() if p.name not in {*case.files, "c.yaml", "__pycache__"}
                      and p.name not in ("empty", "cifar", "stories.txt"))
        return rc, err.getvalue(), std.getvalue(), left
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(case: Case, list_mode: bool, strict: bool = False) -> None:
    rc, err, out, left = run_case(case, list_mode)
    lines = err.splitlines()
    assert rc == 2, (case.what, rc, err)
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), (case.what, err)
    assert "Traceback" not in err and out == "", (case.what, err, out)
    assert any(word in lines[0] for word in case.expect), (case.what, case.expect, lines[0])
    if strict:  # the message starts with the full dotted key (or an item of it: task.hidden.1)
        assert lines[0].startswith(tuple(f"harness: error: {case.expect[0]}{c}" for c in ": .")), (case.what, lines[0])
    assert left == [], (case.what, left)  # no run directory (or anything else) written


@settings(SETTINGS, max_examples=600 * SCALE)
@given(case=field_value(), list_mode=st.booleans())
def test_wrong_values_name_their_field(case, list_mode):
    check(case, list_mode, strict=True)


@settings(SETTINGS, max_examples=300 * SCALE)
@given(case=unknown_key(), list_mode=st.booleans())
def test_unknown_keys_at_every_level_are_named(case, list_mode):
    check(case, list_mode, strict=True)


@settings(SETTINGS, max_examples=300 * SCALE)
@given(case=st.one_of(broken_yaml(), broken_set(), broken_import()), list_mode=st.booleans())
def test_broken_yaml_and_imports(case, list_mode):
    check(case, list_mode)


@settings(SETTINGS, max_examples=300 * SCALE)
@given(case=st.one_of(bad_structure(), bad_option(), bad_report()), list_mode=st.booleans())
def test_bad_cases_grid_options_and_report(case, list_mode):
    check(case, list_mode)


# -- issue [21]: slurm submit values, YAML aliases and scalars, environment variables, ignored options -----
CONTROL = st.sampled_from(["\n", "\r", "\x00", "\x1b", "\t", "\x7f", "\n#SBATCH --uid=0\n", "\nrm -rf ~\n"])
SLURM_TEXT = {  # option -> a valid value (a control character goes anywhere into it)
    "--job-name": "sweep", "--partition": "cpu", "--time": "01:00:00", "--mem": "4G", "--mpi": "pmi2",
    "--sbatch-arg": "--qos=low", "--set": "steps=2",
}
SLURM_COUNTS = {"--nodes": 1, "--ntasks-per-node": 1, "--cpus-per-task": 1, "--max-concurrent": 1, "--gpus-per-node": 0}
SLURM_FORMATS = {  # option -> values of the wrong form
    "--time": ["-5", "1h", "1:2:3:4", "soon", "01:00:00 ", "1-", ""], "--mem": ["-4G", "4 G", "lots", "4GB!", ""],
    "--job-name": ["my job", "a;b", "$(id)", "`id`", "", "x" * 201], "--partition": ["cpu gpu", "a;b", ",", ""],
    "--mpi": ["pmi 2", "a;b", ""], "--sbatch-arg": ["qos=low", "", " "], "--out": ["", " "],
}


@st.composite
def bad_slurm(draw):
    kind = draw(st.sampled_from(["control", "count", "format"]))
    if kind == "control":
        opt = draw(st.sampled_from(sorted(SLURM_TEXT)))
        good = SLURM_TEXT[opt]
        at = draw(st.integers(0, len(good)))
        value = good[:at] + draw(CONTROL) + good[at:]
        return Case(f"slurm {opt}={value!r}", config=BASE, command="slurm", args=[opt, value], expect=(opt,))
    if kind == "count":
        opt = draw(st.sampled_from(sorted(SLURM_COUNTS)))
        value = str(draw(st.integers(-10**6, SLURM_COUNTS[opt] - 1)))
        return Case(f"slurm {opt} {value}", config=BASE, command="slurm", args=["--backend", "mpi", opt, value],
                    expect=(opt,))
    opt = draw(st.sampled_from(sorted(SLURM_FORMATS)))
    value = draw(st.sampled_from(SLURM_FORMATS[opt]))
    return Case(f"slurm {opt}={value!r}", config=BASE, command="slurm", args=[f"{opt}={value}"], expect=(opt,))


def _yaml_lines(base: dict) -> list[str]:
    return yaml.safe_dump(base, default_flow_style=False, sort_keys=False).splitlines()


@st.composite
def bad_yaml_aliases(draw):
    kind = draw(st.sampled_from(["recursive", "laughs", "base60"]))
    if kind == "recursive":
        section = draw(st.sampled_from([k for k in BASE if isinstance(BASE[k], dict)] + ["grid", "x"]))
        inner = draw(st.sampled_from(["[*r]", "{a: *r}", "[1, [2, *r]]", "{a: {b: [*r]}}"]))
        body = {k: v for k, v in BASE.items() if k != section}
        text = "\n".join(_yaml_lines(body)) + f"\n{section}: &r {inner}\n"
        return Case(f"recursive alias in {section}", config=text, expect=("recursive alias",))
    if kind == "laughs":
        width = draw(st.integers(2, 12))
        levels = draw(st.integers(1, 30).filter(lambda k: width ** k > 2 * 10**5))
        lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
        lines += [f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * width)}]" for k in range(1, levels)]
        where = draw(st.sampled_from(["top", "grid"]))
        text = "\n".join(_yaml_lines(BASE)) + "\n"
        if where == "top":
            text += "\n".join(lines) + "\n"
        else:
            text += "x-laughs:\n" + "\n".join("  " + line for line in lines) + "\n"
        return Case(f"{width}^{levels} laughs", config=text, expect=("aliases expand",))
    key = draw(st.sampled_from(["steps", "n_workers", "eval_every", "log_every", "seed", "threads"]))
    parts = draw(st.lists(st.integers(0, 59), min_size=2, max_size=4))
    value = f"{draw(st.integers(1, 99))}:" + ":".join(f"{p:02d}" for p in parts[1:])
    body = {k: v for k, v in BASE.items() if k != key}
    text = "\n".join(_yaml_lines(body)) + f"\n{key}: {value}\n"
    return Case(f"{key}: {value} (YAML 1.1 base 60)", config=text, expect=(key,))


def _bad_env_value(var: envvars.Var):
    if var.kind == "choice":
        return TEXT.filter(lambda s: s.strip() not in var.choices and s.strip() != "" and "\0" not in s)
    assert var.low == 0  # below the range: < 0, or <= 0 where 0 itself is invalid
    below = st.floats(max_value=-1e-9 if var.low_inclusive else 0.0, allow_nan=False, allow_infinity=False)
    return st.one_of(below.map(repr), st.sampled_from(["nan", "inf", "-inf", "1e400", "NaN", "5s", "1,5", "0x10"]),
                     TEXT.filter(lambda s: "\0" not in s and s.strip() != ""))


@st.composite
def bad_env(draw):
    var = envvars.VARS[draw(st.sampled_from(sorted(envvars.VARS)))]
    value = draw(_bad_env_value(var))
    command = draw(st.sampled_from(["run", "slurm"]))
    return Case(f"{var.name}={value!r} ({command})", config=BASE, command=command, env={var.name: value},
                expect=(f"{var.name}=",))


@st.composite
def ignored_option(draw):
    kind = draw(st.sampled_from(["params", "intra", "trace"]))
    if kind == "params":
        model = draw(st.sampled_from(["constant", "lognormal", "exponential", "pareto"]))
        key = draw(IDENT)
        if draw(st.booleans()):
            return Case(f"compute.params.{key} for {model}", expect=("compute.params",),
                        config=set_dotted(set_dotted(BASE, "compute.model", model), "compute.params", {key: 1}))
        return Case(f"--set compute.params.{key} for {model}", config=set_dotted(BASE, "compute.model", model),
                    args=["--set", f"compute.params.{key}=1"], expect=("compute.params",))
    if kind == "intra":
        base = copy.deepcopy(BASE)
        del base["network"]["workers_per_node"]
        if draw(st.booleans()):
            return Case("network.intra without workers_per_node", config=base, expect=("network.intra",))
        return Case("--set network.workers_per_node=null", config=BASE, expect=("network.intra",),
                    args=["--set", "network.workers_per_node=null"])
    row = draw(st.sampled_from(["-1", "abc", "inf", "nan", "", "-1e-9", "1e400"]))
    csv = f"worker,step,seconds\n0,1,0.1\n1,1,{row}\n2,1,0.1\n3,1,0.1\n"
    return Case(f"trace row seconds={row!r}", files={"t.csv": csv}, expect=("compute.trace",),
                config=set_dotted(BASE, "compute", {"model": "trace", "trace": "{dir}/t.csv"}))


@settings(SETTINGS, max_examples=150 * SCALE)
@given(case=bad_slurm())
def test_slurm_submit_values_cannot_reach_the_script(case):
    check(case, list_mode=False)


@settings(SETTINGS, max_examples=150 * SCALE)
@given(case=st.one_of(bad_yaml_aliases(), bad_env(), ignored_option()), list_mode=st.booleans())
def test_yaml_aliases_env_vars_and_ignored_options(case, list_mode):
    check(case, list_mode)


# -- issue [21]: data files (CIFAR-10 python batches, text files) damaged in every way ------------------
def _cifar_batch(mutation: str, n: int, seed: int) -> bytes:
    """A pickled CIFAR-10 batch of ``n`` images with one ``mutation`` (see DATA_MUTATIONS)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    data, labels = rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]
    batch = {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"f"] * n}
    i = int(rng.integers(0, n))
    if mutation == "float pixels":
        batch[b"data"] = data.astype(np.float32) / 255
    elif mutation == "pixel out of range":
        wide = data.astype(np.int64)
        wide[i, int(rng.integers(0, 3072))] = int(rng.choice([-1, 256, 10**6]))
        batch[b"data"] = wide
    elif mutation == "label out of range":
        labels[i] = int(rng.choice([-1, 10, 255, 10**9]))
    elif mutation == "bool labels":
        batch[b"labels"] = [bool(v % 2) for v in labels]
    elif mutation == "float labels":
        batch[b"labels"] = [v + 0.5 for v in labels]
    elif mutation == "short rows":
        batch[b"data"] = data[:, : int(rng.integers(1, 3072))]
    elif mutation == "fewer labels":
        batch[b"labels"] = labels[: int(rng.integers(0, n))]
    elif mutation == "no images":
        batch[b"data"], batch[b"labels"] = data[:0], []
    elif mutation == "missing key":
        del batch[rng.choice([b"data", b"labels"])]
    elif mutation == "not a dict":
        batch = [data, labels]
    raw = pickle.dumps(batch, protocol=2)
    if mutation == "truncated":
        raw = raw[: int(rng.integers(0, len(raw)))]
    elif mutation == "garbage":
        raw = bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8))
    return raw


DATA_MUTATIONS = ["float pixels", "pixel out of range", "label out of range", "bool labels", "float labels",
                  "short rows", "fewer labels", "no images", "missing key", "not a dict", "truncated", "garbage",
                  "missing file", "unreadable file"]


@st.composite
def bad_data(draw):
    """A CIFAR-10 directory with one damaged batch file, or a text file the text task cannot use."""
    if draw(st.booleans()):
        mutation = draw(st.sampled_from(DATA_MUTATIONS))
        which = draw(st.sampled_from([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]))
        return Case(f"cifar {which}: {mutation}", config={**BASE, "task": {"name": "cifar10", "root": "{dir}/cifar"}},
                    data=("cifar", which, mutation, draw(st.integers(0, 2**16))), expect=("task.root",))
    kind = draw(st.sampled_from(["not utf-8", "too short", "missing", "a directory"]))
    return Case(f"text: {kind}", config={**BASE, "task": {"name": "text", "path": "{dir}/stories.txt", "tokens": "char"}},
                data=("text", kind, None, draw(st.integers(0, 2**16))), expect=("task.path",))


def write_data(tmp: Path, data) -> None:
    import pickle  # noqa: F401 (the batches are pickles)

    from harness.tasks.fixtures import write_cifar10

    kind, which, mutation, seed = data
    if kind == "cifar":
        d = write_cifar10(tmp / "cifar", per_batch=4) / "cifar-10-batches-py"
        if mutation == "missing file":
            (d / which).unlink()
        elif mutation == "unreadable file":
            (d / which).unlink()
            (d / which).mkdir()
        else:
            (d / which).write_bytes(_cifar_batch(mutation, 4, seed))
    else:
        p = tmp / "stories.txt"
        if which == "not utf-8":
            p.write_bytes(b"once upon a time \xff\xfe there was " * 50)
        elif which == "too short":
            p.write_text("tiny")
        elif which == "a directory":
            p.mkdir()


@settings(SETTINGS, max_examples=40 * SCALE)
@given(case=bad_data())
def test_damaged_data_files_are_one_line_naming_the_file(case):
    check(case, list_mode=False)
