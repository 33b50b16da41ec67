"""Each part's public surface is its `__all__`: every exported name exists and is documented, and
nothing else public leaks from the package (the shape of httpx's tests/test_exported_members.py).
Private imports across parts are forbidden by the import-linter contract in pyproject.toml."""

from __future__ import annotations

import importlib
import inspect
from types import ModuleType

import pytest

PARTS = [
    "meshwarden.engine",
    "meshwarden.identities",
    "meshwarden.xds",
    "meshwarden.render",
    "meshwarden.importers",
    "meshwarden.demo",
]


def _part(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", PARTS)
def test_all_is_exactly_the_public_names_of_the_package(name: str) -> None:
    part = _part(name)
    public = sorted(n for n in vars(part) if not n.startswith("_"))
    assert sorted(part.__all__) == public


@pytest.mark.parametrize("name", PARTS)
def test_every_exported_name_exists_once(name: str) -> None:
    part = _part(name)
    missing = [n for n in part.__all__ if not hasattr(part, n)]
    assert missing == []
    assert len(set(part.__all__)) == len(part.__all__)


def _own_docstring(obj: object) -> str | None:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # a dataclass without a docstring gets its signature as __doc__
        return None if doc and doc.startswith(f"{obj.__name__}(") else doc
    return inspect.getdoc(obj)


@pytest.mark.parametrize("name", PARTS)
def test_every_exported_class_and_function_is_documented(name: str) -> None:
    part = _part(name)
    exported = [(n, getattr(part, n)) for n in part.__all__]
    callables = [(n, o) for n, o in exported if inspect.isclass(o) or inspect.isfunction(o)]
    undocumented = [n for n, o in callables if not _own_docstring(o)]
    assert undocumented == []


@pytest.mark.parametrize("name", PARTS)
def test_exported_names_are_defined_inside_the_part(name: str) -> None:
    """A part re-exports its own names, never another part's (each name has one home)."""
    part = _part(name)
    foreign = []
    for exported in part.__all__:
        home = getattr(getattr(part, exported), "__module__", name)
        if home.startswith("meshwarden.") and not home.startswith(name):
            foreign.append(f"{exported} ({home})")
    assert foreign == []
