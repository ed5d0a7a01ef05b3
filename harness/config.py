"""The experiment spec: a YAML file, validated, expanded into one config per run.

A file holds the fields of :class:`RunConfig` plus two optional expansion keys:

* ``cases``: a list of partial configs; each is merged over the base (e.g. one per algorithm);
* ``grid``: ``{dotted.key: [values...]}``; every combination is a run (Cartesian product).

``--set key=value`` (values parsed as YAML) overrides the key in every expanded run (after the
case and the grid); ``--set grid.key=[...]`` changes the grid instead; ``--set cases.N.key=value``
sets the key in case ``N`` only (1 is the first case, as in the ``(case N)`` of error messages),
last of all: the more specific ``--set`` wins, whatever their order on the command line
(``--set n_workers=2 --set cases.4.n_workers=1``: case 4 gets 1, the others 2). Every mistake is one line naming the
field, e.g. ``algorithm.period: Input should be a valid integer (case 2)``: wrong types,
out-of-range or non-finite numbers, unknown keys at any level, broken YAML (in the file, in
``--set``, duplicate keys), plugins that fail to import. Nothing is run or written before a
config has passed all of it.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness import algorithms, capabilities, tasks, yamlio
from harness.models.compute import ComputeSpec
from harness.models.faults import FaultSpec
from harness.cost import NetworkSpec
from harness.calibration.slowdown import SlowdownSpec
from harness.checkpoint import CheckpointSpec
from harness.recording import DivergenceSpec
from harness.live import LiveSpec

BACKENDS = capabilities.SELECTABLE  # the registry's rows (harness/capabilities.py)


class ConfigError(ValueError):
    """A bad experiment config; the message is one line naming the field and the fix."""


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("run", description="the output folder is runs/<name> unless --out is given")
    algorithm: dict[str, Any]
    task: dict[str, Any] = Field(default_factory=lambda: {"name": "digits"})
    topology: dict[str, Any] | None = None
    n_workers: int = Field(16, ge=1)
    n_clients: int | None = Field(None, ge=1, description="[issue 22] federated clients played by the n_workers slots "
                                  "(data parts, speeds and keyed state per client); default: none, workers are the clients")
    steps: int = Field(200, ge=1)
    seed: int = Field(0, ge=0, lt=2**63, description="non-negative: numpy's SeedSequence rejects negative seeds")
    backend: Literal[BACKENDS] = "simpy"
    eval_every: int = Field(25, ge=1)
    log_every: int = Field(1, ge=1)
    target_acc: float = Field(0.9, gt=0, le=1)
    threads: int = Field(1, ge=1, description="torch intra-op threads; 1 is fastest for small per-worker ops")
    compute: ComputeSpec = Field(default_factory=ComputeSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    faults: FaultSpec | None = None
    slowdown: SlowdownSpec | None = Field(None, description="real backends: workers that sleep a drawn time per Grad (issue 17)")
    on_divergence: Literal["stop", "continue"] = Field(
        "stop", description="a non-finite loss or model ends the run as 'diverged' (stop) or only marks it (continue)")
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec,
                                       description="[issue 21] when a finite loss counts as diverged (loss_factor)")
    live: LiveSpec = Field(default_factory=LiveSpec, description="[issue 27] rows written while the run runs "
                           "(metrics.live.parquet) and live callbacks (tensorboard); not part of the run id")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec,
                                       description="[issue 27] when a run saves its state to resume after a kill "
                                                   "(every_steps, every_s, grace_s); not part of the run's identity")

    @field_validator("algorithm", "task", "topology", mode="before")
    @classmethod
    def _name_only(cls, v):
        return {"name": v} if isinstance(v, str) else v

    @field_validator("algorithm", "task", "topology")
    @classmethod
    def _name_is_text(cls, v, info):
        if v is not None and "name" in v and not isinstance(v["name"], str):
            raise ValueError(f"{info.field_name}.name: expected a name (text), got {v['name']!r}")
        return v

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v):
        if not v or v in (".", "..") or any(c in v for c in "/\\\0"):
            raise ValueError(f"{v!r} is not a folder name (the output goes to runs/<name>); "
                             "use letters, digits, '.', '-' or '_'")
        return v

    @property
    def run_id(self) -> str:
        parts = [self.algorithm["name"], str(self.task.get("partition", self.task["name"]))]
        if self.topology:
            parts.append(self.topology["name"])
        dump = self.model_dump()
        dump.pop("live", None)  # [issue 27] what is written while a run runs, never what it computes
        del dump["checkpoint"]  # when a run saves changes none of its numbers
        if dump["on_divergence"] == "stop":  # the default leaves run ids as they were before the field
            del dump["on_divergence"]
        if dump["divergence"] == DivergenceSpec().model_dump():  # [issue 21] likewise
            del dump["divergence"]
        for key in ("slowdown", "n_clients"):  # [issues 17, 22] new fields, unset: run ids stay as they were
            if dump[key] is None:
                del dump[key]
        if dump["compute"].get("worker_factors") is None:
            dump["compute"].pop("worker_factors", None)
        if not dump["network"].get("sync_delay_s"):
            dump["network"].pop("sync_delay_s", None)
        digest = hashlib.sha1(json.dumps(dump, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return "-".join([*parts, self.backend, f"s{self.seed}", digest])


def _line(e: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line ``dotted.field: message`` (the first error)."""
    err = e.errors()[0]
    loc = ".".join([*([prefix] if prefix else []), *(str(x) for x in err["loc"])]) or "config"
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if err["type"] == "extra_forbidden":
        msg += " (unknown field; check the spelling)"
    if msg.startswith((f"{loc}.", f"{loc}:")):  # a model-level check that names its own field
        return msg
    return f"{loc}: {msg}"


def _non_finite(v: Any, key: str) -> tuple[str, float] | None:
    """``(dotted key, value)`` of the first NaN or infinite number inside ``v``, if any."""
    if isinstance(v, float) and not math.isfinite(v):
        return key, v
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else ()
    for k, x in items:
        found = _non_finite(x, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None


def resolve(raw: dict) -> RunConfig:
    """Validate one run's config and fill in every default (algorithm and task included)."""
    try:
        return _resolve(raw)
    except ConfigError as e:
        raise ConfigError(suggest(str(e), raw)) from None


def _topology_names() -> list[str]:
    import topologies

    return list(topologies.NAMES)


_NAMED = {"algorithm.name": lambda: algorithms.ALGORITHMS, "task.name": lambda: tasks.TASKS,
          "topology.name": _topology_names, "backend": lambda: BACKENDS}


def suggest(line: str, raw: dict) -> str:
    """[issue 27] Did-you-mean for a misspelt algorithm, task, topology or backend name: the
    one-line error about that field gets the closest registered name (``difflib``), if any."""
    import difflib

    field = next((f for f in _NAMED if line.startswith(f + ":")), None)
    if field is None or not isinstance(raw, dict):
        return line
    top, _, sub = field.partition(".")
    word = raw.get(top)
    if sub and isinstance(word, dict):
        word = word.get("name")
    if not isinstance(word, str):
        return line
    close = difflib.get_close_matches(word, [str(c) for c in _NAMED[field]()], n=1, cutoff=0.6)
    if not close or close[0] == word:
        return line
    hint, at = f"did you mean {close[0]!r}?", line.find(repr(word))
    if at >= 0:
        at += len(repr(word))
        return f"{line[:at]} ({hint}){line[at:]}"
    return f"{field}: {hint} {line[len(field) + 1:].lstrip()}"


def _resolve(raw: dict) -> RunConfig:
    bad = _non_finite(raw, "")
    if bad:  # no field takes NaN or infinity (YAML .nan, .inf); before cross-field checks that would blame another
        raise ConfigError(f"{bad[0]}: expected a finite number, got {bad[1]!r}")
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_line(e)) from None
    alg = dict(cfg.algorithm)
    name = alg.pop("name", None)
    if name is None:
        raise ConfigError("algorithm.name: missing; name the algorithm, e.g. algorithm: {name: sync_sgd}")
    try:
        cfg.algorithm = {"name": name, **algorithms.validate_params(name, alg)}
        algorithms.check(name, cfg.algorithm, cfg.n_workers)
    except ValidationError as e:
        raise ConfigError(_line(e, "algorithm")) from None
    except ValueError as e:
        raise ConfigError(str(e).replace(": Value error, ", ": ", 1)) from None
    try:
        cfg.task = tasks.task_params(cfg.task).model_dump()
    except ValidationError as e:
        raise ConfigError(_line(e, "task")) from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    bad = _non_finite(cfg.model_dump(), "")
    if bad:  # again after validation: text such as 1e400 (YAML reads it as text) overflows to inf
        raise ConfigError(f"{bad[0]}: expected a finite number, got {bad[1]!r}")
    try:
        check_backend(cfg)
        cfg.network.check_workers(cfg.n_workers + (1 if algorithms.get(name).has_server else 0))
        if cfg.slowdown:  # [issue 17]
            cfg.slowdown.check_workers(cfg.n_workers)
        if cfg.n_clients is not None and cfg.n_clients < cfg.n_workers:
            raise ValueError(f"n_clients: {cfg.n_clients} clients for {cfg.n_workers} slots (n_workers); each round the "
                             "slots play distinct clients, so set n_clients >= n_workers")
        parts = cfg.task.get("parts")
        if cfg.n_clients is not None and parts is not None and parts != cfg.n_clients:
            raise ValueError(f"task.parts: {parts} data parts for n_clients = {cfg.n_clients}; a client is a data part: "
                             "leave task.parts unset or equal to n_clients")
        cfg.compute.check_workers(cfg.n_clients or cfg.n_workers)  # with clients, speeds are the clients'
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
        if "gossip" not in algorithms.requirements(name, cfg.algorithm):
            raise ConfigError(f"topology: algorithm {name!r} does not gossip, so the run would ignore the graph "
                              "(yet be labelled with it); remove topology: from this run (an algorithm that "
                              "gossips declares register(..., requires={'gossip'}))")
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
                         "(harness list topologies shows them)")
    if "faults" in features and cfg.backend in ("mpi", "torch"):
        raise ValueError(f"faults: crash injection is simulated (backend simpy or stacked); a {cfg.backend} run has "
                         "real failures only; remove faults: from the config")
    if "crash" in features and cfg.backend != "simpy":
        raise ValueError("faults.policy: 'continue' (permanent crashes) needs backend: simpy")
    capabilities.check(cfg.backend, features, f"algorithm {name!r}")


_DuplicateKey = yamlio.DuplicateKey  # [issue 21] YAML 1.2 scalars, bounded aliases: harness/yamlio.py
yaml_load = yamlio.load


def _yaml_problem(e: Exception) -> str:
    return str(getattr(e, "problem", None) or e).replace("\n", " ")


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


def _check_key(key: Any, where: str) -> str:
    """A dotted config key (``task.batch_size``): text, no empty component."""
    if not isinstance(key, str) or not key or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"{where}{key!r}: expected a dotted field name such as task.batch_size")
    return key


def parse_sets(sets: list[str]) -> list[tuple[str, Any]]:
    out = []
    for s in sets or []:
        if "=" not in s:
            raise ConfigError(f"--set {s}: expected key=value, e.g. --set steps=100")
        k, v = s.split("=", 1)
        k = _check_key(k.strip(), "--set ")
        if k in ("imports", "cases", "grid") or k.startswith("imports."):
            raise ConfigError(f"--set {k}: {k.split('.')[0]} cannot be set from the command line; edit the config "
                              "file (a grid axis is --set grid.KEY=[v1, v2], a key of one case --set cases.N.KEY=V)")
        if k.startswith("cases."):
            parts = k.split(".", 2)
            if len(parts) < 3 or parts[2].split(".")[0] in ("imports", "cases", "grid"):
                raise ConfigError(f"--set {k}: expected cases.N.KEY=VALUE (N: the case, 1 is the first; KEY: a field "
                                  "of that case's runs), e.g. --set cases.1.algorithm.period=16")
        try:
            out.append((k, yaml_load(v)))
        except _DuplicateKey as e:
            raise ConfigError(f"--set {k}: the value {v!r} has a {e.problem}; keep one") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {k}: the value {v!r} is not valid YAML ({_yaml_problem(e)}); close brackets "
                              "and quotes, e.g. --set 'steps=100' or --set 'grid.seed=[0, 1]'") from None
    return out


def expand(raw: dict, sets: list[str] | None = None) -> list[RunConfig]:
    """All runs described by a config mapping (cases x grid), ``--set`` applied last."""
    raw = copy.deepcopy(raw)
    cases = raw.pop("cases", None)
    grid = raw.pop("grid", None)
    has_cases = cases is not None
    cases = [{}] if cases is None else cases
    grid = {} if grid is None else grid
    if not isinstance(cases, list) or not cases or not all(isinstance(c, dict) for c in cases):
        raise ConfigError("cases: expected a non-empty list of mappings, e.g. cases: [{algorithm: sync_sgd}]")
    for ci, case in enumerate(cases):
        for key in ("imports", "cases", "grid"):
            if key in case:
                raise ConfigError(f"cases: {key}: belongs at the top level of the config, not inside case {ci + 1}")
    if not isinstance(grid, dict):
        raise ConfigError("grid: expected a mapping of dotted keys to lists, e.g. grid: {seed: [0, 1]}")
    for k in grid:
        _check_key(k, "grid: ")
    overrides, per_case = [], [[] for _ in cases]
    for k, v in parse_sets(sets):
        if k.startswith("grid."):
            grid[k[5:]] = v
        elif k.startswith("cases."):
            _, n, key = k.split(".", 2)
            per_case[_case_index(k, n, len(cases), has_cases)].append((key, v))
        else:
            overrides.append((k, v))
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"grid.{k}: expected a non-empty list of values, got {v!r}")
    runs = []
    for ci, case in enumerate(cases):
        for combo in itertools.product(*grid.values()) if grid else [()]:
            try:
                d = deep_merge(raw, case)
                for k, v in [*zip(grid, combo), *overrides, *per_case[ci]]:  # most specific last
                    set_dotted(d, k, v)
                runs.append(resolve(d))
            except ConfigError as e:
                raise ConfigError(f"{e} (case {ci + 1})" if len(cases) > 1 else str(e)) from None
    # a --set over a grid axis makes equal runs: run (and list) each once, in first-seen order
    unique: dict[str, RunConfig] = {}
    for r in runs:
        unique.setdefault(r.run_id, r)
    return list(unique.values())


def _case_index(key: str, n: str, count: int, has_cases: bool) -> int:
    """The 0-based index of case ``n`` (text, 1-based) of ``--set cases.N.KEY``; one line if none."""
    rest = key.split(".", 2)[2]
    if not has_cases:
        raise ConfigError(f"--set {key}: the config has no cases: list; set the field of its runs with "
                          f"--set {rest}=...")
    if not n.isdigit() or not 1 <= int(n) <= count:
        raise ConfigError(f"--set {key}: no case {n!r}; the config has {count} case(s), numbered 1..{count} "
                          f"(--set cases.1.{rest}=... is the first)")
    return int(n) - 1


def load(path: str | Path, sets: list[str] | None = None) -> list[RunConfig]:
    from harness import envvars

    try:  # [issue 21] the environment is an input too: a bad HARNESS_* is named before anything runs
        envvars.check_all()
    except envvars.EnvError as e:
        raise ConfigError(str(e)) from None
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"CONFIG: {str(path)!r} is a directory; give a YAML file, e.g. presets/demo.yaml")
    if not path.is_file():
        raise ConfigError(f"CONFIG: no such file {str(path)!r}; try presets/demo.yaml")
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: line {e.problem_mark.line + 1}: {e.problem}; keep one of them "
                          "(YAML would silently use the last)") from None
    except yamlio.AliasError as e:  # [issue 21] valid YAML, refused: recursive or exploding aliases
        raise ConfigError(f"{path}: line {e.problem_mark.line + 1}: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({_yaml_problem(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"CONFIG: cannot read {str(path)!r} as UTF-8 text ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of config fields at the top level")
    mods = raw.pop("imports", None)
    if isinstance(mods, str):  # imports: plugin.py  ==  imports: [plugin.py]
        mods = [mods]
    if mods is not None and (not isinstance(mods, list) or not all(isinstance(m, str) and m for m in mods)):
        raise ConfigError(f"imports: expected a list of module names or .py paths, e.g. imports: [my_algorithms.py]; "
                          f"got {mods!r}")
    for mod in mods or []:
        import_plugin(mod, path.parent)
    return expand(raw, sets)


def import_plugin(name: str, base: Path) -> None:
    """Import a module (dotted name, or a .py path relative to the config) that registers
    algorithms or tasks: ``imports: [my_algorithms.py]``. Any failure (missing, a syntax
    error, an exception while it runs, an exit: ``sys.exit``, ``os._exit``, any BaseException
    but Ctrl-C) is one ConfigError line naming the module; so is an import that takes longer
    than ``HARNESS_IMPORT_TIMEOUT_S`` (harness/plugin_guard.py)."""
    import importlib
    import importlib.util

    from harness import plugin_guard

    hint = "give a module name or a .py path relative to the config"
    spec = None
    if name.endswith(".py"):
        file = (base / name).resolve()
        spec = importlib.util.spec_from_file_location(file.stem, file) if file.is_file() else None
        if spec is None:
            raise ConfigError(f"imports: cannot import {name!r} (no such file {str(file)!r}); {hint}")
    try:
        with plugin_guard.guarded():
            if spec is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            else:
                importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not name.endswith(".py") and e.name and (name == e.name or name.startswith(e.name + ".")):
            raise ConfigError(f"imports: cannot import {name!r} ({e}); {hint}") from None
        raise ConfigError(f"imports: {name!r} failed to import a module it needs ({e}); install it or fix the "
                          "module") from None
    except SyntaxError as e:
        where = f"{Path(e.filename).name if e.filename else name} line {e.lineno}"
        raise ConfigError(f"imports: {name!r} has a syntax error at {where} ({e.msg}); fix the module") from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 - SystemExit, os._exit, a timeout, GeneratorExit, ...: one line
        raise ConfigError(f"imports: {name!r} {plugin_guard.describe(e)}; {plugin_guard.fix(e)}") from None
