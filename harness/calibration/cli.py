"""``harness calibrate`` and ``harness predict`` (issue [17]).

    mpiexec -n 4 harness calibrate CONFIG --backend mpi [--out DIR] [--only I] [--set k=v ...]
    torchrun --nproc-per-node 4 --no-python harness calibrate CONFIG --backend torch
    harness predict RUNS --calibration DIR/calibration.yaml [--calibration ...] [--out DIR]

``calibrate`` measures (:mod:`harness.calibration.measure`) and fits
(:mod:`harness.calibration.fit`) on the run ``--only I`` of CONFIG (default 0, a lock-step
algorithm such as ``sync_sgd``), then writes to DIR (default ``runs/calibration``):
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

import sys
from pathlib import Path


def _parser():
    from harness import capabilities
    from harness.cli import _examples, _Help, _Parser

    p = _Parser(prog="harness", formatter_class=_Help,
                description="calibrate the simulators from a real run; predict real runs")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate", formatter_class=_Help,
                       help="measure compute and communication on a real launch; fit compute: and network:",
                       description="Time the job's ops and steps on every rank, fit compute: and network:, "
                                   "write calibration*.yaml fragments (see docs/simulation.md).",
                       epilog=_examples("mpiexec -n 4 harness calibrate presets/calibrate-mpi.yaml --backend mpi",
                                        "torchrun --nproc-per-node 4 --no-python harness calibrate "
                                        "presets/calibrate-mpi.yaml --backend torch --out runs/cal-torch"))
    c.add_argument("config", help="YAML experiment file whose run is measured, e.g. presets/calibrate-mpi.yaml")
    c.add_argument("--backend", choices=capabilities.REAL, required=True,
                   help="the real backend the launcher started (required)")
    c.add_argument("--out", default="runs/calibration", help="output directory for the fragments and the fit")
    c.add_argument("--only", type=int, default=0, help="which expanded run of CONFIG to measure (0-based; default 0)")
    c.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (dotted key; value parsed as YAML); repeatable (default: none)")
    c.add_argument("--sizes", default=None, help="payload bytes to time, comma separated (default 64,4096,65536,1048576)")
    c.add_argument("--reps", type=int, default=20, help="repetitions per op and size (a quarter for 1 MiB and more)")
    c.add_argument("--warmup", type=int, default=3, help="first steps left out of the compute fit")
    pr = sub.add_parser("predict", formatter_class=_Help,
                        help="replay real runs on simpy with a calibration; predicted vs measured time",
                        description="Replay each real run on simpy with each calibration; write predict.csv "
                                    "and predict.png (predicted vs measured time, relative error).",
                        epilog=_examples("harness predict runs/calibrate-mpi --calibration runs/calibration/"
                                         "calibration-insitu.yaml"))
    pr.add_argument("runs", help="directory of real (mpi/torch) runs")
    pr.add_argument("--calibration", required=True, action="append",
                    help="calibration.yaml written by harness calibrate; repeat to compare several")
    pr.add_argument("--out", default=None, help="output directory (default RUNS/predict)")
    return p


def _config(a):
    from harness import algorithms, config

    runs = config.load(a.config, [*a.sets, f"backend={a.backend}", "log_every=1"])
    if not 0 <= a.only < len(runs):
        raise config.ConfigError(f"--only {a.only}: expected an index in 0..{len(runs) - 1}")
    cfg = runs[a.only]
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
    """``argv`` starts with ``calibrate`` or ``predict``; every mistake is one line, status 2."""
    from harness.cli import _is_root
    from harness.config import ConfigError

    try:
        a = _parser().parse_args(argv)
        return {"calibrate": cmd_calibrate, "predict": cmd_predict}[a.cmd](a)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        if _is_root():
            print(f"harness: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
