"""Split a labelled training set across workers.

* ``iid``: a seeded random permutation cut into ``n`` near-equal shards.
* ``dirichlet``: for every class ``c``, proportions ``q_c ~ Dir(alpha * 1_n)`` decide which
  share of that class each worker gets (Hsu et al., arXiv 1909.06335). Small ``alpha`` gives
  skewed label distributions. Draws are repeated until every worker has ``min_size`` samples.
"""
from __future__ import annotations

import numpy as np


class PartitionError(ValueError):
    pass


def iid(labels: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    if n > len(labels):
        raise PartitionError(f"n_workers: {n} workers but only {len(labels)} training samples; use fewer workers")
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(s) for s in np.array_split(perm, n)]


def dirichlet(labels: np.ndarray, n: int, seed: int, alpha: float = 0.5, min_size: int = 10) -> list[np.ndarray]:
    if alpha <= 0:
        raise PartitionError(f"task.alpha: Dirichlet concentration must be > 0, got {alpha}")
    if n * min_size > len(labels):
        raise PartitionError(f"n_workers: {n} workers x {min_size} samples exceeds {len(labels)} training samples")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(n)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(alpha * np.ones(n)))[:-1] * len(idx)).astype(int)
            for w, part in enumerate(np.split(idx, cuts)):
                shards[w].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shards]
    raise PartitionError(f"task.alpha: could not give every worker {min_size} samples with alpha={alpha}; raise alpha")


PARTITIONS = {"iid": iid, "dirichlet": dirichlet}
