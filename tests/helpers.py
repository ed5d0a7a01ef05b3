"""Small configs shared by tests."""
from harness.config import expand

ALGOS = {
    "sync_sgd": {"algorithm": {"name": "sync_sgd", "lr": 0.1, "momentum": 0.9}},
    "local_sgd": {"algorithm": {"name": "local_sgd", "period": 4, "lr": 0.1, "momentum": 0.9}},
    "dpsgd": {"algorithm": {"name": "dpsgd", "lr": 0.1, "momentum": 0.9}, "topology": {"name": "ring"}},
}


def small(alg: str = "local_sgd", **over):
    """A 4-worker, 24-step float64 digits run with stragglers and a slow network."""
    raw = {"n_workers": 4, "steps": 24, "eval_every": 8, "seed": 3,
           "task": {"name": "digits", "dtype": "float64", "hidden": [16], "batch_size": 16},
           "compute": {"model": "lognormal", "sigma": 0.5, "straggler_fraction": 0.25, "straggler_factor": 3},
           "network": {"latency_s": 0.001, "bandwidth_Bps": 1e7}, **ALGOS[alg]}
    for k, v in over.items():
        merge = isinstance(v, dict) and isinstance(raw.get(k), dict) and k != "algorithm"
        raw[k] = {**raw[k], **v} if merge else v
    return expand(raw)[0]
