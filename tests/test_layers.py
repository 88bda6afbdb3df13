"""The package's layers: imports point one way, and the top layers use only public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import asyncstop

PACKAGE = Path(asyncstop.__file__).parent

#: From the bottom up; a module may import only modules of lower layers.
LAYERS: list[set[str]] = [
    {"_constants"},
    {"_errors"},
    {"_logging", "_validation", "_models", "_argtypes"},
    {"_report", "_retry", "_auth", "_signals", "_pool"},
    {"_account", "_transport"},
    {"_attempt"},
    {"_hedge"},
    {"_bulk"},
    {"_client"},
    {"_registry", "_postgres"},
    {"_killswitch"},
    {"_watchdog"},
    {"__init__"},
    {"testing"},
    {"_cli"},
    {"__main__"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
#: Modules that drive the library from outside: they may not reach into other
#: objects' private members (``client._x``), only use what users can use.
PUBLIC_NAMES_ONLY = {"_killswitch", "_cli", "_watchdog"}


def _unit(path: Path) -> str:
    """The layer unit of a module file: its top-level module or subpackage name."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_units(source: str, package_parts: tuple[str, ...]) -> set[str]:
    """Every asyncstop unit a module imports, under TYPE_CHECKING and in functions too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - node.level + 1])
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                module = node.module or ""
            if module == "asyncstop":
                # `from . import x` / `from asyncstop import x`: x may be a module.
                names = [f"{module}.{alias.name}" for alias in node.names]
            else:
                names = [module]
        for name in names:
            parts = name.split(".")
            if parts[0] != "asyncstop":
                continue
            if len(parts) == 1:
                found.add("__init__")
            elif (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").exists():
                found.add(parts[1])
            else:
                found.add("__init__")  # a public name imported from the package itself
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        package_parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
        imported = _imported_units(path.read_text(encoding="utf-8"), package_parts)
        edges.setdefault(unit, set()).update(u for u in imported if u != unit)
    return edges


def test_every_module_has_a_layer() -> None:
    """Each module of the package is placed in a layer, so none escapes the import rule."""
    assert set(_edges()) - set(RANK) == set()


def test_imports_point_only_down() -> None:
    """No module imports one of its own layer or above: no upward import, hence no cycle."""
    upward = [
        f"{unit} imports {target}"
        for unit, targets in sorted(_edges().items())
        for target in sorted(targets)
        if RANK.get(target, len(LAYERS)) >= RANK.get(unit, -1)
    ]
    assert upward == []


def test_the_import_check_catches_a_hidden_upward_import() -> None:
    """An upward import under TYPE_CHECKING inside a function is still seen and ranked upward."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "def f():\n"
        "    if TYPE_CHECKING:\n"
        "        from ._client import AsyncStopClient\n"
    )
    units = _imported_units(source, ("asyncstop",))
    assert units == {"_client"}
    assert RANK["_client"] >= RANK["_bulk"]


def _own_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines itself: its methods, attributes and slots."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            own.add(node.value)  # __slots__ entries
    return own


@pytest.mark.parametrize("unit", sorted(PUBLIC_NAMES_ONLY))
def test_outer_layers_use_no_private_member_of_another_object(unit: str) -> None:
    """The kill switch, the watchdog and the CLI touch no other module's ``obj._private``."""
    paths = [PACKAGE / f"{unit}.py"] if (PACKAGE / f"{unit}.py").exists() else []
    paths += sorted((PACKAGE / unit).rglob("*.py")) if (PACKAGE / unit).is_dir() else []
    offenders = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _own_private_names(tree)
        # `argparse._SubParsersAction` and the like: the standard library's own
        # typing idioms, not a reach into another asyncstop object.
        stdlib = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if not alias.name.startswith("asyncstop")
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
                and not (isinstance(node.value, ast.Name) and node.value.id in stdlib)
            ):
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert offenders == []
