"""``harness calibrate`` and ``harness predict`` (issue [17]).

    mpiexec -n 4 harness calibrate CONFIG --backend mpi [--out DIR] [--only I] [--set k=v ...]
    torchrun --nproc-per-node 4 --no-python harness calibrate CONFIG --backend torch
    harness predict RUNS --calibration DIR/calibration.yaml [--calibration ...] [--out DIR]

``calibrate`` measures (:mod:`harness.calibration.measure`) and fits
(:mod:`harness.calibration.fit`) on the run ``--only I`` of CONFIG (default 1, a lock-step
algorithm such as ``sync_sgd``; runs are numbered from 1 as ``harness run --list`` shows
them), then writes to DIR (default ``runs/calibration``):
``calibration.yaml`` (the ``compute:`` / ``network:`` fragment, goodness of fit as comments;
for ``sync_sgd`` also ``calibration-insitu.yaml``, with the job's own synchronisation delay
as ``network.sync_delay_s``, see :func:`harness.calibration.fit.insitu_delay`, and
``calibration-trace.yaml``: ``compute: {model: trace}`` replaying ``compute.csv``, the
measured steps in their order, with its own delay),
``calibration.json`` (the fit in full), ``compute.csv`` (``worker, step, seconds``) and
``comm.csv`` (every timed op), and the measured job under ``DIR/job``.
``predict`` is :mod:`harness.calibration.predict`.
"""
from __future__ import annotations

from pathlib import Path


def add_arguments(p, name: str) -> None:
    """The arguments of ``harness calibrate`` or ``harness predict`` (``name``) on ``p``, a
    subcommand of the one parser tree (:func:`harness.cli._parser`)."""
    from harness import capabilities
    from harness.cli import _examples, add_set

    if name == "calibrate":
        p.description = ("Time the job's ops and steps on every rank, fit compute: and network:, write "
                         "calibration*.yaml fragments (see docs/simulation.md).")
        p.epilog = _examples("mpiexec -n 4 harness calibrate presets/calibrate-mpi.yaml --backend mpi",
                             "torchrun --nproc-per-node 4 --no-python harness calibrate "
                             "presets/calibrate-mpi.yaml --backend torch --out runs/cal-torch",
                             "mpiexec -n 4 harness calibrate my.yaml --backend mpi --only 2   # its second run")
        p.set_defaults(func=cmd_calibrate)
        p.add_argument("config", metavar="CONFIG",
                       help="YAML experiment file whose run is measured, e.g. presets/calibrate-mpi.yaml")
        p.add_argument("--backend", choices=capabilities.REAL, required=True,
                       help="the real backend the launcher started (required)")
        p.add_argument("--out", metavar="DIR", default="runs/calibration",
                       help="output directory for the fragments and the fit")
        p.add_argument("--only", metavar="I", type=int, default=1,
                       help="which expanded run of CONFIG to measure, numbered from 1 as harness run --list shows them")
        add_set(p)
        p.add_argument("--sizes", default=None,
                       help="payload bytes to time, comma separated (default 64,4096,65536,1048576)")
        p.add_argument("--reps", type=int, default=20, help="repetitions per op and size (a quarter for 1 MiB and more)")
        p.add_argument("--warmup", type=int, default=3, help="first steps left out of the compute fit")
        return
    p.description = ("Replay each real run on simpy with each calibration; write predict.csv and predict.png "
                     "(predicted vs measured time, relative error).")
    p.epilog = _examples("harness predict runs/calibrate-mpi --calibration runs/calibration/calibration-insitu.yaml")
    p.set_defaults(func=cmd_predict)
    p.add_argument("runs", metavar="RUNS", help="directory of real (mpi/torch) runs")
    p.add_argument("--calibration", required=True, action="append", metavar="FILE",
                   help="calibration.yaml written by harness calibrate; repeat to compare several")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default RUNS/predict)")


def _config(a):
    from harness import algorithms, config

    runs = config.load(a.config, [*a.sets, f"backend={a.backend}", "log_every=1"])
    if not 1 <= a.only <= len(runs):  # numbered from 1, as harness run --list and --only (issue [27])
        raise config.ConfigError(f"--only {a.only}: expected a run number in 1..{len(runs)} (as harness run --list "
                                 "shows them; the first run is --only 1)")
    cfg = runs[a.only - 1]
    if getattr(algorithms.get(cfg.algorithm["name"]), "has_server", False):
        raise config.ConfigError(f"--only {a.only}: calibrate on a lock-step algorithm (every rank a worker), such as "
                                 f"sync_sgd; {cfg.algorithm['name']!r} has a server rank")
    return cfg


def _model_bytes(cfg) -> int:
    """Bytes of one model on the wire (what sync SGD all-reduces each step)."""
    from harness import ops
    from harness.tasks import build_task

    task = build_task(cfg.task, cfg.n_workers, cfg.seed)
    return int(ops.wire(task.init_params(cfg.seed), task.wire_codec)[1])


def cmd_calibrate(a) -> int:
    from harness import capabilities
    from harness.calibration import fit, io, measure
    from harness.config import ConfigError
    from results.store import atomic_text, write_json

    cfg = _config(a)
    try:
        sizes = tuple(int(float(s)) for s in a.sizes.split(",")) if a.sizes else measure.SIZES
        if not sizes or min(sizes) < 4:
            raise ValueError
    except ValueError:
        raise ConfigError(f"--sizes {a.sizes}: expected payload sizes in bytes (>= 4), comma separated") from None
    if a.reps < 1:
        raise ConfigError(f"--reps {a.reps}: expected at least 1")
    transport = capabilities.BACKENDS[cfg.backend].load()
    out = Path(a.out)
    got = measure.measure(cfg, out / "job", transport, sizes, a.reps)
    if got is None:  # not rank 0
        return 0
    comm, metrics, hosts = got
    steps = measure.step_compute(metrics, a.warmup)
    per_node = {h: hosts.count(h) for h in hosts}
    wpn = next(iter(per_node.values())) if len(per_node) > 1 and len(set(per_node.values())) == 1 else None
    compute, cg = fit.fit_compute(steps)
    network, ng = fit.fit_network(comm, wpn)
    info = {"source": a.config, "run": a.only, "run_id": cfg.run_id, "backend": cfg.backend, "ranks": len(hosts),
            "hosts": hosts, "steps": cfg.steps, "compute": cg, "network": ng,
            "fragment": {"compute": compute, "network": network}}
    if cfg.algorithm["name"] == "sync_sgd":  # one all-reduce of the model per step: the contention term
        step_s, nbytes = float(fit.step_times(metrics, a.warmup).mean()), _model_bytes(cfg)
        insitu, info["insitu"] = fit.insitu_delay(network, compute, step_s, cfg.n_workers, nbytes, cfg.seed)
        info["insitu"]["measured_max_compute_s"] = fit.trace_max(steps)
        atomic_text(out / "calibration-insitu.yaml", io.fragment_text(compute, insitu, info, info["insitu"]))
        # the measured per-worker step times replayed as they came (model: trace), with its own delay
        trace = {"model": "trace", "trace": str((out / "compute.csv").resolve())}
        t_net, info["trace"] = fit.insitu_delay(network, trace, step_s, cfg.n_workers, nbytes, e_max=fit.trace_max(steps))
        atomic_text(out / "calibration-trace.yaml", io.fragment_text(trace, t_net, info, info["trace"]))
    atomic_text(out / "compute.csv", steps.to_csv(index=False))
    atomic_text(out / "comm.csv", comm.to_csv(index=False))
    write_json(info, out / "calibration.json")
    path = atomic_text(out / "calibration.yaml", io.fragment_text(compute, network, info))
    print(path.read_text(), end="")
    print(f"calibration written to {path}")
    return 0


def cmd_predict(a) -> int:
    from harness.calibration.predict import format_table, predict
    from harness.config import ConfigError

    runs = Path(a.runs)
    if not runs.is_dir():
        raise ConfigError(f"RUNS: {str(runs)!r} is not a directory of runs")
    for c in a.calibration:
        if not Path(c).is_file():
            raise ConfigError(f"--calibration: no such file {c!r} (harness calibrate writes DIR/calibration.yaml)")
    out = Path(a.out) if a.out else runs / "predict"
    table = predict(runs, [Path(c) for c in a.calibration], out)
    print(format_table(table))
    print(f"table and figure written to {out}/predict.csv, predict.png")
    return 0


def main(argv: list[str]) -> int:
    """``argv`` starts with ``calibrate`` or ``predict``: the same as ``harness calibrate ...``."""
    from harness.cli import main as harness_main

    return harness_main(list(argv))
