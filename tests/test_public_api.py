"""The package's public surface."""

from __future__ import annotations

import inspect

import asyncstop
import asyncstop.testing


def test_all_lists_exactly_the_public_names() -> None:
    """__all__ and the package's public attributes agree, and every listed name exists."""
    public = {
        name
        for name, value in vars(asyncstop).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(asyncstop.__all__) - {"__version__"} == public
    for name in asyncstop.__all__:
        assert hasattr(asyncstop, name)


def test_public_classes_name_the_package_as_their_module() -> None:
    """Tracebacks show asyncstop.RateLimitError, not the private module that defines it."""
    for name in asyncstop.__all__:
        value = getattr(asyncstop, name)
        if inspect.isclass(value):
            assert value.__module__ == "asyncstop", name
            assert value.__doc__, f"{name} has no docstring"


def test_testing_module_is_public_and_documented() -> None:
    """asyncstop.testing exports the fake exchange with docstrings."""
    assert asyncstop.testing.__doc__
    for name in asyncstop.testing.__all__:
        value = getattr(asyncstop.testing, name)
        if inspect.isclass(value):
            assert value.__doc__, name


def test_error_tree_is_rooted() -> None:
    """Every exception asyncstop exports derives from AsyncStopError, as the module draws it."""
    errors = [
        v
        for v in map(asyncstop.__dict__.get, asyncstop.__all__)
        if inspect.isclass(v) and issubclass(v, BaseException)
    ]
    assert len(errors) == 13
    for cls in errors:
        assert issubclass(cls, asyncstop.AsyncStopError)
    assert issubclass(asyncstop.APITimeoutError, TimeoutError)
    assert issubclass(asyncstop.InvalidInputError, ValueError)
