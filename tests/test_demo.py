"""Issue [1] acceptance on the shipped demo preset (i.i.d. half of it, to keep the suite quick)."""
from pathlib import Path

import pytest

import results
from harness.cli import main
from results.stats import summary

PRESET = Path(__file__).resolve().parents[1] / "presets" / "demo.yaml"


@pytest.mark.slow
def test_demo_preset_iid(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["run", str(PRESET), "--out", str(out), "--quiet", "--set", "grid.task.partition=[iid]",
                 "--set", "grid.seed=[0]"]) == 0  # one seed of the three
    printed = capsys.readouterr().out
    assert "final test acc" in printed and "time to 0.9" in printed
    s = summary(results.load(out), target_acc=0.9).set_index("algorithm")
    assert set(s.index) == {"sync_sgd", "local_sgd", "dpsgd"}
    assert s.loc["sync_sgd", "final_test_acc"] >= 0.9
    assert s.loc["local_sgd", "final_test_acc"] >= 0.9
    ratio = s.loc["sync_sgd", "total_bytes"] / s.loc["local_sgd", "total_bytes"]
    assert ratio == pytest.approx(8.0, rel=1e-9)
    assert s.loc[:, "reached"].all()
    assert main(["report", str(out)]) == 0
    for f in ("summary.csv", "accuracy_vs_bytes.png", "accuracy_vs_time.png", "index.html"):
        assert (out / "report" / f).stat().st_size > 0
