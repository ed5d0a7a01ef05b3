"""One run assembly for every backend: what a config turns into before any op runs.

``assemble(cfg)`` builds the parts both the simulated backends (:func:`harness.experiment.build`)
and a real rank (:class:`harness.backends.rank.RankDriver`) need, the same way: the algorithm
and its hyper-parameters, the task (model and data, sharded over the workers), the minibatch
sampler, the topology and the :class:`~harness.algorithms.Ctx`. Each backend adds only what is
its own (a recorder, clocks, a transport), so a change here reaches simulations and real runs
alike and they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from harness import algorithms
from harness.algorithms import Ctx
from harness.tasks import Sampler, Task, build_task


@dataclass
class Assembly:
    algorithm: Callable
    params: dict
    ctx: Ctx
    task: Task
    sampler: Sampler
    topology: Any = None

    @property
    def server(self) -> bool:
        """Whether the algorithm runs a server on rank 0 (roles)."""
        return bool(getattr(self.algorithm, "has_server", False))


def param_specs(task: Task) -> tuple:
    """``((name, shape), ...)`` of the task's parameter tensors, in flat-vector order: a module
    task's own names and shapes, else one entry per segment (``segment0``, ...)."""
    flat = getattr(task, "flat", None)
    if flat is not None:
        return tuple(zip(flat.names, flat.shapes))
    return tuple((f"segment{k}", (e - s,)) for k, (s, e) in enumerate(task.segments))


def assemble(cfg) -> Assembly:
    """The run's algorithm, task, sampler, topology and context for ``cfg`` (validated)."""
    import topologies

    torch.set_num_threads(cfg.threads)
    spec = cfg.task if not cfg.n_clients else {**cfg.task, "parts": cfg.n_clients}  # a client is a data part
    task = build_task(spec, cfg.n_workers, cfg.seed)
    ctx = Ctx(cfg.n_workers, cfg.steps, cfg.seed, segments=tuple(task.segments), params=param_specs(task),
              n_clients=cfg.n_clients or 0, part_sizes=tuple(len(s) for s in task.shards), batch_size=task.batch_size)
    return Assembly(algorithm=algorithms.get(cfg.algorithm["name"]),
                    params={k: v for k, v in cfg.algorithm.items() if k != "name"}, ctx=ctx, task=task,
                    sampler=Sampler(task.shards, task.batch_size, cfg.seed),
                    topology=topologies.build(cfg.topology, cfg.n_workers, cfg.seed) if cfg.topology else None)


__all__ = ["Assembly", "assemble", "param_specs"]
