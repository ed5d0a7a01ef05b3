"""Issue [15]: reports that do not mislead. One test per defect found by trying the harness
as a new user would; each failed on the code before the fix (noted per test).

Runs are hand-made with ``tests.test_results.make_run`` (known curves), except the consensus
distance, which needs real models (a 24-step stacked run).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import results
from results import plots, settings, stats, timeline
from results.report import ACC, _how_to_read, format_summary
from tests.test_results import make_run

HASH = re.compile(r"[0-9a-f]{8}\b")


def _grid(tmp_path, latencies=(0.0001, 0.001, 0.01), seeds=(0, 1), algorithms=("dpsgd",)):
    """Runs of a grid over network.latency_s, two seeds each: accuracy depends on the network."""
    for a in algorithms:
        for k, lat in enumerate(latencies):
            for s in seeds:
                make_run(tmp_path, f"{a}-iid-s{s}-{k:08x}", algorithm=a, seed=s, accs=[0.5, 0.8, 0.9 + 0.02 * k + 0.001 * s],
                         bytes_per_eval=1e6, config={"network": {"latency_s": lat, "bandwidth_Bps": 1e9}})
    return results.load(tmp_path)


def _styles(fig):
    """(colour, linestyle) of every drawn data line of a figure."""
    return {(ln.get_color() if isinstance(ln.get_color(), str) else tuple(ln.get_color()), ln.get_linestyle())
            for ax in fig.axes for ln in ax.get_lines() if len(ln.get_xdata()) > 1}


def test_network_grid_is_separate_settings_and_the_interval_is_labelled(tmp_path):
    # before: "runs 6, 0.92 ± 0.03" (three networks averaged as if they were seeds), no key named
    df = _grid(tmp_path)
    s = stats.summary(df, 0.9)
    assert "cfg.network.latency_s" in stats.setting_columns(s)
    assert "cfg.seed" not in stats.setting_columns(s) and "seed" not in stats.setting_columns(s)
    agg = stats.aggregate(s)
    assert len(agg) == 3 and (agg["runs"] == 2).all() and (agg["final_test_acc_n"] == 2).all()
    text = format_summary(s)
    assert "network.latency_s" in text and ACC in text and "(n=2)" in text
    # one seed: no interval, and it says n=1
    one = format_summary(stats.summary(df[df["seed"] == 0], 0.9))
    assert "±" not in one.split("\n", 2)[2] and "(n=1)" in one


def test_every_setting_has_its_own_style_and_legend_entry(tmp_path):
    # before: four networks drawn as four same-coloured lines under one legend entry "dpsgd"
    df = _grid(tmp_path, latencies=(0.0001, 0.001, 0.01, 0.1), seeds=(0,))
    expected = set(settings.labels(df))
    assert expected == {f"dpsgd · network.latency_s={v:g}" for v in (0.0001, 0.001, 0.01, 0.1)}
    for name in ("accuracy_vs_bytes", "accuracy_vs_time", "loss_curves"):
        fig = plots.FIGURES[name][0](df)
        assert set(fig.harness["legend"]) == expected and len(fig.harness["legend"]) == 4, name
        assert len(_styles(fig)) >= 4, name
        texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
        assert sorted(texts) == sorted(f"{x} (n=1)" for x in expected), name  # one seed each: n stated
        assert not any(HASH.search(t) for t in texts + fig.harness["panels"]), name


def test_timeline_keeps_the_baseline_with_readable_titles_and_names_what_it_dropped(tmp_path):
    # before: the first 4 runs alphabetically (sync_sgd missing), titled with run ids
    for k, a in enumerate(["adpsgd", "diloco", "dpsgd", "easgd", "local_sgd", "palsgd", "sync_sgd"]):
        for s in (0, 1):
            make_run(tmp_path, f"{a}-s{s}-{k:08x}", algorithm=a, seed=s)
    df = results.load(tmp_path)
    fig = timeline.timeline(df, max_runs=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "sync_sgd · seed 0" and len(titles) == 4
    assert not any(HASH.search(t) for t in titles)
    notes = " ".join(fig.harness["notes"])
    assert "one seed per setting" in notes and "palsgd" in notes and "local_sgd" in notes
    assert "palsgd" in fig._suptitle.get_text()  # said on the figure itself


def test_consensus_distance_is_recorded_every_step_not_aliased_with_eval_every():
    # before: only at evaluation steps, every 6 steps against period 4: a zig-zag (0 at 12, 24)
    from harness.experiment import simulate
    from tests.helpers import small

    df, _ = simulate(small("local_sgd", backend="stacked", eval_every=6))
    w = df[(df.worker >= 0) & (df.step > 0)]
    per_step = w.groupby("step").dist_to_mean.mean()
    assert list(per_step.index) == list(range(1, 25)) and per_step.notna().all()
    ev = df[df.worker == -1].set_index("step").consensus_dist.drop(0)
    np.testing.assert_allclose(per_step.loc[ev.index], ev, rtol=1e-9, atol=1e-15)  # the same definition
    after = per_step[per_step.index % 4 == 0]  # period 4: averaged at steps 4, 8, ...
    assert (after < 1e-20).all() and (per_step[per_step.index % 4 != 0] > 1e-6).all()
    fig = plots.consensus_distance(df)
    (line,) = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) > 1]
    assert list(line.get_xdata()) == list(range(1, 25))
    assert "\\|x_i - \\bar{x}\\|^2" in fig.axes[0].get_ylabel() and "every step" in fig.axes[0].get_title()


def test_a_diverged_run_does_not_flatten_the_loss_plot(tmp_path):
    # before: linear axis, the blow-up (1e6) squashed every other curve to a flat line
    good = make_run(tmp_path, "good", accs=[0.5, 0.8, 0.9, 0.95], write=False)
    bad = make_run(tmp_path, "bad", algorithm="local_sgd", accs=[0.5, 0.6, 0.7, 0.8], write=False)
    bad.loc[(bad.step == 30) & (bad.worker >= 0), "train_loss"] = 1e6
    bad.loc[bad.step == 40, ["train_loss", "test_loss"]] = [np.inf, np.nan]
    df = pd.concat([good, bad], ignore_index=True).assign(status=lambda d: np.where(d.run_id == "bad", "diverged", "finished"))
    fig = plots.loss_curves(df)
    train = fig.axes[0]
    assert train.get_title().startswith("train loss") and train.get_yscale() == "log"
    ys = np.concatenate([ln.get_ydata() for ln in train.get_lines()]).astype(float)
    assert np.isfinite(ys).all()
    assert "diverged (last finite value)" in fig.harness["extra_legend"]


def test_pareto_front_per_partition_and_no_legend_for_an_empty_front(tmp_path):
    # before: one front over iid and Dirichlet runs together; "Pareto front" in the legend with none drawn
    rows = [("a-iid", "sync_sgd", "iid", 4e6, 0.95), ("b-iid", "local_sgd", "iid", 5e5, 0.90),
            ("a-dir", "sync_sgd", "dirichlet", 4e6, 0.85), ("b-dir", "local_sgd", "dirichlet", 5e5, 0.60)]
    for rid, a, p, b, acc in rows:
        make_run(tmp_path, rid, algorithm=a, partition=p, accs=[0.3, acc], bytes_per_eval=b / 2)
    s = stats.summary(results.load(tmp_path), 0.9)
    fig = plots.pareto(s)
    assert sorted(fig.harness["panels"]) == ["digits · partition=dirichlet", "digits · partition=iid"]
    for ax in fig.axes:  # each panel's front is drawn from its own partition's points only
        front = [ln for ln in ax.get_lines() if ln.get_color() == "black" and ln.get_linestyle() != "None"]
        (step,) = front
        assert len(step.get_xdata()) == 2  # both runs of the partition are on its front
    assert fig.harness["extra_legend"] == ["Pareto front of the setting means (per panel)"]
    empty = plots.pareto(s.assign(final_test_acc=np.nan))
    assert empty.harness["extra_legend"] == [] and "no front" in " ".join(empty.harness["notes"])


def test_time_to_target_is_interpolated_so_partitions_do_not_tie(tmp_path):
    # before: both crossed 0.9 between the evaluations at 2 s and 3 s and both got 3 s
    make_run(tmp_path, "iid", accs=[0.5, 0.88, 0.98], times=[1, 2, 3])
    make_run(tmp_path, "dir", partition="dirichlet", accs=[0.5, 0.80, 0.92], times=[1, 2, 3])
    s = stats.summary(results.load(tmp_path), 0.9).set_index("run_id")
    assert s.loc["iid", "time_to_target_s"] == pytest.approx(2.2)
    assert s.loc["dir", "time_to_target_s"] == pytest.approx(2 + 10 / 12)
    page = _how_to_read(s.reset_index(), stats.setting_columns(s), 0.9)  # the text under the report's table
    assert "interpolated linearly between evaluations" in page and "95% Student-t" in page
    assert "2.2 s (1/1)" in format_summary(s.reset_index())


def test_tables_written_before_dist_to_mean_still_load_and_plot(tmp_path):
    # the new column is optional: older runs load with it NaN and the figure falls back to eval rows
    make_run(tmp_path, "old", accs=[0.5, 0.8, 0.9])
    path = tmp_path / "old" / "metrics.parquet"
    pd.read_parquet(path).drop(columns=["dist_to_mean"]).to_parquet(path)
    df = results.load(tmp_path)
    assert df.attrs["problems"] == [] and df["dist_to_mean"].isna().all()
    fig = plots.consensus_distance(df)
    assert "evaluation steps only" in " ".join(fig.harness["notes"])


def test_a_key_that_differs_between_algorithms_is_a_column_and_missing_keys_stay_out_of_labels(tmp_path):
    make_run(tmp_path, "s", algorithm="sync_sgd", hp={"lr": 0.1})
    for p in (4, 8):
        make_run(tmp_path, f"l{p}", algorithm="local_sgd", hp={"lr": 0.05, "period": p})
    s = stats.summary(results.load(tmp_path), 0.9)
    assert stats.setting_columns(s) == ["algorithm", "partition", "hp.lr", "hp.period"]
    assert sorted(settings.labels(s)) == ["local_sgd · period=4", "local_sgd · period=8", "sync_sgd"]


def test_notes_drawn_on_a_figure_are_not_repeated_in_its_caption(tmp_path):
    # before: the consensus figure's notes were drawn under its panels and printed again below
    # it in the HTML (three times in all, with the legend); figures.json still lists them all
    import json

    from harness.experiment import run_to_dir
    from results.report import write_report
    from tests.helpers import small

    for alg in ("sync_sgd", "local_sgd"):
        run_to_dir(small(alg, backend="stacked"), tmp_path / "runs")
    out = write_report(tmp_path / "runs")
    meta = json.loads((out / "figures.json").read_text())["consensus_distance"]
    zero = [n for n in meta["notes"] if n.startswith("0 at every step")]
    assert zero and zero[0] in meta["drawn"]
    page = (out / "index.html").read_text()
    assert "0 at every step (exact consensus" not in page  # on the figure itself only
    assert "<figure id='consensus_distance'><figcaption><b>Figure" in page  # the caption above the image
    assert "(<a href='consensus_distance.svg'>SVG</a>)" in page
    assert not list(out.glob(".*tmp*")), "a temporary file was left behind"
