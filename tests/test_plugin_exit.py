"""[issue 21] item 8: an algorithm that calls sys.exit during a run ends it as failed with one line,
on the simulators and on the real driver, never with the exit status it asked for."""
import json
import textwrap

import pytest

PLUGIN = '''
import sys
from harness.algorithms import register
from harness.ops import Grad

@register("_exits_midway")
def exits_midway(ctx, x, *, lr: float = 0.1):
    loss, g = yield Grad(x)
    sys.exit(0)
'''


def _config(tmp_path):
    (tmp_path / "plug.py").write_text(textwrap.dedent(PLUGIN))
    (tmp_path / "c.yaml").write_text("imports: [plug.py]\nn_workers: 2\nsteps: 3\nalgorithm: {name: _exits_midway}\n")
    return tmp_path / "c.yaml"


@pytest.mark.parametrize("backend", ["simpy", "stacked"])
def test_sys_exit_in_an_algorithm_is_a_failed_run_and_one_line(tmp_path, capsys, backend):
    from harness.cli import main

    rc = main(["run", str(_config(tmp_path)), "--out", str(tmp_path / "runs"), "--backend", backend, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("harness: error: algorithm: it called sys.exit(0)"), err
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/run.json")]
    assert record["status"] == "failed" and "sys.exit(0)" in record["error"]


def test_sys_exit_on_the_real_driver_fails_the_rank(tmp_path):
    from harness.backends import loopback_run
    from harness.config import load

    (cfg,) = load(_config(tmp_path))
    with pytest.raises(loopback_run.RunFailed, match=r"sys.exit\(0\)"):
        loopback_run.run(cfg)
