"""Issue [6]: the demo's report renders in a real browser (headless Chromium).

The screenshot is kept as an artifact of the test run: `artifacts/report.png`."""
import re
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from tests.tools import require

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.chromium
def test_demo_report_renders_in_chromium(tmp_path):
    chromium = require("chromium", "apt-get install chromium (Debian) to render the HTML report")
    out = tmp_path / "demo"
    assert main(["run", str(ROOT / "presets" / "demo.yaml"), "--out", str(out), "--quiet", "--set", "steps=60"]) == 0
    assert main(["report", str(out)]) == 0
    page = (out / "report" / "index.html").as_uri()
    base = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    imgs = re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]{100,})"', dom)
    from results import plots

    assert len(imgs) == len(plots.FIGURES)
    assert "<table" in dom and "sync_sgd" in dom and "local_sgd" in dom and "dpsgd" in dom
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,2400", page],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
