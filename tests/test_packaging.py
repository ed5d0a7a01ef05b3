"""``pip install .`` (a wheel, not editable) ships what ``harness`` reads at run time, checked
from outside the source tree: ``harness slurm submit --dry-run`` must print the sbatch script,
so the ``slurm/*.sbatch`` templates must be in the wheel.

Installing torch & co. again into a fresh venv would take minutes, so the fresh venv gets only
our wheel (``--no-deps``) plus a ``.pth`` file naming this interpreter's site-packages for the
dependencies. Python appends a directory named in a ``.pth`` file to ``sys.path`` *after* the
venv's own site-packages and does not read that directory's ``.pth`` files, so the editable
install's finder in ``.venv`` stays off and ``import harness`` finds the wheel's copy (checked
through ``__file__``). The wheel is built from a copy of the sources, so the checkout gets no
``build/`` or ``*.egg-info``; with no setuptools in ``.venv`` it is built in pip's isolated
environment, which needs the package index like ``make`` does.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name != "tests")
TEMPLATES = sorted(p.name for p in (ROOT / "slurm").glob("*.sbatch"))


def _need(ok: bool, why: str) -> None:
    """Skip (locally) or fail (``CI=true``) with the reason, like ``tests.tools.require``."""
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: the test environment must provide it)")
    pytest.skip(why)


def _version(dist: str) -> tuple[int, ...]:
    """Installed version of ``dist`` as ints, () if absent (metadata only: importing setuptools
    here would clash with the distutils pytest may already have imported)."""
    from importlib import metadata

    try:
        return tuple(int(x) for x in metadata.version(dist).split(".")[:2] if x.isdigit())
    except metadata.PackageNotFoundError:
        return ()


def _run(cmd, cwd, env) -> subprocess.CompletedProcess:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


def _build_wheel(tmp: Path, env) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # setuptools >= 70.1 builds wheels by itself; 68..70.0 needs the `wheel` package
    here = _version("setuptools") >= (70, 1) or (_version("setuptools") >= (68,) and _version("wheel"))
    isolation = ["--no-build-isolation", "--no-index"] if here else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", tmp / "dist", src], tmp, env)
    (wheel,) = (tmp / "dist").glob("harness-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path, env) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel], tmp, env)
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).stdout.strip())
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "_harness_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    return venv


def test_wheel_install_prints_sbatch_script_outside_the_checkout(tmp_path):
    _need(_version("pip") >= (22, 3), f"pip >= 22.3 (for --python) not found in {sys.executable}")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONNOUSERSITE="1")
    wheel = _build_wheel(tmp_path, env)
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [f"slurm/{t}" for t in [*TEMPLATES, "__init__.py"] if f"slurm/{t}" not in names]
    assert TEMPLATES and not missing, f"the wheel lacks {missing}"

    venv = _fresh_venv(tmp_path, wheel, env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(ROOT / "presets" / "demo.yaml", elsewhere / "demo.yaml")
    py = venv / "bin" / "python"
    probe = ("import importlib, harness.slurm as s; "
             f"print(*[importlib.import_module(m).__file__ for m in {PACKAGES!r}]); "
             f"assert all('#SBATCH' in s.template(k[:-7]) for k in {TEMPLATES!r})")
    where = _run([py, "-c", probe], elsewhere, env).stdout.split()
    site = (venv / "lib").resolve()
    leaked = [f for f in where if not Path(f).resolve().is_relative_to(site)]
    assert len(where) == len(PACKAGES) and not leaked, f"imported from outside the fresh venv: {leaked}"

    res = _run([venv / "bin" / "harness", "slurm", "submit", "demo.yaml", "--dry-run", "--out", "runs"], elsewhere, env)
    assert res.stdout.startswith("#!/bin/bash") and "#SBATCH --array=1-18%16" in res.stdout, res.stdout
    assert f"{py} -m harness.cli run {elsewhere / 'demo.yaml'}" in res.stdout, res.stdout
