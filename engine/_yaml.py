"""Multi-document YAML reading that keeps the line and column of every key and value."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from meshwarden.engine._diagnostics import Diagnostic, Location, error
from meshwarden.engine._yaml_hints import syntax_problem

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Path = tuple[str | int, ...]


@dataclass(slots=True)
class SourceDocument:
    """One YAML document: its plain data plus where each part of it came from."""

    file: str
    index: int
    data: Any
    start: Location
    value_marks: dict[Path, Location] = field(default_factory=dict)
    key_marks: dict[Path, Location] = field(default_factory=dict)

    def value_at(self, path: Path) -> Location:
        """Where the value at `path` is, or the nearest enclosing value when it is absent."""
        while path:
            if path in self.value_marks:
                return self.value_marks[path]
            path = path[:-1]
        return self.start

    def key_at(self, path: Path) -> Location:
        """Where the key of mapping entry `path` is; falls back to its value."""
        return self.key_marks.get(path) or self.value_at(path)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.constructor = yaml.constructor.SafeConstructor()
        self.values: dict[Path, Location] = {}
        self.keys: dict[Path, Location] = {}
        self.problems: list[Diagnostic] = []

    def mark(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.values[path] = self.mark(node)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problems.append(
                    error(self.mark(key_node), "YAML merge keys (<<) are not supported")
                )
                continue
            key = self.constructor.construct_object(key_node, deep=True)
            key = key if isinstance(key, str) else str(key)
            if key in result:
                self.problems.append(
                    error(self.mark(key_node), f"duplicate key {key!r} in this mapping")
                )
            self.keys[(*path, key)] = self.mark(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result


def read_documents(file: str, text: str) -> tuple[list[SourceDocument], list[Diagnostic]]:
    """Parse every document of a YAML file; a syntax error is reported at the parser's mark."""
    documents: list[SourceDocument] = []
    problems: list[Diagnostic] = []
    try:
        for index, node in enumerate(_compose_all(text)):
            if node is None:
                continue
            builder = _Builder(file)
            data = builder.build(node, ())
            problems.extend(builder.problems)
            documents.append(
                SourceDocument(file, index, data, builder.mark(node), builder.values, builder.keys)
            )
    except yaml.MarkedYAMLError as exc:
        place, message = syntax_problem(text, exc)
        problems.append(error(Location(file, *place) if place else Location(file), message))
    except yaml.YAMLError as exc:
        problems.append(error(Location(file), f"YAML error: {exc}"))
    return documents, problems


def _compose_all(text: str) -> Iterator[yaml.Node | None]:
    loader = _Loader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    finally:
        loader.dispose()
