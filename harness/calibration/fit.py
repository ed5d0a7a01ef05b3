"""Fit the simulators' compute and network models to measured times (``harness calibrate``).

Pure functions of tables, so a synthetic trace tests them (``tests/test_calibrate.py``):

* :func:`fit_compute` takes ``worker, step, seconds`` (one row per worker and step: the
  compute time of that step, measured under the job's real load) and returns a ``compute:``
  section: per-worker persistent factors ``worker_factors`` (a worker's median over the
  median of the medians), and the distribution of the factor-free times chosen by AIC among
  the models the simulators know (``lognormal``, ``exponential``, ``shifted_exp``,
  ``pareto``; maximum likelihood with ``scipy.stats``), with its Kolmogorov-Smirnov distance.
* :func:`fit_network` takes ``op, nbytes, members, nodes, link, seconds`` (``op`` in
  ``p2p``/``allreduce``/``allgather``; ``link`` ``intra``/``inter`` for ``p2p``) and fits
  alpha (latency) and beta (bandwidth) per link class jointly over every op, once per
  all-reduce algorithm of :mod:`harness.cost` (``ring``, ``tree``; ``hierarchical`` across
  nodes). Each op and size counts with the median of its repetitions. Each candidate is a
  non-negative least-squares fit of the *relative* errors
  (``scipy.optimize.nnls``: small and large messages count alike); the candidate with the
  smallest error wins. Its formula must match ``harness.cost``'s, which is what the
  simulators then charge.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize, stats

MIN_INV_BETA = 1e-13  # 10 TB/s: a bandwidth too high to measure is written as this


# -- compute ---------------------------------------------------------------------------
def _candidates(y: np.ndarray) -> dict[str, tuple[dict, object, int]]:
    """name -> (compute: fields, frozen scipy distribution, number of parameters)."""
    out = {}
    s, _, scale = stats.lognorm.fit(y, floc=0)
    out["lognormal"] = ({"mean_s": scale * math.exp(s * s / 2), "sigma": s}, stats.lognorm(s, 0, scale), 2)
    _, scale = stats.expon.fit(y, floc=0)
    out["exponential"] = ({"mean_s": scale}, stats.expon(0, scale), 1)
    loc, scale = stats.expon.fit(y)
    if loc > 0 and scale > 0:
        out["shifted_exp"] = ({"mean_s": loc + scale, "shift_s": loc}, stats.expon(loc, scale), 2)
    b, _, xm = stats.pareto.fit(y, floc=0)
    if b > 1.05:
        out["pareto"] = ({"mean_s": b * xm / (b - 1), "alpha": b}, stats.pareto(b, 0, xm), 2)
    return out


def fit_compute(samples: pd.DataFrame, models: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """``(compute section, goodness of fit)`` from per-worker, per-step compute seconds."""
    df = samples[["worker", "seconds"]].dropna()
    df = df[df.seconds > 0]
    if df.empty:
        raise ValueError("calibrate: no positive compute times to fit (did the job take any steps?)")
    med = df.groupby("worker").seconds.median().sort_index()
    workers = list(range(int(med.index.max()) + 1))
    if sorted(med.index) != workers:
        raise ValueError(f"calibrate: compute times for workers {sorted(med.index)}, need every worker 0..{workers[-1]}")
    factors = (med / med.median()).to_numpy()
    y = (df.seconds / factors[df.worker.to_numpy()]).to_numpy()
    cands = _candidates(y)
    if models is not None:
        cands = {k: v for k, v in cands.items() if k in models}
    aic = {k: 2 * p - 2 * float(np.sum(dist.logpdf(y))) for k, (_, dist, p) in cands.items()}
    best = min(aic, key=aic.get)
    fields, dist, _ = cands[best]
    ks = stats.kstest(y, dist.cdf)
    section = {"model": best, **{k: float(f"{v:.6g}") for k, v in fields.items()},
               "worker_factors": [round(float(f), 4) for f in factors]}
    goodness = {"samples": int(len(y)), "ks_distance": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
                "aic": {k: round(v, 1) for k, v in sorted(aic.items(), key=lambda kv: kv[1])},
                "worker_median_s": [float(v) for v in med], "mean_s": float(np.mean(df.seconds)),
                "cv": float(np.std(y) / np.mean(y))}
    return section, goodness


# -- network ---------------------------------------------------------------------------
def _coefs(row, algorithm: str, classes: list[str], k: int) -> np.ndarray:
    """Coefficients of ``[alpha_c, 1/beta_c for c in classes]`` in ``harness.cost``'s
    formula for one measurement (the same formulas, written as linear forms)."""
    a = np.zeros(2 * len(classes))
    b, m = float(row.nbytes), int(row.members)

    def add(cls, ca, cb):
        j = classes.index(cls)
        a[2 * j] += ca
        a[2 * j + 1] += cb * b

    bottleneck = "inter" if row.nodes > 1 else "intra"
    if bottleneck not in classes:
        bottleneck = classes[0]
    if row.op == "p2p":
        add(row.link if row.link in classes else classes[0], 1, 1)
    elif row.op == "allgather":
        add(bottleneck, m - 1, m - 1)
    elif algorithm == "tree":
        c = 2 * math.ceil(math.log2(m))
        add(bottleneck, c, c)
    elif algorithm == "hierarchical":
        nodes = int(row.nodes)
        add("intra", 2 * (k - 1), 2 * (k - 1) / k)
        add("inter", 2 * (nodes - 1), 2 * (nodes - 1) / nodes)
    else:  # ring
        add(bottleneck, 2 * (m - 1), 2 * (m - 1) / m)
    return a


def fit_network(meas: pd.DataFrame, workers_per_node: int | None = None) -> tuple[dict, dict]:
    """``(network section, goodness of fit)``. ``workers_per_node``: ranks per node when
    the job spanned several nodes (then ``intra`` and the top-level link are fitted apart)."""
    df = meas[meas.seconds > 0]
    # the median of each op and size: a rank descheduled in one repetition is no network property
    df = df.groupby(["op", "nbytes", "members", "nodes", "link"], as_index=False, dropna=False).seconds.median()
    if df.empty:
        raise ValueError("calibrate: no communication times to fit")
    multi = bool(workers_per_node) and int(df.nodes.max()) > 1
    classes = ["intra", "inter"] if multi else ["intra"]
    algs = ["ring", "tree"] + (["hierarchical"] if multi else [])
    t = df.seconds.to_numpy()
    fits = {}
    for alg in algs:
        A = np.stack([_coefs(r, alg, classes, workers_per_node or 1) for r in df.itertuples()])
        used = A.any(axis=0)
        theta = np.zeros(A.shape[1])
        theta[used], _ = optimize.nnls(A[:, used] / t[:, None], np.ones(len(t)))
        rel = A @ theta / t - 1
        fits[alg] = (theta, rel)
    rms = {alg: float(np.sqrt(np.mean(rel**2))) for alg, (_, rel) in fits.items()}
    best = min(rms, key=rms.get)
    theta, rel = fits[best]
    link = {c: {"latency_s": float(f"{theta[2 * j]:.4g}"),
                "bandwidth_Bps": float(f"{1 / max(theta[2 * j + 1], MIN_INV_BETA):.4g}")} for j, c in enumerate(classes)}
    section = {**link["inter" if multi else "intra"], "allreduce": best}
    if multi:
        section.update(workers_per_node=int(workers_per_node), intra=link["intra"])
    df = df.assign(predicted_s=t * (1 + rel), rel_error=rel)
    per_op = {op: float(np.sqrt(np.mean(g.rel_error**2))) for op, g in df.groupby("op")}
    goodness = {"measurements": int(len(df)), "rel_rms": rms[best], "rel_rms_by_op": per_op,
                "rel_rms_by_allreduce": rms, "max_abs_rel_error": float(np.max(np.abs(rel)))}
    return section, goodness


# -- contention: the synchronisation delay of the measured job ----------------------------
def step_times(metrics: pd.DataFrame, warmup: int = 3) -> np.ndarray:
    """Wall seconds of each step (mean over workers of their ``time_s`` increments)."""
    w = metrics[(metrics.worker >= 0) & (metrics.event == "step")].sort_values(["worker", "step"])
    w = w.assign(dt=w.groupby("worker").time_s.diff(), ds=w.groupby("worker").step.diff())
    w = w[(w.step > warmup) & (w.ds == 1)]
    return w.groupby("step").dt.mean().to_numpy()


def expected_max(compute: dict, n: int, seed: int = 0, draws: int = 4000) -> float:
    """``E[max of n workers' compute draws]`` per step under a ``compute:`` section (Monte Carlo)."""
    from harness.models.compute import ComputeSpec, ComputeTimes

    times = ComputeTimes(ComputeSpec(**compute), n, seed)
    return float(np.mean([max(times.sample(i) for i in range(n)) for _ in range(max(1, draws // n))]))


def trace_max(samples: pd.DataFrame) -> float:
    """The measured counterpart: the mean over steps of the slowest worker's compute time."""
    return float(samples.groupby("step").seconds.max().mean())


def insitu_delay(network: dict, compute: dict, measured_step_s: float, n: int, nbytes: float,
                 seed: int = 0, draws: int = 4000, e_max: float | None = None) -> tuple[dict, dict]:
    """A network section with the job's synchronisation delay as ``sync_delay_s``.

    For a job of one all-reduce of ``nbytes`` per step (``sync_sgd``) the simulator's step is
    ``E[max of n compute draws] + allreduce(nbytes)``. Where the measured step is longer
    (ranks sharing cores wait for the scheduler, not for the wire), the difference is the
    delay that :mod:`harness.cost` then adds once to every communication op (a message, a
    gossip exchange, a collective), so that a replay of this job takes its measured time.
    ``e_max``: that expectation if known (a replayed trace: :func:`trace_max`), else drawn
    from ``compute``. Returns ``(network section, what was found)``."""
    from harness.cost import NetworkSpec

    e_max = expected_max(compute, n, seed, draws) if e_max is None else e_max
    cost = NetworkSpec(**{**network, "sync_delay_s": 0.0}).allreduce_cost(nbytes, list(range(n))).seconds
    delay = max(0.0, measured_step_s - e_max - cost)
    found = {"measured_step_s": measured_step_s, "expected_max_compute_s": e_max, "allreduce_model_s": cost,
             "sync_delay_s": delay}
    return {**network, "sync_delay_s": float(f"{delay:.4g}")}, found
