"""``harness topology ...`` (topologies.cli.main): printed statistics, PNG output, errors."""
from __future__ import annotations

import re

import numpy as np
import pytest

import topologies as T
from topologies.cli import main, parse_params


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def number(out: str, label: str) -> float:
    m = re.search(rf"{label}:\s*(-?[0-9.]+)", out)
    assert m, out
    return float(m.group(1))


def test_static_stats(capsys):
    rc, out, err = run(capsys, "ring", "--n", "10")
    assert rc == 0 and err == ""
    assert "degree (in) min/mean/max: 2 / 2.00 / 2" in out
    assert "diameter: 5" in out
    ring = T.build("ring", 10).W()
    assert number(out, "SLEM") == pytest.approx(T.slem(ring), abs=1e-6)
    assert number(out, "spectral gap") == pytest.approx(1 - T.slem(ring), abs=1e-6)
    rc, out, _ = run(capsys, "star", "--n", "6", "--param", "weights=best_constant")
    assert rc == 0 and "degree (in) min/mean/max: 1 / 1.67 / 5" in out and "diameter: 2" in out
    assert "nonnegative" not in out.split("claims:")[1]


def test_dynamic_stats(capsys):
    rc, out, _ = run(capsys, "one_peer_exponential", "--n", "8")
    assert rc == 0
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s+\d+\s+\d+\s", line)]
    assert [r[0] for r in rows] == ["0", "1", "2"]  # one period by default
    topo = T.build("one_peer_exponential", 8)
    assert [float(r[-2]) for r in rows] == pytest.approx([T.slem(topo.W(t)) for t in range(3)], abs=1e-6)
    assert number(out, "empirical consensus rate over 3 steps") == pytest.approx(0.0, abs=1e-6)
    rc, out, _ = run(capsys, "edge_failures", "--n", "12", "--seed", "3", "--steps", "5",
                     "--param", "base=torus", "--param", "p=0.5")
    assert rc == 0 and "params: {'base': 'torus', 'p': 0.5}" in out
    rate = T.consensus_rate(T.build({"name": "edge_failures", "base": "torus", "p": 0.5}, 12, 3), 5)
    assert number(out, "empirical consensus rate over 5 steps") == pytest.approx(rate, abs=1e-6)


def test_out_writes_png(capsys, tmp_path):
    for argv in (["torus", "--n", "16"], ["churn", "--n", "9", "--param", "p=0.4", "--steps", "4"],
                 ["exponential", "--n", "8"]):
        path = tmp_path / f"{argv[0]}.png"
        rc, out, _ = run(capsys, *argv, "--out", str(path))
        assert rc == 0 and f"wrote {path}" in out
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    # a dynamic graph is drawn as a row of panels: wider than a static one
    def width(p):
        return int.from_bytes(p.read_bytes()[16:20], "big")
    assert width(tmp_path / "churn.png") > 3 * width(tmp_path / "torus.png")


def test_errors_are_one_line(capsys):
    rc, out, err = run(capsys, "hypercube", "--n", "12")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("harness: error: topology.n: ")
    rc, _, err = run(capsys, "regular", "--n", "5", "--param", "d=3")
    assert rc == 2 and err.startswith("harness: error: topology.d: ")
    rc, _, err = run(capsys, "ring", "--param", "oops")
    assert rc == 2 and err.startswith("harness: error: topology.param: ")
    rc, _, err = run(capsys, "ring", "--n", "many")
    assert rc == 2 and "invalid int value" in err


def test_parse_params():
    assert parse_params(["d=4", "p=0.5", "graphs=[ring, exponential]", "base={name: regular, d: 3}"]) == {
        "d": 4, "p": 0.5, "graphs": ["ring", "exponential"], "base": {"name": "regular", "d": 3}}
    rc = main(["alternating", "--n", "9", "--param", "graphs=[ring, torus]", "--steps", "2"])
    assert rc == 0
    assert np.array_equal(T.build({"name": "alternating", "graphs": ["ring", "torus"]}, 9).W(1),
                          T.build("torus", 9).W())
