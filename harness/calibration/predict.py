"""``harness predict RUNS --calibration FILE``: replay real runs in the simulator, compare times.

For every finished real run (``mpi``/``torch``) in ``RUNS``, its own config (from its
``run.json``) is replayed on the ``simpy`` backend with the calibrated ``compute:`` and
``network:`` of each ``FILE`` (what ``harness calibrate`` wrote) in place of the run's own, and
without its ``slowdown:`` (which the calibration is meant to have captured). The table
gives, per run, the measured and predicted total training time (the largest ``time_s`` of
a step row: wall-clock since the start barrier, evaluation excluded; simulated seconds) and
time per step, and the relative error ``predicted / measured - 1``; also each side's share
of time spent not computing (waiting and communicating), which says where an error comes
from. Written to ``OUT/predict.csv`` and drawn in ``OUT/predict.png``.

Per-worker factors: a calibration on ``R`` ranks fits ``R`` factors, one per rank. A replay
with ``n = R`` workers uses them as they are; a server algorithm on the same ``R`` ranks
(``n = R - 1`` workers on ranks ``1..R-1``) uses those ranks' factors; other sizes drop them.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from results.store import atomic_text, atomic_write

COLUMNS = ["calibration", "algorithm", "run_id", "backend", "steps", "measured_s", "predicted_s", "error",
           "measured_step_ms", "predicted_step_ms", "measured_wait_share", "predicted_wait_share", "note"]


def _times(df: pd.DataFrame, steps: int) -> tuple[float, float, float]:
    """(total seconds, seconds per step, share of worker time not spent computing)."""
    rows = df[df.event == "step"]
    total = float(rows.time_s.max())
    last = rows[rows.worker >= 0].sort_values("step").groupby("worker").tail(1)
    wait = 1 - float(last.compute_s.sum() / last.time_s.sum()) if len(last) and last.time_s.sum() > 0 else float("nan")
    return total, total / steps, wait


def replay_config(raw: dict, fragment: dict) -> tuple[dict, str]:
    """The simulated replay of a real run's config: ``(config, note)``."""
    from harness import algorithms

    cfg = copy.deepcopy(raw)
    cfg.pop("slowdown", None)
    cfg["backend"] = "simpy"
    compute = copy.deepcopy(fragment["compute"])
    n = int(cfg["n_workers"])
    server = bool(getattr(algorithms.get(cfg["algorithm"]["name"]), "has_server", False))
    f, note = compute.get("worker_factors"), ""
    if f is not None and len(f) != n:
        if server and len(f) == n + 1:
            compute["worker_factors"], note = f[1:], "factors of ranks 1..n"
        else:
            compute.pop("worker_factors")
            note = f"factors dropped ({len(f)} fitted, {n} workers)"
    cfg["compute"], cfg["network"] = compute, copy.deepcopy(fragment["network"])
    return cfg, note


def predict(runs: Path, calibrations: list[Path], out: Path) -> pd.DataFrame:
    """The table over every real run in ``runs`` and every calibration file (by its stem)."""
    import yaml

    from harness.config import ConfigError, resolve
    from harness.experiment import run_to_dir
    from results.store import METRICS, RUN_JSON, read_json

    fragments = {}
    for path in calibrations:
        fragment = yaml.safe_load(Path(path).read_text())
        if not isinstance(fragment, dict) or not {"compute", "network"} <= set(fragment):
            raise ConfigError(f"--calibration: {path} lacks compute: and network: (write it with harness calibrate)")
        fragments[Path(path).stem] = fragment
    rows = []
    for (label, fragment), rj in ((f, rj) for f in fragments.items() for rj in sorted(Path(runs).glob(f"*/{RUN_JSON}"))):
        rec = read_json(rj)
        raw = rec.get("config") or {}
        if rec.get("status") != "finished" or raw.get("backend") not in ("mpi", "torch"):
            continue
        measured = pd.read_parquet(rj.parent / METRICS)
        cfg_raw, note = replay_config(raw, fragment)
        cfg = resolve(cfg_raw)
        run_dir, _ = run_to_dir(cfg, out / "replays")
        simulated = pd.read_parquet(run_dir / METRICS)
        m, p = _times(measured, cfg.steps), _times(simulated, cfg.steps)
        rows.append([label, cfg.algorithm["name"], rec["run_id"], raw["backend"], cfg.steps, m[0], p[0], p[0] / m[0] - 1,
                     1e3 * m[1], 1e3 * p[1], m[2], p[2], note])
    if not rows:
        raise ConfigError(f"RUNS: no finished mpi or torch run in {runs} (run one with mpiexec ... harness run)")
    table = pd.DataFrame(rows, columns=COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    atomic_text(out / "predict.csv", table.to_csv(index=False))
    _figure(table, out / "predict.png")
    return table


def _figure(table: pd.DataFrame, path: Path) -> None:
    """One panel per calibration: measured and predicted time per step, error on top."""
    import seaborn as sns
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(table.calibration))
    fig = Figure(figsize=(1.2 + 1.3 * table.algorithm.nunique() * len(labels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(labels), sharey=True, squeeze=False)[0]
    for ax, label in zip(axes, labels):
        t = table[table.calibration == label].reset_index(drop=True)
        long = t.melt(id_vars=["algorithm"], value_vars=["measured_step_ms", "predicted_step_ms"],
                      var_name="kind", value_name="ms per step")
        long["kind"] = long.kind.str.replace("_step_ms", "")
        sns.barplot(long, x="algorithm", y="ms per step", hue="kind", ax=ax, legend=ax is axes[0])
        for k, row in t.iterrows():
            ax.annotate(f"{row.error:+.0%}", (k, max(row.measured_step_ms, row.predicted_step_ms)),
                        ha="center", va="bottom")
        ax.set_title(label)
        ax.tick_params(axis="x", labelrotation=20)
    fig.suptitle("Calibrated simulator: predicted vs measured time per step")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def format_table(table: pd.DataFrame) -> str:
    t = table.assign(error=table.error.map(lambda e: f"{e:+.1%}"))
    cols = ["calibration", "algorithm", "measured_s", "predicted_s", "error", "measured_step_ms", "predicted_step_ms",
            "measured_wait_share", "predicted_wait_share"]
    return t[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")
