"""Tasks: model + data + loss + evaluation + partitioning. ``digits`` is the default.

Built in: ``digits`` (scikit-learn's 8x8 digits, MLP on a flat vector), ``quadratic``
(hand-checkable), ``cifar10`` (ResNet-20 on the CIFAR-10 python version) and ``text`` (a
small GPT on any UTF-8 file). Bring your own with :func:`register_task` in a module listed
in a config's ``imports:``; a task wrapping a ``torch.nn.Module`` subclasses
:class:`ModuleTask` (:mod:`harness.tasks.module`).
"""
from __future__ import annotations

from harness.tasks.base import Sampler, Task, TaskParams
from harness.tasks.cifar10 import Cifar10Task
from harness.tasks.digits import DigitsTask
from harness.tasks.module import ModuleParams, ModuleTask, TaskDataError
from harness.tasks.quadratic import QuadraticTask
from harness.tasks.text import TextTask

TASKS: dict[str, type[Task]] = {"digits": DigitsTask, "quadratic": QuadraticTask, "cifar10": Cifar10Task,
                                "text": TextTask}


def register_task(name: str):
    """Class decorator: make a :class:`Task` subclass available as ``task: {name: NAME}``.
    Its ``Params`` (a :class:`TaskParams` subclass) should declare ``name: Literal[NAME]``."""

    def deco(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}): {cls!r} is not a harness.tasks.Task subclass")
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def task_params(spec: dict) -> TaskParams:
    """Validate a task spec (``{"name": ..., **params}``) against the task's own fields."""
    name = spec.get("name", "digits")
    if name not in TASKS:
        raise ValueError(f"task.name: unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name].Params.model_validate({**spec, "name": name})


def build_task(spec: dict, n_workers: int, seed: int) -> Task:
    params = task_params(spec)
    return TASKS[params.name](params, n_workers, seed)


__all__ = ["ModuleParams", "ModuleTask", "Sampler", "Task", "TaskDataError", "TaskParams", "TASKS", "build_task",
           "register_task", "task_params"]
