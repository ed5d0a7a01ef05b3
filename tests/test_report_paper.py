"""Issue [27] (paper-grade figures and tables) and [22] (staleness per method): the report of
hand-made runs with known numbers (``tests.test_results.make_run``), no simulation.

Each test failed on the code before the change: curves were one line per seed, the Pareto front
went through single runs, only final accuracy had an interval, language models had no perplexity,
``beta2`` of SGD runs was a column, there was no setup section, captions sat below the figures,
no LaTeX, no staleness figure, and the demo ran one seed.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from scipy import stats as st

import results
from results import latex, plots, settings, setup, stats, table
from results.store import write_json, write_table
from tests.test_results import make_run

ROOT = Path(__file__).resolve().parents[1]


def _half(values) -> float:
    v = np.asarray(values, float)
    return st.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))


def _write(root: Path, df: pd.DataFrame, cfg: dict, **record) -> None:
    """Write a hand-made table and its run.json (``record``: extra run.json keys)."""
    rid = df["run_id"].iloc[0]
    write_table(df, root / rid / "metrics.parquet")
    write_json({"run_id": rid, "status": "finished", "error": None, "config": cfg, **record}, root / rid / "run.json")


def _three_seeds(root: Path):
    """sync_sgd (3 seeds), local_sgd (3 seeds), dpsgd (1 seed): accuracies known per seed."""
    accs = {"sync_sgd": [[0.5, 0.85, 0.92], [0.6, 0.88, 0.95], [0.4, 0.80, 0.93]],
            "local_sgd": [[0.5, 0.70, 0.80], [0.5, 0.75, 0.85], [0.5, 0.90, 0.99]]}
    for a, per_seed in accs.items():
        for s, acc in enumerate(per_seed):
            make_run(root, f"{a}-s{s}", algorithm=a, seed=s, accs=acc, bytes_per_eval=4e6 if a == "sync_sgd" else 5e5,
                     times=[1.0 + 0.1 * s, 2.0 + 0.2 * s, 3.0 + 0.3 * s])
    make_run(root, "dpsgd-s0", algorithm="dpsgd", accs=[0.5, 0.9, 0.97], bytes_per_eval=2e6)
    return accs


def test_curves_are_means_over_seeds_with_a_95_band_and_n_in_the_legend(tmp_path):
    accs = _three_seeds(tmp_path)
    df = results.load(tmp_path)
    fig = plots.accuracy_vs_bytes(df)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
    assert len(lines) == 3  # one line per setting, not 7 (one per run)
    assert fig.harness["n"] == {"sync_sgd": 3, "dpsgd": 1, "local_sgd": 3}
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert texts == ["sync_sgd (n=3)", "dpsgd (n=1)", "local_sgd (n=3)"]
    sync = next(ln for ln in lines if np.allclose(ln.get_xdata(), [2e6, 4e6, 6e6]))  # bytes per worker
    np.testing.assert_allclose(sync.get_ydata(), np.mean(accs["sync_sgd"], axis=0))
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # dpsgd (n=1) has a line and no band
    tops = {round(float(p.vertices[:, 1].max()), 6) for c in bands for p in c.get_paths()}
    top = min(1.0, np.mean(accs["sync_sgd"], axis=0)[2] + _half([r[2] for r in accs["sync_sgd"]]))
    assert round(top, 6) in tops
    assert "95% Student-t" in fig.harness["band"] and "mean over the seeds" in fig.harness["notes"][0]


def test_a_band_ends_at_1_for_accuracy_and_n_falls_where_a_seed_stopped(tmp_path):
    make_run(tmp_path, "a0", accs=[0.5, 0.97, 0.99], seed=0)
    make_run(tmp_path, "a1", accs=[0.5, 0.80, 0.99], seed=1)
    make_run(tmp_path, "a2", accs=[0.5, 0.99], seed=2)  # stopped after two evaluations
    fig = plots.accuracy_vs_time(results.load(tmp_path))
    (band,) = [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert band.get_paths()[0].vertices[:, 1].max() <= 1.0
    assert any("n = 3 up to step 20, then 2" in n for n in fig.harness["notes"])


def test_pareto_front_goes_through_setting_means_with_intervals_on_both_axes(tmp_path):
    accs = _three_seeds(tmp_path)
    s = stats.summary(results.load(tmp_path), 0.9)
    fig = plots.FIGURES["pareto_front"][0](s)
    ax = fig.axes[0]
    # before: local_sgd's lucky seed (0.99 at 1/8 of the bytes) was the whole front
    (step,) = [ln for ln in ax.get_lines() if ln.get_color() == "black" and ln.get_linestyle() != "None"]
    local, sync = np.mean([r[-1] for r in accs["local_sgd"]]), np.mean([r[-1] for r in accs["sync_sgd"]])
    # the means: local_sgd 0.88 at 7.5e5 B, dpsgd 0.97 at 3e6 B (one seed), sync_sgd 0.933 at 6e6 B (dominated)
    assert np.allclose(step.get_xdata(), [7.5e5, 3e6]) and np.allclose(step.get_ydata(), [local, 0.97])
    bars = {round(float(c.lines[0].get_ydata()[0]), 6): c for c in ax.containers}
    err = bars[round(sync, 6)].lines[2]  # (x error LineCollection, y error LineCollection)
    assert len(err) == 2  # error bars on both axes (bytes are equal across seeds: a zero-width x bar)
    seg = err[1].get_segments()[0][:, 1]
    assert seg.max() - seg.min() == pytest.approx(2 * _half([r[-1] for r in accs["sync_sgd"]]))
    assert fig.harness["n"] == {"sync_sgd": 3, "dpsgd": 1, "local_sgd": 3}


def test_summary_has_intervals_on_time_bytes_and_rounds_to_target_and_a_latex_table(tmp_path):
    _three_seeds(tmp_path)
    s = stats.summary(results.load(tmp_path), 0.8)
    agg = stats.aggregate(s).set_index("algorithm")
    for m in ("time_to_target_s", "bytes_to_target", "rounds_to_target", "time_s", "total_bytes"):
        ref = stats.mean_ci(s, m, "algorithm").set_index("algorithm")
        np.testing.assert_allclose(agg[f"{m}_ci"].to_numpy(float), ref.loc[agg.index, "ci_half"].to_numpy(float))
    t = table.table(s).set_index("algorithm")
    for col in ("time to 0.8 acc (interpolated)", "bytes to 0.8 acc", "rounds to 0.8 acc", "time"):
        assert " ± " in t.loc["sync_sgd", col] and " ± " not in t.loc["dpsgd", col], col
    assert t.loc["sync_sgd", "rounds to 0.8 acc"].endswith("(3/3)")
    tex = latex.summary_latex(s)
    assert all(k in tex for k in (r"\toprule", r"\midrule", r"\bottomrule", r"$\pm$", r"sync\_sgd", r"95\%"))
    assert "±" not in tex and tex.count(r"\\") == 1 + 3  # header and one row per setting
    from harness.api import latex as api_latex

    assert api_latex(tmp_path, 0.8) == tex


def test_unused_hyperparameters_are_not_columns_and_blank_where_they_do_not_apply(tmp_path):
    # the case: beta2 for SGD runs (0.999 there, 0.95 for DiLoCo's AdamW) made a column
    sgd = {"inner": "sgd", "lr": 0.1, "beta2": 0.999}
    make_run(tmp_path, "s", algorithm="sync_sgd", hp=sgd)
    make_run(tmp_path, "l", algorithm="local_sgd", hp={**sgd, "period": 8})
    make_run(tmp_path, "d", algorithm="diloco", hp={"inner": "adamw", "lr": 0.1, "beta2": 0.95})
    s = stats.summary(results.load(tmp_path), 0.9)
    assert "hp.beta2" not in stats.setting_columns(settings.blank_unused(s))
    assert "beta2" not in table.table(s).columns
    # where it varies among the runs it applies to, it is a column, blank for the SGD run
    make_run(tmp_path, "d2", algorithm="diloco", hp={"inner": "adamw", "lr": 0.1, "beta2": 0.99})
    t = table.table(stats.summary(results.load(tmp_path), 0.9)).set_index("algorithm")
    assert t.loc["sync_sgd", "beta2"] == "-" and sorted(t.loc["diloco", "beta2"]) == ["0.95", "0.99"]
    assert "beta2" not in " ".join(settings.labels(results.load(tmp_path)).loc[["s", "l"]])


def _lm_run(root, rid, algorithm, seed, losses):
    df = make_run(root, rid, algorithm=algorithm, seed=seed, task="text", accs=[0.2, 0.3, 0.4], write=False)
    ev = df["worker"] == -1
    df.loc[ev, "test_loss"] = losses
    df.loc[ev, "test_ppl"] = np.exp(losses)
    _write(root, df, {"algorithm": {"name": algorithm}, "task": {"name": "text", "layers": 2}, "seed": seed,
                      "n_workers": 2, "steps": 30, "backend": "simpy"}, n_params=120_000)


def test_language_models_get_perplexity_in_the_table_and_loss_and_perplexity_figures(tmp_path):
    for seed in range(2):
        _lm_run(tmp_path, f"sync-{seed}", "sync_sgd", seed, [5.5, 3.0 + seed * 0.1, 2.0 + seed * 0.1])
        _lm_run(tmp_path, f"local-{seed}", "local_sgd", seed, [5.5, 3.5, 2.5 + seed * 0.2])
    df = results.load(tmp_path)
    s = stats.summary(df, 0.3)
    assert s.set_index("run_id").loc["sync-1", "final_test_ppl"] == pytest.approx(math.exp(2.1))
    t = table.table(s).set_index("algorithm")
    ppl = np.exp([2.0, 2.1])
    assert t.loc["sync_sgd", table.PPL] == f"{table.interval(ppl.mean(), _half(ppl))} (n=2)"
    fig = plots.FIGURES["language_model"][0](df)
    assert fig.harness["panels"] == ["Test loss vs communication", "Test loss vs time",
                                     "Test perplexity vs communication", "Test perplexity vs time"]
    ppl = [ln for ln in fig.axes[2].get_lines() if len(ln.get_xdata()) > 1]
    assert any(np.allclose(ln.get_ydata()[-1], np.mean(np.exp([2.0, 2.1]))) for ln in ppl)
    out = results.write_report(tmp_path, target_acc=0.3)
    page = (out / "index.html").read_text()
    assert "final test ppl" in page and "120,000 parameters" in page and "<figure id='language_model'>" in page
    # runs without perplexity: no column and no figure
    assert table.PPL not in table.table(stats.summary(df.assign(test_ppl=np.nan), 0.3)).columns
    assert plots.FIGURES["language_model"][0](df.assign(test_ppl=np.nan)) is None


def test_staleness_distribution_per_method(tmp_path):
    rng = np.random.default_rng(0)
    for a, scale in (("fedasync", 6), ("fedbuff", 2)):
        for seed in range(3):
            df = make_run(tmp_path, f"{a}-{seed}", algorithm=a, seed=seed, write=False)
            k = rng.poisson(scale, 50).astype(float)
            up = pd.DataFrame({"worker": 0, "event": "update", "step": np.arange(50), "round": -1,
                               "time_s": np.linspace(0, 3, 50), "staleness": k})
            up = up.assign(**{c: df[c].iloc[0] for c in ("run_id", "algorithm", "backend", "task", "partition",
                                                          "n_workers", "seed")})
            _write(tmp_path, pd.concat([df, up], ignore_index=True), {"algorithm": {"name": a}, "seed": seed})
    make_run(tmp_path, "fedavg-0", algorithm="fedavg")  # synchronous: no update rows
    df = results.load(tmp_path)
    fig = plots.FIGURES["staleness"][0](df)
    assert fig.harness["n"] == {"fedasync": 3, "fedbuff": 3}
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "fedavg (no asynchronous updates)" in texts and "fedasync (n=3)" in texts
    for lab in ("fedasync", "fedbuff"):
        v = df.loc[(df["algorithm"] == lab) & (df["event"] == "update"), "staleness"].to_numpy()
        assert any(n.startswith(f"{lab}: 150 updates; median {np.median(v):g}") for n in fig.harness["notes"])
    ecdf = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) > 1]
    assert len(ecdf) == 2 and all(ln.get_ydata()[-1] == 1.0 for ln in ecdf)
    assert plots.FIGURES["staleness"][0](df[df["event"] != "update"]) is None


def test_setup_section_and_captions_above_figures(tmp_path):
    for seed in range(3):
        for a in ("sync_sgd", "local_sgd"):
            df = make_run(tmp_path, f"{a}-{seed}", algorithm=a, seed=seed, write=False)
            cfg = {"algorithm": {"name": a}, "task": {"name": "digits", "hidden": [64]}, "n_workers": 2, "seed": seed,
                   "steps": 100 if a == "sync_sgd" else 200, "backend": "simpy",
                   "compute": {"model": "lognormal", "sigma": 0.3}, "network": {"latency_s": 0.001}}
            _write(tmp_path, df, cfg, n_params=4810)
    s = stats.summary(results.load(tmp_path), 0.9)
    rows = dict(setup.rows(results.runs(tmp_path), s))
    assert rows["Model size"] == "4,810 parameters" and rows["Workers"] == "2"
    assert rows["Task"] == "name=digits, hidden=[64]"
    assert rows["Compute model"] == "model=lognormal, sigma=0.3" and rows["Network model"] == "latency_s=0.001"
    assert rows["Steps"] == "100 (sync_sgd), 200 (local_sgd)" and rows["Seeds"] == "0, 1, 2 (n = 3 per setting)"
    assert rows["What varies between settings"].startswith("2 setting(s): algorithm (local_sgd, sync_sgd)")
    assert "simulated seconds" in rows["Backend"]
    page = (results.write_report(tmp_path) / "index.html").read_text()
    assert page.index("<section id='setup'>") < page.index("<h2>Summary")
    figures = re.findall(r"<figure id='(\w+)'><figcaption><b>Figure (\d+): [^<]+</b>(.*?)</figcaption><img", page)
    drawn = json.loads((tmp_path / "report" / "figures.json").read_text())
    assert [f[0] for f in figures] == list(drawn) and [int(f[1]) for f in figures] == list(range(1, len(drawn) + 1))
    assert "n = 3 seed(s) per setting" in dict((f[0], f[2]) for f in figures)["accuracy_vs_time"]
    assert (tmp_path / "report" / "summary.tex").read_text().startswith(r"\begin{table}")


def test_the_demo_runs_three_seeds():
    from harness import config

    runs = config.load(ROOT / "presets" / "demo.yaml")
    assert len(runs) == 18 and {r.seed for r in runs} == {0, 1, 2}
