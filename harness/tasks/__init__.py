"""Tasks: model + data + loss + evaluation + partitioning. ``digits`` is the default."""
from __future__ import annotations

from harness.tasks.base import Sampler, Task, TaskParams
from harness.tasks.digits import DigitsTask
from harness.tasks.quadratic import QuadraticTask

TASKS: dict[str, type[Task]] = {"digits": DigitsTask, "quadratic": QuadraticTask}


def task_params(spec: dict) -> TaskParams:
    """Validate a task spec (``{"name": ..., **params}``) against the task's own fields."""
    name = spec.get("name", "digits")
    if name not in TASKS:
        raise ValueError(f"task.name: unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name].Params.model_validate({**spec, "name": name})


def build_task(spec: dict, n_workers: int, seed: int) -> Task:
    params = task_params(spec)
    return TASKS[params.name](params, n_workers, seed)


__all__ = ["Sampler", "Task", "TASKS", "build_task", "task_params"]
