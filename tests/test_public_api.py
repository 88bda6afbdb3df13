"""The package's public surface: every name importable, documented, and named after the package."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from types import ModuleType

import pytest

import asyncstop
import asyncstop.testing


def _public(module: ModuleType) -> list[tuple[str, object]]:
    return [(name, getattr(module, name)) for name in module.__all__ if name != "__version__"]


def _subclasses(cls: type) -> Iterator[type]:
    direct: list[type] = cls.__subclasses__()
    for sub in direct:
        yield sub
        yield from _subclasses(sub)


def test_every_public_looking_name_is_exported() -> None:
    """Each public-looking name of asyncstop is in __all__, and each name in __all__ exists."""
    offered = {
        name
        for name, value in vars(asyncstop).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert offered == set(asyncstop.__all__) - {"__version__"}
    assert isinstance(asyncstop.__version__, str)


@pytest.mark.parametrize("module", [asyncstop, asyncstop.testing], ids=lambda m: m.__name__)
def test_public_classes_and_functions_are_documented_under_the_public_module(
    module: ModuleType,
) -> None:
    """Each exported class and function has a docstring and names the public module as its home."""
    assert module.__doc__
    for name, value in _public(module):
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"
            assert value.__module__ == module.__name__, name


def test_every_error_asyncstop_defines_is_exported_and_rooted() -> None:
    """Each exception class of asyncstop can be caught by its public name and as AsyncStopError."""
    exported_errors = {
        value
        for _, value in _public(asyncstop)
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    for cls in exported_errors:
        assert issubclass(cls, asyncstop.AsyncStopError), cls
    defined = {
        cls
        for cls in _subclasses(asyncstop.AsyncStopError)
        if cls.__module__.partition(".")[0] == "asyncstop"
    }
    assert defined <= exported_errors
    assert issubclass(asyncstop.APITimeoutError, TimeoutError)
    assert issubclass(asyncstop.InvalidInputError, ValueError)
