"""Keyed state: rows of algorithm state per key (a client or a worker), owned by the backend.

``LoadState(name, key, default)`` / ``SaveState(name, key, value)`` (pattern ``state``,
:mod:`harness.ops`) read and write a row; a key never saved reads ``default``. The part
combinator :func:`harness.parts.keyed` yields them, so a method never threads per-client state
by hand and an unsampled client's row cannot change (a non-member saves nothing).

Two stores, each written once:

* :class:`RowStore` (stacked backend): per leaf of the state tree a ``[K, ...]`` tensor and a
  ``saved`` mask over the ``K`` keys; a load is one ``index_select`` and a ``where``, a save one
  ``index_copy`` of the member rows. Memory grows with ``K`` only for methods that keep state.
* :class:`DictStore` (SimPy and real ranks): ``{(name, key): row}``. In SimPy one store serves
  every worker (the server side of a federated deployment); a real rank holds the rows it saved
  last, and :meth:`harness.backends.rank.RankDriver._state` moves a row to the rank that loads it
  next (a point-to-point transfer, priced as a message). ``hosted`` restricts a store to some keys.
"""
from __future__ import annotations

import torch

from harness import tree


def _key(k) -> int:
    return int(k.item()) if isinstance(k, torch.Tensor) else int(k)


class DictStore:
    def __init__(self, n_keys: int, hosted=None):
        self.rows: dict = {}
        self.n_keys, self.hosted = n_keys, hosted  # hosted(key) -> bool, or None: every key

    def _check(self, name, k):
        if not 0 <= k < self.n_keys:
            raise ValueError(f"LoadState/SaveState({name!r}): key {k} is not in 0..{self.n_keys - 1} (ctx.n_clients)")

    def load(self, name: str, key, default):
        k = _key(key)
        self._check(name, k)
        if (name, k) in self.rows:
            return self.rows[(name, k)]
        if self.hosted is not None and not self.hosted(k):
            raise ValueError(f"keyed state {name!r}: key {k} is hosted by another rank; real backends keep a key's "
                             "rows on the rank that hosts it (key % n_workers); moving rows between ranks is not "
                             "supported yet: use --backend simpy or stacked")
        return default

    def save(self, name: str, key, value) -> None:
        k = _key(key)
        self._check(name, k)
        self.rows[(name, k)] = value


class RowStore:
    """Stacked rows: ``load`` and ``save`` take ``[n]`` keys and ``[n, ...]`` trees."""

    def __init__(self, n_keys: int):
        self.n_keys = n_keys
        self.tables: dict = {}  # name -> (list of [K, ...] leaf tensors, saved [K] bool)

    def _table(self, name, like):
        t = self.tables.get(name)
        if t is None:
            cols = [torch.zeros((self.n_keys, *torch.as_tensor(v).shape[1:]), dtype=torch.as_tensor(v).dtype)
                    for v in tree.leaves(like)]
            t = self.tables[name] = (cols, torch.zeros(self.n_keys, dtype=torch.bool))
        return t

    def _keys(self, name, key, n):
        keys = torch.as_tensor(key).long().expand(n) if torch.as_tensor(key).dim() == 0 else torch.as_tensor(key).long()
        if len(keys) and (int(keys.min()) < 0 or int(keys.max()) >= self.n_keys):
            raise ValueError(f"LoadState/SaveState({name!r}): keys must be in 0..{self.n_keys - 1} (ctx.n_clients)")
        return keys

    def load(self, name: str, key, default, rows):
        """Rows ``rows`` (a list of positions) read their keys; other rows get ``default``."""
        cols, saved = self._table(name, default)
        leaves = tree.leaves(default)
        n = torch.as_tensor(leaves[0]).shape[0]
        keys = self._keys(name, key, n)
        active = torch.zeros(n, dtype=torch.bool)
        active[rows] = True
        use = active & saved[keys]
        out = []
        for col, d in zip(cols, leaves):
            d = torch.as_tensor(d)
            got = col.index_select(0, keys)
            out.append(torch.where(use.view(-1, *([1] * (d.dim() - 1))), got, d))
        return tree.unflatten(default, iter(out))

    def save(self, name: str, key, value, rows) -> None:
        cols, saved = self._table(name, value)
        leaves = tree.leaves(value)
        n = torch.as_tensor(leaves[0]).shape[0]
        keys = self._keys(name, key, n)
        pos = torch.as_tensor(rows, dtype=torch.long)
        sel = keys.index_select(0, pos)
        if len(set(sel.tolist())) < len(sel):
            raise ValueError(f"SaveState({name!r}): two workers save the same key in one op")
        for col, v in zip(cols, leaves):
            col.index_copy_(0, sel, torch.as_tensor(v).index_select(0, pos).to(col.dtype))
        saved[sel] = True


__all__ = ["DictStore", "RowStore"]
