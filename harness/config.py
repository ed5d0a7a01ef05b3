"""The experiment spec: a YAML file, validated, expanded into one config per run.

A file holds the fields of :class:`RunConfig` plus two optional expansion keys:

* ``cases``: a list of partial configs; each is merged over the base (e.g. one per algorithm);
* ``grid``: ``{dotted.key: [values...]}``; every combination is a run (Cartesian product).

``--set key=value`` (values parsed as YAML) overrides every expanded run last;
``--set grid.key=[...]`` changes the grid instead. Every mistake is one line naming the
field, e.g. ``algorithm.period: Input should be a valid integer (case 2)``.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness import algorithms, capabilities, tasks
from simulators.compute import ComputeSpec
from simulators.faults import FaultSpec
from harness.cost import NetworkSpec

BACKENDS = ("simpy", "stacked", "mpi", "torch")  # mpi, torch: real backends (harness/backends/)


class ConfigError(ValueError):
    """A bad experiment config; the message is one line naming the field and the fix."""


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "run"
    algorithm: dict[str, Any]
    task: dict[str, Any] = Field(default_factory=lambda: {"name": "digits"})
    topology: dict[str, Any] | None = None
    n_workers: int = Field(16, ge=1)
    steps: int = Field(200, ge=1)
    seed: int = 0
    backend: Literal[BACKENDS] = "simpy"
    eval_every: int = Field(25, ge=1)
    log_every: int = Field(1, ge=1)
    target_acc: float = Field(0.9, gt=0, le=1)
    threads: int = Field(1, ge=1, description="torch intra-op threads; 1 is fastest for small per-worker ops")
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    faults: FaultSpec | None = None
    on_divergence: Literal["stop", "continue"] = Field(
        "stop", description="a non-finite loss or model ends the run as 'diverged' (stop) or only marks it (continue)")

    @field_validator("algorithm", "task", "topology", mode="before")
    @classmethod
    def _name_only(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @property
    def run_id(self) -> str:
        parts = [self.algorithm["name"], str(self.task.get("partition", self.task["name"]))]
        if self.topology:
            parts.append(self.topology["name"])
        dump = self.model_dump()
        if dump["on_divergence"] == "stop":  # the default leaves run ids as they were before the field
            del dump["on_divergence"]
        digest = hashlib.sha1(json.dumps(dump, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return "-".join([*parts, self.backend, f"s{self.seed}", digest])


def resolve(raw: dict) -> RunConfig:
    """Validate one run's config and fill in every default (algorithm and task included)."""
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "config"
        hint = " (unknown field; check the spelling)" if err["type"] == "extra_forbidden" else ""
        raise ConfigError(f"{loc}: {err['msg']}{hint}") from None
    alg = dict(cfg.algorithm)
    name = alg.pop("name", None)
    try:
        cfg.algorithm = {"name": name, **algorithms.validate_params(name, alg)}
        algorithms.check(name, cfg.algorithm, cfg.n_workers)
        cfg.task = tasks.task_params(cfg.task).model_dump()
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(f"task.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        check_backend(cfg)
        cfg.network.check_workers(cfg.n_workers + (1 if algorithms.get(name).has_server else 0))
        if cfg.faults:
            cfg.faults.check_workers(cfg.n_workers)
            if cfg.faults.policy == "continue" and cfg.topology is not None:
                raise ValueError("faults.policy: permanent crashes are not modelled for gossip yet; "
                                 "use policy: wait, or model absent nodes with topology churn")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.topology is not None:
        import topologies

        try:
            topologies.build(cfg.topology, cfg.n_workers, cfg.seed)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return cfg


def check_backend(cfg: RunConfig) -> None:
    """The run's features (its algorithm's, its config's) against what its backend supports
    (:mod:`harness.capabilities`): one line before anything starts."""
    name = cfg.algorithm["name"]
    features = algorithms.requirements(name, cfg.algorithm) | capabilities.run_features(cfg)
    if "server" in features and cfg.backend == "stacked":
        raise ValueError(f"backend: {name!r} is asynchronous (server and worker roles); the stacked backend runs "
                         "lock-step algorithms only; use backend: simpy")
    if "gossip" in features and cfg.topology is None:
        raise ValueError(f"topology: algorithm {name!r} gossips over a graph; set topology: {{name: ring}} "
                         "(harness topology --list shows them)")
    if "faults" in features and cfg.backend in ("mpi", "torch"):
        raise ValueError(f"faults: crash injection is simulated (backend simpy or stacked); a {cfg.backend} run has "
                         "real failures only; remove faults: from the config")
    if "crash" in features and cfg.backend != "simpy":
        raise ValueError("faults.policy: 'continue' (permanent crashes) needs backend: simpy")
    capabilities.check(cfg.backend, features, f"algorithm {name!r}")


def set_dotted(d: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    for k in path:
        if isinstance(d.get(k), str):
            d[k] = {"name": d[k]}
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{key}: {k} is not a mapping, cannot set {last} inside it")
    d[last] = value


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_sets(sets: list[str]) -> list[tuple[str, Any]]:
    out = []
    for s in sets or []:
        if "=" not in s:
            raise ConfigError(f"--set {s}: expected key=value, e.g. --set steps=100")
        k, v = s.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v)))
    return out


def expand(raw: dict, sets: list[str] | None = None) -> list[RunConfig]:
    """All runs described by a config mapping (cases x grid), ``--set`` applied last."""
    raw = copy.deepcopy(raw)
    cases = raw.pop("cases", None) or [{}]
    grid = raw.pop("grid", None) or {}
    if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
        raise ConfigError("cases: expected a list of mappings, e.g. cases: [{algorithm: sync_sgd}]")
    if not isinstance(grid, dict):
        raise ConfigError("grid: expected a mapping of dotted keys to lists, e.g. grid: {seed: [0, 1]}")
    overrides = []
    for k, v in parse_sets(sets):
        if k.startswith("grid."):
            grid[k[5:]] = v
        else:
            overrides.append((k, v))
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"grid.{k}: expected a non-empty list of values, got {v!r}")
    runs = []
    for ci, case in enumerate(cases):
        for combo in itertools.product(*grid.values()) if grid else [()]:
            d = deep_merge(raw, case)
            for k, v in [*zip(grid, combo), *overrides]:
                set_dotted(d, k, v)
            try:
                runs.append(resolve(d))
            except ConfigError as e:
                raise ConfigError(f"{e} (case {ci + 1})" if len(cases) > 1 else str(e)) from None
    return runs


def load(path: str | Path, sets: list[str] | None = None) -> list[RunConfig]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CONFIG: no such file {str(path)!r}; try presets/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of config fields at the top level")
    for mod in raw.pop("imports", None) or []:
        import_plugin(mod, path.parent)
    return expand(raw, sets)


def import_plugin(name: str, base: Path) -> None:
    """Import a module (dotted name, or a .py path relative to the config) that registers
    algorithms or tasks: ``imports: [my_algorithms.py]``."""
    import importlib
    import importlib.util

    try:
        if name.endswith(".py"):
            file = (base / name).resolve()
            spec = importlib.util.spec_from_file_location(file.stem, file)
            if spec is None or not file.is_file():
                raise FileNotFoundError(file)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        else:
            importlib.import_module(name)
    except (ImportError, FileNotFoundError) as e:
        raise ConfigError(f"imports: cannot import {name!r} ({e}); give a module name or a .py path relative to the config") from None
