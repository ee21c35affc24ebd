"""The import graph of backend/ and strategies/ has no cycles and runs one way.

Every module is parsed with :mod:`ast`; every ``import`` and ``from ... import`` counts, at module
level, inside functions and under ``if TYPE_CHECKING:`` alike (an import inside a function to dodge
a loop still is a loop, and a type-only import against the layers still ties the lower layer to the
upper one). ``from package import name`` is an edge to ``package.name`` when that is a module, to
the package itself otherwise; relative imports are resolved against the importing module. The
implicit import of a package's ``__init__`` when one of its modules is imported is not an edge.

The layers, highest first; a module may import its own layer's modules and those of lower layers:

    cli -> api -> runtime -> loop, diagnosis, serving -> model, labelstudio, store -> settings

Settings also holds the base helpers ``backend.files`` and ``backend.logs``; ``backend.simulate``,
the loop run offline, sits with the loop; ``strategies`` is below all of backend and imports
nothing from it.
Within the model/labelstudio/store layer the store imports neither the model (torch) nor the
label-config parsing of ``backend.labelstudio``; within the loop's layer the loop imports neither
``backend.serving`` (which imports the loop) nor ``backend.diagnosis`` (computed from what the
cycle produced: the runtime hands the cycle its record step). More generally two folders of one
layer never import each other both ways: one of them is the lower, even where no module loop
shows it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend", "strategies")
#: Not application code: alembic's revisions are loaded by alembic from their folder.
SKIP = ("backend.migrations.versions",)

#: Module (or package) prefix -> layer; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "strategies": 0,
    "backend.settings": 1,
    "backend.files": 1,
    "backend.logs": 1,
    "backend.model": 2,
    "backend.labelstudio": 2,
    "backend.store": 2,
    "backend.migrations": 2,
    "backend.loop": 3,
    "backend.diagnosis": 3,
    "backend.serving": 3,
    "backend.simulate": 3,
    "backend.runtime": 4,
    "backend.api": 5,
    "backend.cli": 6,
}
#: Package faces: only the package itself, not its modules, is in this layer.
FACES: dict[str, int] = {"backend": 1}
LAYER_NAMES = {
    0: "strategies",
    1: "settings",
    2: "model/labelstudio/store",
    3: "loop/diagnosis/serving",
    4: "runtime",
    5: "api",
    6: "cli",
}
#: (importer prefix, imported prefix) pairs that must never be edges, with the reason.
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("strategies", "backend", "strategies import nothing from backend"),
    ("backend.store", "backend.model", "the store does not pull in torch"),
    ("backend.store", "backend.labelstudio", "the store does not parse label configs"),
    ("backend.loop", "backend.serving", "the loop does not reach into /predict's serving"),
    ("backend.loop", "backend.diagnosis", "the diagnosis reads what the cycle produced, not back"),
)


def module_files() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the packages (packages by __init__)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            if not name.startswith(SKIP):
                out[name] = path
    return out


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that importing ``name`` loads last (None for third-party names)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, path: Path, node: ast.AST) -> Iterator[str]:
    """Dotted names an import node refers to (``from a import b`` -> ``a.b`` and ``a``)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            anchor = package[: len(package) - node.level + 1]
            base = ".".join([*anchor, *([node.module] if node.module else [])])
        for alias in node.names:
            yield f"{base}.{alias.name}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports anywhere in its body."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported(module, path, node):
                target = _target(name, modules)
                if target is not None and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as one loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(_loop_through(graph, set(component)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _loop_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One closed path inside a strongly connected component, from its first module back to it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise ValueError(f"not a strongly connected component: {sorted(component)}")


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """A module's layer: its own in :data:`FACES`, else its longest prefix in :data:`LAYERS`."""
    if module in FACES:
        return FACES[module]
    prefixes = [p for p in LAYERS if _matches(module, p)]
    if not prefixes:
        raise KeyError(f"{module} has no layer: add its package to LAYERS")
    return LAYERS[max(prefixes, key=len)]


def _edges(graph: dict[str, set[str]]) -> Iterable[tuple[str, str]]:
    return ((a, b) for a in sorted(graph) for b in sorted(graph[a]))


def folder_of(module: str) -> str:
    """A module's folder: itself for a package face, else its longest prefix in :data:`LAYERS`."""
    if module in FACES:
        return module
    return max((p for p in LAYERS if _matches(module, p)), key=len, default=module)


def two_way(graph: dict[str, set[str]]) -> list[str]:
    """Pairs of folders that import each other, each pair once (``a <-> b``, a < b)."""
    arrows = {(folder_of(a), folder_of(b)) for a, b in _edges(graph)}
    return sorted(f"{a} <-> {b}" for a, b in arrows if a < b and (b, a) in arrows)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_imports_inside_functions_and_relative_ones(
    graph: dict[str, set[str]],
) -> None:
    """The parser itself: a function-level import, a relative one and ``from pkg import module``."""
    assert len(graph) > 50
    tree = ast.parse("def f():\n    from . import b\n    from .c import d\n    import e.f\n")
    modules = {"p": Path("p/__init__.py"), "p.a": Path("p/a.py"), "p.b": Path("p/b.py")}
    modules |= {"p.c": Path("p/c.py"), "e": Path("e/__init__.py"), "e.f": Path("e/f.py")}
    names = [n for node in ast.walk(tree) for n in _imported("p.a", Path("p/a.py"), node)]
    assert [_target(n, modules) for n in names] == ["p.b", "p.c", "e.f"]


def test_cycle_finder_names_the_loop() -> None:
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(planted) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_two_way_finder_names_the_folders() -> None:
    planted = {"backend.loop.a": {"backend.diagnosis.b"}, "backend.diagnosis.c": {"backend.loop.d"}}
    planted |= {"backend.loop.d": set(), "backend.diagnosis.b": {"backend.store.e"}}
    planted |= {"backend.store.e": set()}
    assert two_way(planted) == ["backend.diagnosis <-> backend.loop"]
    del planted["backend.diagnosis.c"]
    assert two_way(planted) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    loops = [" -> ".join(loop) for loop in cycles(graph)]
    assert not loops, "import cycles:\n" + "\n".join(loops)


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    missing = []
    for module in graph:
        try:
            layer_of(module)
        except KeyError as exc:
            missing.append(str(exc))
    assert not missing, "\n".join(missing)


def test_imports_run_down_the_layers(graph: dict[str, set[str]]) -> None:
    upward = [
        f"{a} ({LAYER_NAMES[layer_of(a)]}) imports {b} ({LAYER_NAMES[layer_of(b)]})"
        for a, b in _edges(graph)
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


@pytest.mark.parametrize(("importer", "imported", "why"), FORBIDDEN)
def test_forbidden_imports(
    graph: dict[str, set[str]], importer: str, imported: str, why: str
) -> None:
    found = [
        f"{a} imports {b}"
        for a, b in _edges(graph)
        if _matches(a, importer) and _matches(b, imported)
    ]
    assert not found, f"{why}:\n" + "\n".join(found)


def test_folders_import_each_other_one_way(graph: dict[str, set[str]]) -> None:
    """No two folders of one layer lean on each other (across layers the layers forbid it)."""
    both = two_way(graph)
    assert not both, "folders that import each other:\n" + "\n".join(both)
