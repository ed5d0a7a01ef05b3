"""Tests of the results package on hand-made runs with known curves.

``make_run`` fabricates a run directory (metrics.parquet + run.json) whose consensus
rows have exactly the given accuracies, times and bytes, so every statistic has a value
we can write down by hand.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as st

import results
from results import plots, stats
from results.errors import ResultsError, ResultsWarning
from results.schema import COLUMNS, CONSENSUS
from results.store import read_run, write_json, write_table


def make_run(root: Path, run_id: str, *, algorithm: str = "sync_sgd", accs=(0.5, 0.8, 0.95),
             times=None, bytes_per_eval: float = 1000.0, n_workers: int = 2, seed: int = 0,
             partition: str = "iid", task: str = "digits", status: str = "finished",
             hp: dict | None = None, config: dict | None = None, write: bool = True) -> pd.DataFrame:
    """A run with one consensus row per entry of ``accs`` (at ``times``, default 1, 2, ...;
    cumulative bytes ``bytes_per_eval * (k+1)``) and one row per worker per eval
    (worker w: compute 1 s, comm 0.5 s, idle 0.1*w s per eval)."""
    times = list(times) if times is not None else [float(k + 1) for k in range(len(accs))]
    rows = []
    for k, (acc, t) in enumerate(zip(accs, times)):
        for w in range(n_workers):
            rows.append(dict(worker=w, event="step", time_s=t, compute_s=1.0 * (k + 1), comm_s=0.5 * (k + 1),
                             idle_s=0.1 * w * (k + 1), bytes_sent=bytes_per_eval * (k + 1) / n_workers,
                             messages=k + 1, train_loss=1.0 - acc + 0.01 * w))
        rows.append(dict(worker=CONSENSUS, event="eval", time_s=t, compute_s=n_workers * (k + 1.0),
                         comm_s=0.5 * n_workers * (k + 1), idle_s=0.0, bytes_sent=bytes_per_eval * (k + 1),
                         messages=n_workers * (k + 1), test_acc=acc, test_loss=1.0 - acc, consensus_dist=0.1 / (k + 1)))
        for r in rows[-n_workers - 1:]:
            r.update(step=10 * (k + 1), round=k + 1)
    df = pd.DataFrame(rows).assign(run_id=run_id, algorithm=algorithm, backend="simpy", task=task,
                                   partition=partition, topology=None, n_workers=n_workers, seed=seed)
    for k, v in (hp or {}).items():
        df[f"hp.{k}"] = v
    if write:
        d = root / run_id
        write_table(df, d / "metrics.parquet")
        cfg = {"algorithm": {"name": algorithm, **(hp or {})}, "task": {"name": task, "partition": partition},
               "n_workers": n_workers, "seed": seed, "backend": "simpy", "topology": None, **(config or {})}
        write_json({"run_id": run_id, "status": status, "error": "boom" if status == "failed" else None,
                    "config": cfg, "versions": {}, "started": "2026-01-01T00:00:00", "finished": None}, d / "run.json")
    return results.schema.conform(df)


# ---------------------------------------------------------------- statistics


def test_time_to_target_is_interpolated_between_evaluations(tmp_path):
    # 0.9 is crossed between t=2 (0.85) and t=3 (0.93): 5/8 of the way, t = 2.625 s.
    df = make_run(tmp_path, "a", accs=[0.5, 0.85, 0.93, 0.97, 0.6], times=[1, 2, 3, 4, 5], write=False)
    df = df.sample(frac=1.0, random_state=0)  # row order must not matter, only the clock
    s = stats.summary(df, target_acc=0.9).set_index("run_id")
    assert bool(s.loc["a", "reached"]) is True
    assert s.loc["a", "time_to_target_s"] == pytest.approx(2.625)
    assert s.loc["a", "bytes_to_target"] == pytest.approx(2625.0)
    assert s.loc["a", "rounds_to_target"] == pytest.approx(2.625)
    # final = last consensus row by time (acc fell to 0.6), not the best one
    assert s.loc["a", "final_test_acc"] == pytest.approx(0.6)
    assert s.loc["a", "total_bytes"] == 5000.0
    assert s.loc["a", "bytes_per_worker"] == 2500.0
    assert s.loc["a", "time_s"] == 5.0 and s.loc["a", "rounds"] == 5
    # a target equal to a recorded value counts as reached at that record
    assert stats.summary(df, target_acc=0.93)["time_to_target_s"].iloc[0] == 3.0


def test_run_that_never_reaches_target_is_nan_and_not_reached(tmp_path):
    df = pd.concat([make_run(tmp_path, "slow", accs=[0.3, 0.6, 0.8], write=False),
                    make_run(tmp_path, "fast", accs=[0.95], write=False)])
    s = stats.summary(df, target_acc=0.9).set_index("run_id")
    assert bool(s.loc["slow", "reached"]) is False
    assert np.isnan(s.loc["slow", "time_to_target_s"]) and np.isnan(s.loc["slow", "bytes_to_target"])
    assert s.loc["slow", "final_test_acc"] == pytest.approx(0.8)
    assert bool(s.loc["fast", "reached"]) is True and s.loc["fast", "time_to_target_s"] == 1.0
    assert s["reached"].dtype == bool


def test_final_metrics_takes_last_consensus_row_per_group(tmp_path):
    df = pd.concat([make_run(tmp_path, "a", accs=[0.1, 0.2], write=False),
                    make_run(tmp_path, "b", accs=[0.3, 0.4, 0.5], write=False)])
    f = stats.final_metrics(df).set_index("run_id")
    assert (f["worker"] == CONSENSUS).all()
    assert f.loc["a", "test_acc"] == pytest.approx(0.2) and f.loc["b", "test_acc"] == pytest.approx(0.5)


def test_mean_ci_matches_scipy_student_t():
    sample = [0.81, 0.84, 0.79, 0.88, 0.83]
    df = pd.DataFrame({"algorithm": ["a"] * 5 + ["b"], "partition": [None] * 6,
                       "final_test_acc": sample + [0.5]})
    out = stats.mean_ci(df, "final_test_acc", by=["algorithm", "partition"], level=0.9).set_index("algorithm")
    lo, hi = st.t.interval(0.9, len(sample) - 1, loc=np.mean(sample), scale=st.sem(sample))
    assert out.loc["a", "n"] == 5
    assert out.loc["a", "mean"] == pytest.approx(np.mean(sample))
    assert out.loc["a", "ci_low"] == pytest.approx(lo) and out.loc["a", "ci_high"] == pytest.approx(hi)
    assert out.loc["b", "n"] == 1 and np.isnan(out.loc["b", "ci_low"])  # one seed: no interval
    assert len(out) == 2  # the all-missing 'partition' key did not drop the groups


def test_reduction_vs_baseline_within_same_setting():
    s = pd.DataFrame({
        "algorithm": ["sync_sgd", "sync_sgd", "local_sgd", "sync_sgd", "local_sgd", "local_sgd"],
        "task": ["digits"] * 6,
        "partition": ["iid", "iid", "iid", "dirichlet", "dirichlet", "iid"],
        "n_workers": [4, 4, 4, 4, 4, 8],
        "total_bytes": [1000.0, 1200.0, 110.0, 500.0, 100.0, 50.0],
    })
    out = stats.reduction_vs(s, baseline="sync_sgd", value="total_bytes")
    assert out["total_bytes_baseline"].tolist()[:5] == [1100.0, 1100.0, 1100.0, 500.0, 500.0]
    assert out.loc[2, "total_bytes_ratio"] == pytest.approx(0.1)
    assert out.loc[2, "total_bytes_reduction"] == pytest.approx(10.0)
    assert out.loc[4, "total_bytes_reduction"] == pytest.approx(5.0)
    assert np.isnan(out.loc[5, "total_bytes_ratio"])  # 8 workers: no baseline run
    assert list(out.index) == list(s.index)
    with pytest.raises(ResultsError, match="'diloco' not in the frame"):
        stats.reduction_vs(s, baseline="diloco")


def test_pareto_front_on_known_points():
    pts = pd.DataFrame({"name": list("ABCDEFG"),
                        "total_bytes": [1, 2, 3, 2, 4, 5, np.nan],
                        "final_test_acc": [0.5, 0.7, 0.6, 0.7, 0.9, 0.9, 1.0]})
    front = stats.pareto_front(pts)
    # C is dominated by B, F by E (same acc, more bytes), G has no x; B and D tie: both kept.
    assert front["name"].tolist() == ["A", "B", "D", "E"]


def test_time_split_per_worker_totals(tmp_path):
    df = make_run(tmp_path, "a", accs=[0.1, 0.2, 0.3], n_workers=3, write=False)
    ts = stats.time_split(df).set_index("worker")
    assert ts["compute_s"].tolist() == [3.0, 3.0, 3.0]
    assert ts["comm_s"].tolist() == [1.5, 1.5, 1.5]
    assert ts["idle_s"].tolist() == pytest.approx([0.0, 0.3, 0.6])
    assert ts.loc[2, "total_s"] == pytest.approx(5.1)


# ---------------------------------------------------------------- storage and loading


def test_store_round_trip_and_atomic_write(tmp_path):
    df = make_run(tmp_path, "a", hp={"period": 8})
    table, rec = read_run(tmp_path / "a")
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS) and "hp.period" in table
    pd.testing.assert_frame_equal(table, df[table.columns], check_dtype=True)
    assert rec["status"] == "finished" and rec["config"]["algorithm"]["period"] == 8
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["metrics.parquet", "run.json"]  # no temp left
    with pytest.raises(ValueError, match="step"):
        write_table(pd.DataFrame({"run_id": ["x"], "worker": [0], "step": ["not a number"]}), tmp_path / "bad" / "metrics.parquet")
    assert not (tmp_path / "bad" / "metrics.parquet").exists()
    write_json({"n": np.int64(3), "p": tmp_path}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"n": 3, "p": str(tmp_path)}
    (tmp_path / "plain.txt").write_text("x")  # atomic files get a plain open()'s permissions, not mkstemp's 0600
    for f in ("x.json", "a/metrics.parquet", "a/run.json"):
        assert (tmp_path / f).stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 != 0o600, f


def test_load_merges_runs_with_cfg_columns(tmp_path):
    make_run(tmp_path / "sweep1", "a", algorithm="sync_sgd", accs=[0.5, 0.9])
    make_run(tmp_path / "sweep1", "b", algorithm="local_sgd", hp={"period": 8}, seed=1)
    make_run(tmp_path / "sweep2" / "deeper", "c", algorithm="local_sgd", hp={"period": 4}, status="failed")
    df = results.load(tmp_path)
    assert sorted(df["run_id"].unique()) == ["a", "b", "c"]
    assert len(df) == 2 * 3 + 3 * 3 + 3 * 3  # (n_workers + 1 consensus) rows per eval
    by_run = df.groupby("run_id").first()
    assert by_run.loc["b", "cfg.algorithm.period"] == 8 and by_run.loc["c", "cfg.algorithm.period"] == 4
    assert np.isnan(by_run.loc["a", "cfg.algorithm.period"])
    assert by_run.loc["c", "cfg.algorithm.name"] == "local_sgd" and by_run.loc["b", "cfg.seed"] == 1
    assert by_run.loc["c", "status"] == "failed" and by_run.loc["a", "status"] == "finished"
    assert np.isnan(by_run.loc["a", "hp.period"])  # hp.* of other algorithms: null
    assert df["n_workers"].dtype == "int64" and df["algorithm"].dtype == "string"
    assert df.attrs["problems"] == []
    assert sorted(results.load(tmp_path, finished_only=True)["run_id"].unique()) == ["a", "b"]


def test_corrupt_missing_and_mismatched_runs_warn_and_the_rest_loads(tmp_path):
    make_run(tmp_path, "good")
    make_run(tmp_path, "corrupt")
    bad = tmp_path / "corrupt" / "metrics.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file \x00\x01\x02")
    make_run(tmp_path, "nometrics")
    (tmp_path / "nometrics" / "metrics.parquet").unlink()
    make_run(tmp_path, "schema")
    raw = pd.read_parquet(tmp_path / "schema" / "metrics.parquet").drop(columns=["test_acc"])
    raw.to_parquet(tmp_path / "schema" / "metrics.parquet")
    with pytest.warns(ResultsWarning) as record:
        df = results.load(tmp_path)
    msgs = [str(w.message) for w in record]
    assert any(m.startswith(str(bad)) and "unreadable parquet" in m for m in msgs), msgs
    assert any(str(tmp_path / "nometrics" / "metrics.parquet") in m and "missing" in m for m in msgs)
    assert any(str(tmp_path / "schema" / "metrics.parquet") in m and "test_acc" in m for m in msgs)
    assert df["run_id"].unique().tolist() == ["good"]
    assert len(df.attrs["problems"]) == 3


def test_duplicate_run_id_is_skipped_with_a_warning(tmp_path):
    make_run(tmp_path / "x", "a")
    make_run(tmp_path / "y", "a")
    with pytest.warns(ResultsWarning, match="already loaded"):
        df = results.load(tmp_path)
    assert len(df) == 9


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_empty_dir_raises_one_line_results_error(tmp_path, make):
    root = tmp_path if make == "empty" else tmp_path / "nowhere"
    with pytest.raises(ResultsError) as e:
        results.load(root)
    msg = str(e.value)
    assert msg == f"no runs under {root}: run `harness run CONFIG --out {root}` first"
    assert "\n" not in msg


def test_results_imports_no_other_package():
    code = ("import sys, results, results.report, results.plots; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('harness', 'simulators', 'topologies')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_load_many_runs(tmp_path):
    """Correctness of a many-run load; its speed is benchmarks/load_runs.py's job."""
    base = make_run(tmp_path, "r", accs=[0.1 * k for k in range(10)], n_workers=4, write=False)
    table = pa.Table.from_pandas(base, preserve_index=False)
    for i in range(300):
        d = tmp_path / "sweep" / f"r{i}"
        d.mkdir(parents=True)
        ids = pa.array([f"r{i}"] * len(base), pa.large_string())
        pq.write_table(table.set_column(0, "run_id", ids), d / "metrics.parquet")
        (d / "run.json").write_text(json.dumps({"run_id": f"r{i}", "status": "finished",
                                                "config": {"algorithm": {"name": "x", "lr": 0.1}, "seed": i % 5}}))
    df = results.load(tmp_path)
    assert df["run_id"].nunique() == 300 and len(df) == 300 * len(base)
    assert (df.groupby("run_id")["cfg.seed"].first().value_counts() == 60).all()


# ---------------------------------------------------------------- report


def test_write_report_writes_all_files(tmp_path):
    for seed in range(3):
        make_run(tmp_path, f"sync{seed}", algorithm="sync_sgd", accs=[0.6, 0.85, 0.92 + 0.01 * seed],
                 bytes_per_eval=4e6, seed=seed)
        make_run(tmp_path, f"local{seed}", algorithm="local_sgd", accs=[0.5, 0.8, 0.88], bytes_per_eval=5e5,
                 seed=seed, hp={"period": 8})
    make_run(tmp_path, "crashed", algorithm="local_sgd", accs=[0.4], status="failed", hp={"period": 8},
             bytes_per_eval=1.5e6)
    make_run(tmp_path, "noniid", algorithm="sync_sgd", accs=[0.3, 0.7], partition="dirichlet")
    out = results.write_report(tmp_path, target_acc=0.9)
    assert out == tmp_path / "report"
    names = {p.name for p in out.iterdir()}
    assert {"summary.csv", "summary.md", "index.html"} <= names
    for fig in ("accuracy_vs_bytes", "accuracy_vs_time", "loss_curves", "pareto_front",
                "consensus_distance", "time_split"):
        assert {f"{fig}.png", f"{fig}.svg"} <= names, fig
        assert (out / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
    csv = pd.read_csv(out / "summary.csv")
    assert len(csv) == 8 and {"time_to_target_s", "bytes_to_target", "reached"} <= set(csv.columns)
    md = (out / "summary.md").read_text()
    assert re.search(r"^\| algorithm \| partition \|", md, re.M) and "sync_sgd" in md and "never (0/4)" in md
    page = (out / "index.html").read_text()
    drawn = json.loads((out / "figures.json").read_text())
    assert set(plots.FIGURES) - set(drawn) == {"language_model", "staleness"}  # no text task, no async runs
    assert page.count('<img src="data:image/png;base64,') == len(drawn)
    assert "<table" in page and "final test acc" in page and "local_sgd" in page
    assert "1 run(s) did not finish" in page and "crashed" in page and "boom" in page
    text = results.format_summary(stats.summary(results.load(tmp_path), 0.9))
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and "MB" in text and "never (0/4)" in text and "8x less" in text
    # interpolated: mean of 2.714, 2.625, 2.556 ± t(0.975, 2) * s / sqrt(3) = 0.198 (the mean to the CI's decimals)
    assert "baseline" in text and "2.63 ± 0.20 s (3/3)" in text
    assert len({len(line.rstrip()) <= len(lines[1]) for line in lines}) == 1  # fixed width
