"""Damaged results (issue 14): a truncated metrics.parquet makes ``results.runs()`` say
``damaged`` (not ``finished``); rows of a run whose run.json is garbage load flagged
``damaged`` and summaries say so; the report's note on unfinished runs tells the truth
about which of their rows it shows."""
from __future__ import annotations

import warnings

import pandas as pd
import pytest

import results
from results import plots, stats
from results.errors import ResultsWarning
from tests.test_results import make_run


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_runs_reports_a_truncated_parquet_and_a_garbage_run_json_as_damaged(tmp_path):
    make_run(tmp_path, "good")
    make_run(tmp_path, "cut")
    _truncate(tmp_path / "cut" / "metrics.parquet")
    make_run(tmp_path, "garbled")
    (tmp_path / "garbled" / "run.json").write_text('{"run_id": "garbled", "status": "fini')
    make_run(tmp_path, "failed", status="failed")
    r = results.runs(tmp_path).set_index("run_id")
    assert r.loc["good", "status"] == "finished" and r.loc["failed", "status"] == "failed"
    assert r.loc["cut", "status"] == "damaged"
    err = r.loc["cut", "error"]
    assert str(tmp_path / "cut" / "metrics.parquet") in err and "unreadable parquet" in err
    assert r.loc["garbled", "status"] == "damaged" and "cannot read run record" in r.loc["garbled", "error"]


def test_a_damaged_run_is_flagged_and_never_averaged_with_healthy_ones(tmp_path):
    make_run(tmp_path, "r0", seed=0, accs=(0.5, 0.9))
    make_run(tmp_path, "r1", seed=1, accs=(0.5, 0.1))  # its accuracy would drag the mean to 0.5
    (tmp_path / "r1" / "run.json").write_bytes(b"\x00\x01 not json")
    with pytest.warns(ResultsWarning, match="its rows are marked status 'damaged'"):
        df = results.load(tmp_path)
    assert df.groupby("run_id")["status"].first().to_dict() == {"r0": "finished", "r1": "damaged"}
    s = stats.summary(df).set_index("run_id")
    assert s.loc["r1", "status"] == "damaged"
    lines = results.format_summary(stats.summary(df)).splitlines()
    assert "0.900 (n=1)" in lines[2] and lines[2].split()[2] == "1", lines  # r0 alone
    assert lines[-1] == ("left out: 1 damaged run(s) (unreadable run.json): r1; `harness run` of their config "
                         "runs them again")
    with pytest.warns(ResultsWarning):
        assert set(results.load(tmp_path, finished_only=True)["run_id"]) == {"r0"}


def test_the_report_leaves_damaged_runs_out_and_names_them(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", {})
    make_run(tmp_path, "r0", seed=0, accs=(0.5, 0.9))
    make_run(tmp_path, "r1", seed=1, accs=(0.5, 0.1))
    (tmp_path / "r1" / "run.json").write_text('{"run_id": "r1", "sta')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        out = results.write_report(tmp_path)
    assert list(pd.read_csv(out / "summary.csv")["run_id"]) == ["r0"]
    assert "0.900 (n=1)" in (out / "summary.md").read_text()
    page = (out / "index.html").read_text()
    assert "left out of the tables and figures: 1 damaged run(s) (unreadable run.json): r1" in page
    assert "1 run(s) did not finish</b> (none of their rows are in the tables and figures)" in page
    (tmp_path / "r0" / "run.json").write_text("[]")
    with warnings.catch_warnings(), pytest.raises(results.ResultsError, match="no undamaged runs under .*r0, r1"):
        warnings.simplefilter("ignore", ResultsWarning)
        results.write_report(tmp_path)


def test_a_rerun_repairs_a_damaged_run_instead_of_skipping_it(tmp_path, capsys):
    from harness.config import expand
    from harness.experiment import run_to_dir

    task = {"name": "quadratic", "dim": 4, "layers": 2, "a_min": 0.5, "a_max": 2.0, "dtype": "float64"}
    cfg = expand({"n_workers": 2, "steps": 4, "eval_every": 2, "task": task,
                  "algorithm": {"name": "sync_sgd", "lr": 0.1}})[0]
    d, ran = run_to_dir(cfg, tmp_path)
    assert ran and run_to_dir(cfg, tmp_path) == (d, False)  # finished: skipped
    good = (d / "metrics.parquet").read_bytes()
    _truncate(d / "metrics.parquet")
    capsys.readouterr()
    assert run_to_dir(cfg, tmp_path) == (d, True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"harness: note: {cfg.run_id}: its results are damaged (")
    assert err[0].endswith("unreadable parquet (ArrowInvalid: Parquet magic bytes not found in footer. Either the "
                           "file is corrupted or this is not a parquet file.)); running it again")
    assert (d / "metrics.parquet").read_bytes() == good and results.runs(tmp_path)["status"].tolist() == ["finished"]
    (d / "run.json").write_text('{"status": "finished"')  # a garbled record: run again too
    assert run_to_dir(cfg, tmp_path) == (d, True)
    assert "run.json: cannot read run record" in capsys.readouterr().err


def test_report_says_which_unfinished_runs_it_shows(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", {})  # the words are tested here, not the figures
    make_run(tmp_path, "good")
    make_run(tmp_path, "killed", status="running")
    (tmp_path / "killed" / "metrics.parquet").unlink()  # as a killed run leaves it: no table yet
    make_run(tmp_path, "cut")
    _truncate(tmp_path / "cut" / "metrics.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        page = (results.write_report(tmp_path) / "index.html").read_text()
    assert "partial data" not in page
    assert "2 run(s) did not finish</b> (none of their rows are in the tables and figures)" in page
    assert "damaged" in page and "running" in page
    make_run(tmp_path, "crashed", status="failed")  # a failed run that did write a table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResultsWarning)
        page = (results.write_report(tmp_path) / "index.html").read_text()
    assert ("3 run(s) did not finish</b> (the rows of 1 of them are in the tables and figures, marked by their "
            "status; the others have none)") in page
