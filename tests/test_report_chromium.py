"""Issues [6], [15], [27]: reports render in a real browser (headless Chromium), for the demo and
for a grid over a network setting; their figures have one legend entry per setting, curves are
means over seeds with 95 % bands (n in the legend), captions sit above the figures, and the page
opens with a setup section.

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


def _bands_and_setup(out: Path, dom: str, seeds: int) -> None:
    """Issue [27]: every curve figure is a mean over ``seeds`` seeds with a 95 % band (its legend
    says n, its SVG has the filled bands), the page has the setup section, and each caption sits
    above its image."""
    figs = json.loads((out / "report" / "figures.json").read_text())
    for name in ("accuracy_vs_bytes", "accuracy_vs_time", "loss_curves", "consensus_distance"):
        assert "95% Student-t" in figs[name]["band"] and set(figs[name]["n"].values()) == {seeds}, name
        assert all(f"(n={seeds})" in t for t in figs[name]["legend_text"] if "not drawn" not in t), name
        assert "PolyCollection" in (out / "report" / f"{name}.svg").read_text(), name  # the bands are drawn
    assert set(figs["pareto_front"]["n"].values()) == {seeds}
    setup = re.search(r"<section id=.setup.>(.*?)</section>", dom, re.S)
    assert setup, "no setup section"
    text = re.sub(r"<[^>]+>", " ", setup.group(1))
    for item in ("Task", "Model size", "Workers", "Compute model", "Network model", "Steps", "Seeds",
                 "What varies between settings"):
        assert item in text, item
    assert f"(n = {seeds} per setting)" in text
    assert setup.start() < dom.index("<h2>Summary")  # the setup comes first
    captions = re.findall(r"<figure[^>]*>\s*<figcaption>.*?</figcaption>\s*<img", dom, re.S)
    assert len(captions) == len(figs) and f"n = {seeds} seed(s) per setting" in " ".join(captions)


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
    drawn = json.loads((out / "report" / "figures.json").read_text())
    assert len(imgs) == len(drawn) == len(plots.FIGURES) - 2  # no language model, no asynchronous updates
    assert "<table" in dom and "sync_sgd" in dom and "local_sgd" in dom and "dpsgd" in dom
    assert len(_legends_match_settings(out)) == 6  # 3 algorithms x 2 partitions
    _bands_and_setup(out, dom, seeds=3)  # the demo runs 3 seeds

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(GRID)
    grid = tmp_path / "grid"
    assert main(["run", str(cfg), "--out", str(grid), "--quiet"]) == 0
    assert main(["report", str(grid)]) == 0
    dom = _render(chromium, grid / "report", ROOT / "artifacts" / "report-network-grid.png", tmp_path / "profile")
    labels = _legends_match_settings(grid)
    assert labels == {f"dpsgd · network.latency_s={v}" for v in ("0.0001", "0.001", "0.01")}
    assert "network.latency_s" in dom and "(n=2)" in dom  # the table names the key; seeds are averaged
    _bands_and_setup(grid, dom, seeds=2)
