"""The import structure of ``tabad``: no cycles between modules, no private names used across modules.

Both rules are checked statically with :mod:`ast`, so they hold for every code path, not only for the
ones a test happens to run: an import inside a function counts like one at the top of a module (a
lazy import hides a cycle from ``import tabad.x`` but not from the design, and it breaks as soon as
the import order changes). Imports under ``if TYPE_CHECKING:`` count too, and so does a string
``"tabad.x.y:name"``: that is how the registries (methods, backbones, dataset layouts) name what
they import with :mod:`importlib` on use.

How imports are resolved:

* ``import tabad.a.b`` and ``from tabad.a import b`` depend on module ``tabad.a.b`` when that is a
  module (or package), else ``from tabad.a import b`` depends on ``tabad.a`` (``b`` is a name in it);
* a relative import is resolved against the importing module's package first;
* importing ``tabad.a.b`` also runs ``tabad/a/__init__.py``, but that implicit child -> parent edge is
  not counted: every submodule has it, so counting it would make every package whose ``__init__``
  re-exports one of its submodules look cyclic. An *explicit* import of the parent package by the
  child (``from tabad.a import X`` inside ``tabad/a/b.py``, where ``X`` is defined in the
  ``__init__``) does count: then the ``__init__`` and its submodule really need each other.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "tabad"

#: Imports that close a cycle outside ``tabad.datasets`` and are someone else's to remove:
#: ``(importer, imported) -> why``. The cycle test ignores these edges; it fails on any other
#: cycle, and also when a listed edge is gone or no longer closes a cycle, so the list cannot
#: go stale.
ALLOWED_CYCLE_EDGES: dict[tuple[str, str], str] = {}

#: ``(importing module, imported module, name)`` private imports outside ``tabad.datasets`` that
#: are someone else's to remove (none today); the test fails on any other, and on a listed one
#: that is gone.
ALLOWED_PRIVATE: set[tuple[str, str, str]] = set()


# --------------------------------------------------------------------------- the graph


@dataclass(frozen=True)
class Import:
    """One dependency of ``source`` on ``target`` (a ``tabad`` module), at ``line``."""

    source: str
    target: str
    line: int
    names: tuple[str, ...] = ()  # the names taken with ``from target import ...``


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """Every module and package of ``tabad``, by dotted name."""
    return {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _existing(dotted: str) -> str | None:
    """``dotted`` itself or its longest prefix that is a ``tabad`` module."""
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules():
            return name
        parts.pop()
    return None


def _absolute(node: ast.ImportFrom, source: str) -> str:
    if not node.level:
        return node.module or ""
    package = source if _is_package(source) else source.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


#: ``"tabad.x.y:name"``, a registry's reference to what it imports on use.
_REFERENCE = re.compile(rf"^({PACKAGE}(?:\.\w+)+):\w+$")


@lru_cache(maxsize=None)
def imports_of(source: str) -> tuple[Import, ...]:
    """Every ``tabad`` import in module ``source``, at any depth (functions, methods, branches)."""
    tree = ast.parse(modules()[source].read_text(encoding="utf-8"), filename=str(modules()[source]))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _REFERENCE.match(node.value)
            target = _existing(match.group(1)) if match else None
            if target is not None:
                found.append(Import(source, target, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    target = _existing(alias.name)
                    if target is not None:
                        found.append(Import(source, target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, source)
            if not (module == PACKAGE or module.startswith(PACKAGE + ".")):
                continue
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                if submodule in modules():
                    found.append(Import(source, submodule, node.lineno))
                else:
                    plain.append(alias.name)
            target = _existing(module)
            if plain and target is not None:
                found.append(Import(source, target, node.lineno, tuple(plain)))
    return tuple(i for i in found if i.target != source)


def graph(prefix: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules it imports, both restricted to ``prefix`` (a package name)."""
    inside = {m for m in modules() if m == prefix or m.startswith(prefix + ".")}
    return {m: {i.target for i in imports_of(m) if i.target in inside} for m in sorted(inside)}


def strongly_connected(g: dict[str, set[str]]) -> list[frozenset[str]]:
    """The components of ``g`` with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(frozenset(component))
    return out


def one_cycle(g: dict[str, set[str]], component: frozenset[str]) -> list[str]:
    """A concrete cycle through ``component``, as ``[a, b, ..., a]``, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(g[node] & component):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def describe(g: dict[str, set[str]], component: frozenset[str]) -> str:
    cycle = one_cycle(g, component)
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        lines = sorted({i.line for i in imports_of(a) if i.target == b})
        where = modules()[a].relative_to(SRC.parent)
        steps.append(f"  {a} -> {b}  ({where}:{','.join(map(str, lines))})")
    return f"cycle among {sorted(component)}:\n" + "\n".join(steps)


# --------------------------------------------------------------------------- private names


def private_imports(source: str) -> list[tuple[Import, str]]:
    """``(import, name)`` for each underscore name ``source`` takes from another ``tabad`` module.

    Covers ``from tabad.x import _name``, importing a private module ``tabad.x._mod``, and
    ``mod._name`` attribute access on a ``tabad`` module bound by an import (``from tabad.x import
    mod`` or ``import tabad.x.mod as mod``). Dunder names (``__version__``) are public.
    """
    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found: list[tuple[Import, str]] = []
    for imp in imports_of(source):
        found += [(imp, n) for n in imp.names if private(n)]
        if any(private(part) for part in imp.target.split(".")) and imp.target.rpartition(".")[0] != source:
            found.append((imp, imp.target.rpartition(".")[2]))
    tree = ast.parse(modules()[source].read_text(encoding="utf-8"))
    bound: dict[str, str] = {}  # local name -> tabad module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, source)
            for alias in node.names:
                if f"{module}.{alias.name}" in modules():
                    bound[alias.asname or alias.name] = f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules():
                    bound[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            if private(node.attr) and bound[node.value.id] != source:
                found.append((Import(source, bound[node.value.id], node.lineno, (node.attr,)), node.attr))
    return found


def all_private_imports(prefix: str = PACKAGE) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for m in modules():
        if m == prefix or m.startswith(prefix + "."):
            for imp, name in private_imports(m):
                out.setdefault((imp.source, imp.target, name), imp.line)
    return out


# --------------------------------------------------------------------------- tests


def test_the_graph_sees_lazy_and_relative_imports():
    # A sanity check of the checker itself on modules whose imports are known.
    assert "tabad.errors" in graph()["tabad.datasets.readers"]
    assert "tabad.datasets.readers" in graph()["tabad.benchmark"]  # imported inside run_benchmark
    assert "tabad.datasets.sample" in graph()["tabad.datasets"]  # the package re-exports its records
    assert "tabad.datasets.mvtec" in graph()["tabad.datasets.layouts"]  # a registry reference
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (component,) = strongly_connected(cyclic)
    assert component == {"a", "b", "c"} and one_cycle(cyclic, component) == ["a", "b", "c", "a"]


def test_datasets_has_no_import_cycle():
    g = graph(f"{PACKAGE}.datasets")
    problems = [describe(g, c) for c in strongly_connected(g)]
    assert not problems, "\n".join(problems)


def test_package_has_no_import_cycle_but_the_listed_ones():
    full = graph()
    g = {m: targets - {t for (s, t) in ALLOWED_CYCLE_EDGES if s == m} for m, targets in full.items()}
    problems = [describe(g, c) for c in strongly_connected(g)]
    assert not problems, "\n".join(problems)
    # every allowed edge must still exist and still close a cycle in the full graph
    cyclic = strongly_connected(full)
    stale = [edge for edge in ALLOWED_CYCLE_EDGES
             if edge[1] not in full.get(edge[0], set()) or not any(set(edge) <= c for c in cyclic)]
    assert not stale, f"these edges no longer close a cycle; remove them from ALLOWED_CYCLE_EDGES: {stale}"


def _format_private(found: dict[tuple[str, str, str], int]) -> str:
    return "\n".join(f"  {modules()[s].relative_to(SRC.parent)}:{line}: {name} from {t}"
                     for (s, t, name), line in sorted(found.items()))


def test_datasets_imports_no_private_name():
    found = all_private_imports(f"{PACKAGE}.datasets")
    assert not found, "private names used across modules:\n" + _format_private(found)


def test_package_imports_no_private_name_but_the_listed_ones():
    found = all_private_imports()
    new = {k: v for k, v in found.items() if k not in ALLOWED_PRIVATE}
    assert not new, "private names used across modules:\n" + _format_private(new)
    gone = sorted(ALLOWED_PRIVATE - set(found))
    assert not gone, f"these allowed private imports are gone; remove them from ALLOWED_PRIVATE: {gone}"

