"""Issues [6], [15]: reports render in a real browser (headless Chromium), for the demo and
for a grid over a network setting, and their figures have one legend entry per setting.

The screenshots are kept as artifacts of the test run: `artifacts/report.png` (demo) and
`artifacts/report-network-grid.png`. The legend check reads the report's `figures.json`
(the legend entries each figure drew) against the settings the summary found."""
import json
import re
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from tests.tools import require

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SETTING_FIGURES = ("accuracy_vs_bytes", "accuracy_vs_time", "loss_curves", "consensus_distance")
GRID = """name: network-grid
n_workers: 4
steps: 30
eval_every: 5
backend: stacked
task: {name: digits, batch_size: 16, hidden: [16]}
algorithm: {name: dpsgd, lr: 0.1, momentum: 0.9}
topology: {name: ring}
grid:
  network.latency_s: [0.0001, 0.001, 0.01]
  seed: [0, 1]
"""


def _render(chromium, report: Path, shot: Path, profile: Path) -> str:
    """The page's DOM after Chromium ran it, and a screenshot at ``shot``."""
    page = (report / "index.html").as_uri()
    base = [chromium, *FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2400", page],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    return dom


def _legends_match_settings(out: Path):
    """Every setting figure has exactly one legend entry per setting of the summary."""
    import results
    from results import settings

    labels = set(settings.labels(results.summary(results.load(out))))
    figs = json.loads((out / "report" / "figures.json").read_text())
    for name in SETTING_FIGURES:
        legend = figs[name]["legend"]
        assert len(legend) == len(set(legend)) == len(labels) and set(legend) == labels, name
    return labels


@pytest.mark.chromium
def test_demo_and_network_grid_reports_render_in_chromium(tmp_path):
    chromium = require("chromium", "apt-get install chromium (Debian) to render the HTML report")
    from results import plots

    out = tmp_path / "demo"
    assert main(["run", str(ROOT / "presets" / "demo.yaml"), "--out", str(out), "--quiet", "--set", "steps=60"]) == 0
    assert main(["report", str(out)]) == 0
    dom = _render(chromium, out / "report", ROOT / "artifacts" / "report.png", tmp_path / "profile")
    imgs = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]{100,})"', dom)
    assert len(imgs) == len(plots.FIGURES)
    assert "<table" in dom and "sync_sgd" in dom and "local_sgd" in dom and "dpsgd" in dom
    assert len(_legends_match_settings(out)) == 6  # 3 algorithms x 2 partitions

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(GRID)
    grid = tmp_path / "grid"
    assert main(["run", str(cfg), "--out", str(grid), "--quiet"]) == 0
    assert main(["report", str(grid)]) == 0
    dom = _render(chromium, grid / "report", ROOT / "artifacts" / "report-network-grid.png", tmp_path / "profile")
    labels = _legends_match_settings(grid)
    assert labels == {f"dpsgd · network.latency_s={v}" for v in ("0.0001", "0.001", "0.01")}
    assert "network.latency_s" in dom and "(n=2)" in dom  # the table names the key; seeds are averaged
