"""Damaged results (issue 14): a truncated metrics.parquet makes ``results.runs()`` say
``damaged`` (not ``finished``); rows of a run whose run.json is garbage load flagged
``damaged`` and summaries say so; the report's note on unfinished runs tells the truth
about which of their rows it shows."""
from __future__ import annotations

import warnings

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


def test_rows_of_a_run_with_an_unreadable_run_json_are_flagged_not_merged_silently(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, f"r{seed}", seed=seed, accs=(0.5, 0.9))
    (tmp_path / "r1" / "run.json").write_bytes(b"\x00\x01 not json")
    with pytest.warns(ResultsWarning, match="its rows are marked status 'damaged'"):
        df = results.load(tmp_path)
    assert df.groupby("run_id")["status"].first().to_dict() == {"r0": "finished", "r1": "damaged"}
    s = stats.summary(df).set_index("run_id")
    assert s.loc["r1", "status"] == "damaged"
    text = results.format_summary(stats.summary(df))
    assert "2 (1 damaged)" in text, text
    with pytest.warns(ResultsWarning):
        assert set(results.load(tmp_path, finished_only=True)["run_id"]) == {"r0"}


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
