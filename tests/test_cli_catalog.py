"""Issue 15: ``harness --version``, ``harness list``, ``report --out``, ``--set cases.N.KEY``, help
texts (defaults, examples, no docstring markup) and the generated documents (README's "What
exists" block and docs/algorithms.md equal what the code generates)."""
from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from harness import algorithms, catalog, catalog_md, codecs, tasks
from harness.cli import _parser, main
from harness.config import ConfigError, expand

ROOT = Path(__file__).resolve().parents[1]

BASE = {"algorithm": "local_sgd", "n_workers": 2, "steps": 2, "eval_every": 1, "task": {"hidden": [4]}}
TWO_CASES = {**BASE, "cases": [{"algorithm": "sync_sgd"}, {"algorithm": {"name": "local_sgd", "period": 2}}],
             "grid": {"seed": [0, 1]}}


def cli(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # delegated parsers (slurm) exit on --help
        rc = e.code or 0
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- --version -------------------------------------------------------------------------------------------
def test_version_prints_the_installed_version(capsys):
    rc, out, err = cli(["--version"], capsys)
    assert rc == 0 and out.strip() == f"harness {metadata.version('harness')}", (out, err)


# -- harness list ----------------------------------------------------------------------------------------
def _block(text: str, name: str) -> str:
    """The lines of entry ``name`` in ``harness list`` output (its line and the indented ones after)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  {re.escape(name)}\s", line))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("   ")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def test_list_algorithms_shows_every_registered_one_with_defaults(capsys):
    rc, out, err = cli(["list", "algorithms"], capsys)
    assert rc == 0 and err == ""
    assert out.splitlines()[0].startswith("algorithms (") and "tasks (" not in out
    for name in algorithms.ALGORITHMS:
        block = _block(out, name)
        for key, p in inspect.signature(algorithms.get(name)).parameters.items():
            if p.kind is p.KEYWORD_ONLY and isinstance(p.default, (int, float)) and not isinstance(p.default, bool):
                assert f"{key}={p.default}" in block, (name, key, block)


def test_list_without_a_kind_has_every_section_and_no_markup(capsys):
    rc, out, _ = cli(["list"], capsys)
    assert rc == 0
    heads = [line.split(" (")[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert heads == list(catalog.KINDS)
    for name in [*tasks.TASKS, "ring", "one_peer_exponential", "lognormal", "trace", "bf16", "topk:R"]:
        assert _block(out, name)
    assert "``" not in out and not re.search(r":\w+:`", out)
    assert "hidden=[64, 64]" in _block(out, "digits")  # a task's fields with defaults (a default_factory too)


def test_list_unknown_kind_is_one_line(capsys):
    rc, out, err = cli(["list", "algorithmz"], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("harness: error: KIND: invalid choice: 'algorithmz'") and "algorithms" in err


def test_a_plugin_is_listed_with_its_docstring_and_parameters(capsys):
    @algorithms.register("_catalog_probe")
    def probe(ctx, x, *, period: int = 5, name_tag: str = "a b"):
        """``Probe`` method: *period* steps, see :func:`harness.ops.Grad`.

        More text that the one-line description leaves out."""
        yield from ()
        return x

    try:
        rc, out, _ = cli(["list", "algorithms"], capsys)
        block = _block(out, "_catalog_probe")
        assert "Probe method: period steps, see harness.ops.Grad." in block and "More text" not in block
        assert "period=5" in block and "name_tag=a b" in block
        assert "_catalog_probe" not in catalog_md.readme_block()  # the documents list the package's own
    finally:
        del algorithms.ALGORITHMS["_catalog_probe"]


def test_module_bullets_name_the_entries():
    doc = """Graphs.

    - ring, star: the textbook graphs. More.
    - torus / grid: a lattice (``rows`` optional; default: square).
    * ``exponential``: ``Exp(mean_s)``; ``shifted``: ``shift + Exp``;
      continued here.
    """
    got = catalog.bullets(doc, {"ring", "star", "torus", "grid", "exponential", "shifted"})
    assert got["ring"] == got["star"] == "the textbook graphs. More."
    assert got["torus"] == got["grid"] == "a lattice (``rows`` optional; default: square)."
    assert got["exponential"] == "``Exp(mean_s)``" and got["shifted"] == "``shift + Exp``; continued here."
    assert catalog.first_sentence(got["ring"]) == "the textbook graphs."
    assert catalog.plain(got["torus"]) == "a lattice (rows optional; default: square)."


def test_every_listed_codec_is_one_the_parser_accepts():
    names = [e.name for e in catalog.entries("codecs")]
    assert {*codecs.CASTS, "sign"} <= set(names) and any(n.startswith("topk") for n in names)
    for name in names:
        assert codecs.parse(name.replace(":R", ":0.01").replace(":B", ":64")) is not None, name


def test_allowed_values_come_from_the_annotations():
    (easgd,) = [e for e in catalog.entries("algorithms") if e.name == "async_easgd"]
    rows = {p.name: p for p in easgd.params}
    assert rows["tau"].allowed == "integer >= 1" and rows["beta"].allowed == "number in (0, 1]"
    assert rows["inner"].allowed == "sgd | adamw"


# -- report --out ----------------------------------------------------------------------------------------
def test_report_out_writes_elsewhere(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("algorithm: local_sgd\nn_workers: 2\nsteps: 4\neval_every: 2\ntask: {hidden: [4]}\n")
    assert cli(["run", cfg, "--out", tmp_path / "runs", "--quiet"], capsys)[0] == 0
    rc, out, err = cli(["report", tmp_path / "runs", "--target", "0.5", "--out", tmp_path / "rep"], capsys)
    assert rc == 0, err
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "rep" / "summary.csv").is_file()
    assert not (tmp_path / "runs" / "report").exists() and str(tmp_path / "rep") in out
    (tmp_path / "afile").write_text("x")
    rc, _, err = cli(["report", tmp_path / "runs", "--out", tmp_path / "afile"], capsys)
    assert rc == 2 and err.startswith(f"harness: error: --out: '{tmp_path / 'afile'}' is a file")
    assert (tmp_path / "afile").read_text() == "x"


# -- --set cases.N.KEY -----------------------------------------------------------------------------------
def test_set_one_case_only():
    runs = expand(TWO_CASES, ["cases.2.algorithm.period=16", "steps=3"])
    assert len(runs) == 4 and {r.steps for r in runs} == {3}
    assert [r.algorithm["name"] for r in runs] == ["sync_sgd"] * 2 + ["local_sgd"] * 2
    assert [r.algorithm["period"] for r in runs[2:]] == [16, 16] and sorted(r.seed for r in runs[2:]) == [0, 1]
    with pytest.raises(ConfigError, match=r"^algorithm\.period: unknown parameter for sync_sgd.*\(case 1\)$"):
        expand(TWO_CASES, ["algorithm.period=16"])  # what plain --set does: every run
    # the more specific --set wins whatever the order: the case's over a plain one of the same key
    for order in (1, -1):
        sets = ["cases.2.algorithm.period=16", "cases.1.algorithm.name=local_sgd", "algorithm.period=4"][::order]
        runs = expand(TWO_CASES, sets)
        assert [r.algorithm["period"] for r in runs] == [4, 4, 16, 16]
    # and over a grid axis of that key, for its case only
    runs = expand(TWO_CASES, ["grid.steps=[5, 7]", "cases.1.steps=3"])
    assert [(r.algorithm["name"], r.steps, r.seed) for r in runs] == [  # equal runs listed once
        ("sync_sgd", 3, 0), ("sync_sgd", 3, 1), ("local_sgd", 5, 0), ("local_sgd", 7, 0),
        ("local_sgd", 5, 1), ("local_sgd", 7, 1)]


@pytest.mark.parametrize("key, starts, words", [
    ("cases.3.steps=5", "--set cases.3.steps: no case '3'", "numbered 1..2"),
    ("cases.0.steps=5", "--set cases.0.steps: no case '0'", "numbered 1..2"),
    ("cases.x.steps=5", "--set cases.x.steps: no case 'x'", "numbered 1..2"),
    ("cases.1=5", "--set cases.1: expected cases.N.KEY=VALUE", ""),
    ("cases.1.grid.seed=[1]", "--set cases.1.grid.seed: expected cases.N.KEY=VALUE", ""),
    ("cases=[1]", "--set cases: cases cannot be set", "cases.N.KEY"),
])
def test_set_bad_case_is_one_line(key, starts, words):
    with pytest.raises(ConfigError) as e:
        expand(TWO_CASES, [key])
    assert str(e.value).startswith(starts) and words in str(e.value) and "\n" not in str(e.value)


def test_set_case_without_cases():
    with pytest.raises(ConfigError, match=r"^--set cases\.1\.steps: the config has no cases: list; .*--set steps="):
        expand(BASE, ["cases.1.steps=3"])


# -- help ------------------------------------------------------------------------------------------------
def _commands() -> list[list[str]]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [[], *([c] for c in sub.choices), ["slurm", "submit"], ["slurm", "status"]]


@pytest.mark.parametrize("cmd", _commands(), ids=lambda c: " ".join(c) or "harness")
def test_help_is_plain_text(cmd, capsys):
    rc, out, err = cli([*cmd, "--help"], capsys)
    assert rc == 0 and "usage:" in out, (rc, out, err)
    assert "``" not in out and not re.search(r":\w+:`", out), out


def test_top_level_help_lists_version_and_list(capsys):
    out = cli(["--help"], capsys)[1]
    assert "--version" in out and re.search(r"^\s+list\s", out, re.M) and "examples:" in out


def _parsers():
    """Every command of the one parser tree (the whole tree: mounted commands filled in)."""
    def subs(p):
        return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices

    top = _parser()
    return {"harness": top, **{c: subs(top)[c] for c in ("run", "report", "list", "topology", "sweep", "calibrate",
                                                          "predict", "slurm")},
            **{f"slurm {c}": subs(subs(top)["slurm"])[c] for c in ("submit", "status")}}


@pytest.mark.parametrize("name", ["harness", "run", "report", "list", "topology", "sweep", "slurm", "slurm submit",
                                  "slurm status", "calibrate", "predict"])
def test_every_option_has_help_with_its_default_and_an_example(name):
    parser = _parsers()[name]
    text = parser.format_help()
    assert "examples:" in text
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert action.help, (name, action.dest)
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._VersionAction))
        if action.option_strings and not flag and not action.required:
            rendered = parser._get_formatter()._expand_help(action)
            assert "default" in rendered, (name, action.dest, rendered)


@pytest.mark.parametrize("argv", [["slurm"], ["slurm", "submit", "x.yaml", "--bogus"], ["sweep"],
                                  ["calibrate", "x.yaml"]])
def test_usage_errors_of_every_command_are_one_line(argv, capsys):
    rc, out, err = cli(argv, capsys)
    assert rc == 2 and err.startswith("harness: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


# -- the generated documents -----------------------------------------------------------------------------
def test_generated_documents_are_current():
    for path, text in catalog_md.targets().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is out of date; run: python -m harness.catalog_md --write")


def test_readme_lists_what_exists_and_links_inside_the_repository():
    readme = (catalog_md.ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(catalog_md.BEGIN):readme.index(catalog_md.END)]
    for kind in catalog.KINDS:
        for e in catalog.entries(kind, builtin_only=True):
            assert f"| `{e.name}` |" in block, (kind, e.name)
    assert "../shared" not in readme and "(docs/algorithms.md)" in readme
    doc = (catalog_md.ROOT / catalog_md.ALGORITHMS_MD).read_text(encoding="utf-8")
    for name in algorithms.ALGORITHMS:
        if algorithms.ALGORITHMS[name].__module__.startswith("harness.algorithms."):
            assert f'<a id="{name}"></a>' in doc and f"[`{name}`](#{name})" in doc, name
            assert re.search(rf"^## .*`{name}`", doc, re.M), name
    prose = re.sub(r"^```.*$", "", doc, flags=re.M)
    assert "``" not in prose and "```text" in doc  # literals converted; equations kept as code blocks


def test_list_with_a_config_shows_the_algorithms_its_imports_register(tmp_path):
    # a fresh process: the registry holds the built-in methods only, until the config's imports run
    (tmp_path / "my_alg.py").write_text(textwrap.dedent('''
        from harness.algorithms import register

        @register("_listed_plugin")
        def listed(ctx, x, *, rho: float = 0.25):
            """My method: x <- x - rho * g (a plugin)."""
            yield from ()
            return x
    '''))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("imports: [my_alg.py]\nalgorithm: {name: _listed_plugin}\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "harness.cli", "list", "algorithms", *a], cwd=ROOT,
                                    capture_output=True, text=True, timeout=120)
    plain, with_cfg = run(), run("--config", str(cfg))
    assert plain.returncode == 0 and "_listed_plugin" not in plain.stdout
    assert with_cfg.returncode == 0, with_cfg.stderr
    assert "My method: x <- x - rho * g (a plugin)." in with_cfg.stdout and "rho=0.25" in with_cfg.stdout
    bad = run("--config", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and bad.stderr.startswith("harness: error: CONFIG: no such file")
    assert len(bad.stderr.strip().splitlines()) == 1
