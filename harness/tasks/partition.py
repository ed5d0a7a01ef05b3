"""Split a labelled training set across workers.

* ``iid``: a seeded random permutation cut into ``n`` near-equal shards.
* ``dirichlet``: for every class ``c``, proportions ``q_c ~ Dir(alpha * 1_n)`` decide which
  share of that class each worker gets (Hsu et al., arXiv 1909.06335). Small ``alpha`` gives
  skewed label distributions. Draws are repeated until every worker has ``min_size`` samples.
* ``contiguous``: ``n`` consecutive blocks in data order (for text: each worker reads its own
  stretch of the corpus, e.g. different stories, a feature skew without labels).
* ``powerlaw``: shard sizes proportional to ``(k + 1) ** -exponent`` (Zipf-like quantity
  skew, as in LEAF-style federated benchmarks), ``k`` a seeded permutation of the workers;
  every shard gets at least ``min_size`` samples. ``contiguous=True`` cuts consecutive
  blocks of those sizes, otherwise a seeded random permutation.

Every function takes the labels (only their number matters for the label-free ones), the
number of parts and a seed, and returns sorted index arrays.
"""
from __future__ import annotations

import numpy as np

from harness import streams


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


def contiguous(labels: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    if n > len(labels):
        raise PartitionError(f"n_workers: {n} parts but only {len(labels)} training samples; use fewer parts")
    return [s.astype(np.int64) for s in np.array_split(np.arange(len(labels)), n)]


def powerlaw(labels: np.ndarray, n: int, seed: int, exponent: float = 1.0, min_size: int = 2,
             contiguous: bool = False) -> list[np.ndarray]:
    if exponent < 0:
        raise PartitionError(f"task.exponent: power-law exponent must be >= 0, got {exponent}")
    total = len(labels)
    if n * min_size > total:
        raise PartitionError(f"n_workers: {n} parts x {min_size} samples exceeds {total} training samples")
    rng = streams.rng("partition", seed)
    w = (np.arange(n) + 1.0) ** -exponent
    w = w[rng.permutation(n)]
    extra = np.floor(w / w.sum() * (total - n * min_size)).astype(np.int64)
    extra[np.argmax(w)] += total - n * min_size - extra.sum()  # the largest shard takes the rest
    order = np.arange(total) if contiguous else rng.permutation(total)
    cuts = np.cumsum(extra + min_size)[:-1]
    return [np.sort(s).astype(np.int64) for s in np.split(order, cuts)]


PARTITIONS = {"iid": iid, "dirichlet": dirichlet, "contiguous": contiguous, "powerlaw": powerlaw}
