"""No module-level mutable state in backend/ or strategies/.

State lives in objects their owner creates and passes on (the app's services, the scheduler, the
cycle runner); module-level tables are read-only (tuples, frozensets, ``MappingProxyType``). This
test reads every module's syntax tree and fails on what would make a module hold state: a
mutable container bound at module level, a cached module-level function (``functools.cache``,
``lru_cache``), a lock or an instance of the module's own class bound at module level, or a
``global`` statement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend", "strategies")
MUTABLE_CALLS = frozenset(
    {"dict", "list", "set", "defaultdict", "OrderedDict", "Counter", "deque", "bytearray"}
)
STATEFUL_CALLS = frozenset({"Lock", "RLock", "Condition", "Event", "Semaphore"})
CACHES = frozenset({"cache", "lru_cache", "cached_property"})
ALLOWED_NAMES = frozenset({"__all__"})


def _modules() -> list[Path]:
    return sorted(
        path
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    )


def _called(node: ast.expr) -> str:
    if not isinstance(node, ast.Call):
        return ""
    func = node.func
    return (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else ""
    )


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Name):
        return target.id
    return target.attr if isinstance(target, ast.Attribute) else ""


def _frozen(node: ast.ClassDef) -> bool:
    """Whether the class is a frozen dataclass (its instances are values, not state)."""
    return any(
        isinstance(d, ast.Call)
        and _decorator_name(d) == "dataclass"
        and any(k.arg == "frozen" and ast.unparse(k.value) == "True" for k in d.keywords)
        for d in node.decorator_list
    )


def _binding(node: ast.stmt) -> tuple[list[str], ast.expr | None]:
    if isinstance(node, ast.Assign):
        return [ast.unparse(t) for t in node.targets], node.value
    if isinstance(node, ast.AnnAssign):
        return [ast.unparse(node.target)], node.value
    return [], None


def _held(value: ast.expr, classes: set[str]) -> str | None:
    """Why a module-level value holds state, or None."""
    mutable = ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp | ast.SetComp
    if isinstance(value, mutable):
        return "is a mutable container"
    call = _called(value)
    if call in MUTABLE_CALLS:
        return f"is a mutable {call}"
    if call in STATEFUL_CALLS or call in classes:
        return f"is a module-level {call}"
    return None


def module_state(source: str) -> list[str]:
    """What in a module's source would hold state at module level (line: what)."""
    tree = ast.parse(source)
    classes = {
        node.name for node in tree.body if isinstance(node, ast.ClassDef) and not _frozen(node)
    }
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if any(_decorator_name(d) in CACHES for d in node.decorator_list):
                found.append(f"{node.lineno}: {node.name} is cached at module level")
            continue
        names, value = _binding(node)
        why = _held(value, classes) if value is not None else None
        if why is not None and not set(names) <= ALLOWED_NAMES:
            found.append(f"{node.lineno}: {', '.join(names)} {why}")
    found += [
        f"{node.lineno}: global {', '.join(node.names)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_level_mutable_state(path: Path) -> None:
    assert module_state(path.read_text()) == []


def test_the_check_finds_each_kind_of_module_state() -> None:
    source = """
import functools, threading
from dataclasses import dataclass

class Registry: ...

@dataclass(frozen=True)
class Title:
    text: str

TABLE = {"a": 1}
NAMES: list[str] = []
SEEN = set()
LOCK = threading.Lock()
LIVE = Registry()
__all__ = ["TABLE"]
FROZEN = frozenset({1, 2})
TITLE = Title("a value")

@functools.cache
def env(): ...

def bump():
    global COUNT
"""
    found = module_state(source)
    assert [line.split(": ", 1)[1] for line in found] == [
        "TABLE is a mutable container",
        "NAMES is a mutable container",
        "SEEN is a mutable set",
        "LOCK is a module-level Lock",
        "LIVE is a module-level Registry",
        "env is cached at module level",
        "global COUNT",
    ]
