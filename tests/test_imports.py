"""Imports point one way: no cycles between our modules, light modules stay light.

The import graph is read statically (``ast``) from every ``.py`` file of our packages.
Only *module-level* imports count (those that run when the module is imported: top-level
statements, also inside top-level ``if``/``try``/``with``/class bodies), because those are what
make a cycle fail half-initialised; imports inside functions and under ``if TYPE_CHECKING:``
do not. ``pkg/__init__.py`` is module ``pkg``; ``from pkg import sub`` is an edge to
``pkg.sub`` when ``sub`` is a submodule, else to ``pkg``. Importing ``pkg.sub`` from outside
``pkg`` also runs ``pkg/__init__`` first, so that is an edge to ``pkg`` too; from inside ``pkg``
it is not (``pkg`` is already being imported), so a package's ``__init__`` may import its own
submodules. That ``results`` loads nothing of the other packages *at import time* is
tested in tests/test_results.py; here it is checked for every import, inside functions too.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "topologies", "simulators", "results", "slurm")


@dataclass
class ImportGraph:
    """Modules -> the project modules (edges, with ``file:line``) and outside top-level
    packages they import at module level."""

    modules: dict[str, Path]
    edges: dict[tuple[str, str], str] = field(default_factory=dict)
    outside: dict[str, set[str]] = field(default_factory=dict)

    def digraph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.modules)
        g.add_edges_from(self.edges)
        return g

    def cycles(self) -> list[str]:
        """One cycle per strongly connected component, ``a -> b (a.py:3) -> a (b.py:1)``."""
        g, out = self.digraph(), []
        for comp in sorted(nx.strongly_connected_components(g), key=min):
            if len(comp) > 1:
                cyc = nx.find_cycle(g.subgraph(comp), source=min(comp))
                out.append(cyc[0][0] + "".join(f" -> {v} ({self.edges[u, v]})" for u, v in cyc))
        return out


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(body: list[ast.stmt]):
    """The Import/ImportFrom nodes run on import: not in functions or ``if TYPE_CHECKING``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from module_level_imports(node.orelse)
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                for child in getattr(node, name, None) or []:
                    yield from module_level_imports(getattr(child, "body", None) if isinstance(
                        child, (ast.ExceptHandler, ast.match_case)) else [child])


def _targets(node: ast.Import | ast.ImportFrom, me: str, is_pkg: bool, modules) -> list[str]:
    """Full dotted names ``node`` imports (submodule if one exists, else the module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = me.split(".") if is_pkg else me.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]


def _known_prefix(name: str, modules) -> str | None:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules:
            return ".".join(parts[:k])
    return None


def _outer_packages(target: str, me: str) -> list[str]:
    """Packages that importing ``target`` runs first, less those ``me`` already sits in."""
    parts, mine = target.split("."), me.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts)) if parts[:k] != mine[:k]]


def import_graph(root: Path = ROOT, packages=PACKAGES) -> ImportGraph:
    files = [p for pkg in packages if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))]
    graph = ImportGraph({module_name(p, root): p for p in files})
    for me, path in graph.modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph.outside[me] = set()
        for node in module_level_imports(tree.body):
            for name in _targets(node, me, path.name == "__init__.py", graph.modules):
                target = _known_prefix(name, graph.modules)
                if target is None:
                    graph.outside[me].add(name.split(".")[0])
                elif target != me:
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    graph.edges.setdefault((me, target), where)
                    for pkg in (p for p in _outer_packages(target, me) if p in graph.modules):
                        graph.edges.setdefault((me, pkg), f"{where}, runs {pkg.replace('.', '/')}/__init__")
    return graph


# ---------------------------------------------------------------- the checker itself


def test_checker_finds_cycles_and_ignores_lazy_imports(tmp_path):
    files = {
        "p/__init__.py": "from p.a import A\n",                                # own submodule: fine
        "p/a.py": "import os\nfrom . import b\nA = 1\n",                        # p.a -> p.b
        "p/b.py": "try:\n    from p.a import A\nexcept ImportError:\n    pass\n",  # p.b -> p.a: a cycle
        "p/c.py": "import q.t\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p import d\n"
                  "def f():\n    from p import d\n",                          # only q.t (and q) count
        "p/d.py": "import p.c\n",
        "q/__init__.py": "from q.s import S\n",
        "q/s.py": "from p.d import *\nS = 1\n",                               # -> p.d and p/__init__
        "q/t.py": "T = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    g = import_graph(tmp_path, ("p", "q"))
    assert set(g.edges) == {("p", "p.a"), ("p.a", "p.b"), ("p.b", "p.a"), ("p.c", "q.t"), ("p.c", "q"),
                            ("p.d", "p.c"), ("q", "q.s"), ("q.s", "p.d"), ("q.s", "p")}
    assert g.cycles() == ["p.a -> p.b (p/a.py:2) -> p.a (p/b.py:2)",
                          "p.c -> q (p/c.py:1, runs q/__init__) -> q.s (q/__init__.py:1) -> p.d (q/s.py:1)"
                          " -> p.c (p/d.py:1)"]
    assert g.outside["p.a"] == {"os"} and g.outside["p.c"] == {"typing"}


# ---------------------------------------------------------------- the project


def test_no_import_cycles_between_modules():
    cycles = import_graph().cycles()
    assert not cycles, ("module-level import cycles (move the shared piece into a lower module, "
                        "or import inside the function that needs it): " + "; ".join(cycles))


def test_harness_config_does_not_load_simpy():
    code = "import sys, harness.config; print('simpy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    if res.stdout.strip() == "True":
        g = import_graph()
        heavy = [m for m, names in g.outside.items() if "simpy" in names]
        paths = nx.single_source_shortest_path(g.digraph(), "harness.config")
        via = [" -> ".join(paths[m]) for m in heavy if m in paths]
        raise AssertionError("import harness.config loads simpy (configs must be cheap to validate); "
                             f"module-level path: {'; '.join(via) or 'none found'}")


def test_results_imports_nothing_of_the_other_packages_anywhere():
    bad = []
    for path in sorted((ROOT / "results").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in ("harness", "simulators", "topologies")]
    assert not bad, "results must stay usable on its own (notebooks): " + "; ".join(bad)


def package_cycles(graph: ImportGraph) -> list[str]:
    """Cycles between top-level packages (each edge named by one module-level import)."""
    g, where = nx.DiGraph(), {}
    for (a, b), w in graph.edges.items():
        pa, pb = a.split(".")[0], b.split(".")[0]
        if pa != pb:
            g.add_edge(pa, pb)
            where.setdefault((pa, pb), f"{a} -> {b} ({w})")
    return [" ; ".join(where[u, v] for u, v in nx.find_cycle(g.subgraph(c), source=min(c)))
            for c in nx.strongly_connected_components(g) if len(c) > 1]


def test_checker_finds_cycles_between_packages(tmp_path):
    for name, text in {"p/__init__.py": "", "p/a.py": "import q.b\n", "q/__init__.py": "", "q/b.py": "x = 1\n",
                       "q/c.py": "from p import a\n"}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert not import_graph(tmp_path, ("p", "q")).cycles()  # no module cycle ...
    assert len(package_cycles(import_graph(tmp_path, ("p", "q")))) == 1  # ... but p <-> q


def test_no_import_cycles_between_packages():
    cycles = package_cycles(import_graph())
    assert not cycles, ("module-level imports make the packages import each other (system models live in "
                        "harness.models so that harness never imports simulators): " + "; ".join(cycles))


def test_a_transport_moves_bytes_only():
    g = import_graph()
    for t in ("harness.backends.transport", "harness.backends.mpi", "harness.backends.torchdist",
              "harness.backends.loopback"):  # the supervisor is started by the runner, not a transport
        deps = {b for (a, b) in g.edges if a == t}
        assert not deps & {"harness.recording", "harness.backends.supervisor", "harness.backends.rank"}, (t, deps)
