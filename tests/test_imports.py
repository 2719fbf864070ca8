"""The package's import structure (docs/architecture.md): every module imports; no import cycles
among the package's modules (module- and function-level imports, ``if TYPE_CHECKING:`` blocks
excluded); ``hybridlsm.config`` is a leaf that imports nothing of the package."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import hybridlsm

PACKAGE = "hybridlsm"
ROOT = Path(hybridlsm.__path__[0])
#: Modules that are scripts: importing ``hybridlsm.__main__`` runs the command line.
SCRIPTS = {f"{PACKAGE}.__main__"}


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """name -> source file of every module of the package at ``root`` (the package itself, its
    subpackages' ``__init__.py`` and plain modules), found with pkgutil without importing them."""
    out = {package: root / "__init__.py"}
    for info in pkgutil.iter_modules([str(root)]):
        name = f"{package}.{info.name}"
        if info.ispkg:
            out.update(package_modules(root / info.name, name))
        else:
            out[name] = root / f"{info.name}.py"
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")  # fmt: skip


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def imports_of(name: str, source: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports, at module level or inside functions,
    outside ``if TYPE_CHECKING:`` bodies.

    ``from a.b import c`` imports ``a.b`` and, when it is a module, ``a.b.c``; importing a module also
    runs its packages' ``__init__`` (``a``), which counts unless that package encloses ``name``
    (then it is already being imported: a submodule importing a sibling is no cycle)."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    is_package = modules[name].name == "__init__.py"
    enclosing = set(_ancestors(name)) | {name}
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets.add(prefix)
            targets |= {f"{prefix}.{a.name}" for a in node.names}
    out = set()
    for t in targets:
        if t in modules:
            out |= {t, *(a for a in _ancestors(t) if a in modules)}
    return out - enclosing


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: imports_of(name, path.read_text(encoding="utf-8"), modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component with more than one module
    (Tarjan), each through the component's first module in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:
        members, start = set(comp), comp[0]
        # shortest path start -> ... -> start inside the component (breadth first)
        previous: dict[str, str] = {}
        frontier, end = [start], None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        end = v
                        break
                    if w not in previous:
                        previous[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(previous[path[-1]])
        cycles.append([start, *reversed(path[:-1]), start])  # end != start: no module imports itself
    return cycles


MODULES = package_modules(ROOT, PACKAGE)


def test_the_walk_finds_the_package():
    assert len(MODULES) > 40
    for name in ("hybridlsm.config", "hybridlsm.domain", "hybridlsm.domain.build", "hybridlsm.models.hybrid",
                 "hybridlsm.physics.lad", "hybridlsm.neural._mlp", "hybridlsm.__main__"):  # fmt: skip
        assert name in MODULES, name
    assert all(p.is_file() for p in MODULES.values())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports(name):
    if name in SCRIPTS:  # importing it would run the command line: it must at least compile
        compile(MODULES[name].read_text(encoding="utf-8"), str(MODULES[name]), "exec")
        return
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve() == MODULES[name].resolve()


def test_no_import_cycles():
    graph = import_graph(MODULES)
    cycles = import_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_config_is_a_leaf():
    graph = import_graph(MODULES)
    assert graph["hybridlsm.config"] == set(), f"hybridlsm.config imports {sorted(graph['hybridlsm.config'])}"
    # and at run time: importing it loads no other module of the package (the package __init__ only)
    code = "import sys, hybridlsm.config; print(sorted(m for m in sys.modules if m.startswith('hybridlsm.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['hybridlsm.config']", out.stdout + out.stderr


# ------------------------------------------------------- the checker itself, on a toy package


def _toy(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / "toy" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package_modules(tmp_path / "toy", "toy")


def test_checker_resolves_relative_imports_and_skips_type_checking(tmp_path):
    modules = _toy(tmp_path, {
        "__init__.py": "from .sub import helper\n",
        "core.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.helper import H\n",
        "sub/__init__.py": "from . import helper\n",
        "sub/helper.py": "def f():\n    from ..core import x\n    from . import other\n",
        "sub/other.py": "import toy.core\n",
    })  # fmt: skip
    graph = import_graph(modules)
    assert graph == {
        "toy": {"toy.sub", "toy.sub.helper"},
        "toy.core": set(),  # the TYPE_CHECKING import is skipped
        "toy.sub": {"toy.sub.helper"},
        "toy.sub.helper": {"toy.core", "toy.sub.other"},  # function level counts; toy.sub encloses it
        "toy.sub.other": {"toy.core"},
    }
    assert import_cycles(graph) == []


def test_checker_reports_a_cycle_through_a_package_init(tmp_path):
    modules = _toy(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import g\n",
        "b/__init__.py": "from .c import h\n",
        "b/c.py": "def h():\n    from ..a import k\n",
        "d.py": "import toy.a\n",
    })  # fmt: skip
    cycles = import_cycles(import_graph(modules))
    assert cycles == [["toy.a", "toy.b", "toy.b.c", "toy.a"]]
