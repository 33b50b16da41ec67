"""Kubernetes objects read from YAML or JSON files, each field with the place it came from.

A file holds objects as YAML documents, or as a `kind: List` (`kubectl get -o yaml|json`) whose
`items` are the objects. Reading never raises: a problem is an `error:` diagnostic at its
FILE:LINE:COL, and the reading goes on with the next object.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshwarden.engine import (
    Diagnostic,
    Location,
    Severity,
    SourceDocument,
    read_documents,
    read_text,
    scan_files,
)

Path = tuple[str | int, ...]
SUFFIXES = (".yaml", ".yml", ".json")
_LIST_KINDS = ("List", "NamespaceList", "PodList", "ServiceList", "NetworkPolicyList")


def error(location: Location, message: str) -> Diagnostic:
    """An import problem at `location` (the input's FILE:LINE:COL)."""
    return Diagnostic(location, Severity.ERROR, message)


@dataclass(frozen=True, slots=True)
class KubeObject:
    """One object of the input: its identity (group, kind, namespace, name) and its fields.

    `path` is where the object sits in its YAML document (`()` or `("items", 3)` in a List), so
    `at("spec", "ingress", 0)` is the FILE:LINE:COL of that field in the input."""

    source: SourceDocument
    path: Path
    api_version: str
    kind: str
    namespace: str
    name: str

    @property
    def data(self) -> dict[str, Any]:
        value: Any = self.source.data
        for part in self.path:
            value = value[part]
        return value  # type: ignore[no-any-return]

    @property
    def group(self) -> str:
        """The API group: "" for the core group (`v1`), `networking.k8s.io` for `.../v1`."""
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @property
    def origin(self) -> str:
        """`FILE:LINE Kind ns/name`, the provenance comment written above a translated document."""
        start = self.at()
        return f"{start.file}:{start.line} {self.kind} {self.ref}"

    def at(self, *path: str | int) -> Location:
        """Where the value at `path` (inside this object) is, or the nearest enclosing value."""
        full = (*self.path, *path)
        if not full:  # the document's own mapping, not the `---` before it
            return self.source.value_marks.get((), self.source.start)
        return self.source.value_at(full)

    def key_at(self, *path: str | int) -> Location:
        """Where the key of the mapping entry at `path` is."""
        return self.source.key_at((*self.path, *path))

    def get(self, *path: str | int) -> Any:
        """The value at `path`, or None when a part of the way is missing."""
        value: Any = self.data
        for part in path:
            if isinstance(value, dict) and isinstance(part, str):
                value = value.get(part)
            elif isinstance(value, list) and isinstance(part, int) and part < len(value):
                value = value[part]
            else:
                return None
        return value

    @property
    def labels(self) -> dict[str, str]:
        labels = self.get("metadata", "labels")
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


CLUSTER_KINDS = frozenset({"Namespace"})


def read_objects(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[str], list[KubeObject], list[Diagnostic]]:
    """The files found under `paths` (.yaml, .yml, .json), the objects they hold, and the
    problems found. Raises the engine's UsageError for a path that does not exist."""
    files, problems = scan_files(paths, SUFFIXES)
    objects: list[KubeObject] = []
    for file in files:
        text, problem = read_text(file)
        if text is None:
            problems.extend([problem] if problem else [])
            continue
        documents, found = read_documents(file, text)
        problems.extend(found)
        for document in documents:
            if document.data is not None:
                _objects_of(document, objects, problems)
    return files, objects, problems


def _objects_of(doc: SourceDocument, out: list[KubeObject], problems: list[Diagnostic]) -> None:
    data = doc.data
    if not isinstance(data, dict):
        problems.append(error(doc.start, "expected a Kubernetes object (a mapping)"))
        return
    kind = data.get("kind")
    if isinstance(kind, str) and kind in _LIST_KINDS:
        items = data.get("items")
        if not isinstance(items, list):
            problems.append(error(doc.value_at(("items",)), f"a {kind} needs a list 'items'"))
            return
        for i, item in enumerate(items):
            _object(doc, ("items", i), item, problems, out)
        return
    _object(doc, (), data, problems, out)


def _object(
    doc: SourceDocument,
    path: Path,
    data: Any,
    problems: list[Diagnostic],
    out: list[KubeObject],
) -> None:
    where = doc.value_at(path)
    if not isinstance(data, dict):
        problems.append(error(where, "expected a Kubernetes object (a mapping)"))
        return
    found: list[Diagnostic] = []
    api_version = _text(doc, (*path, "apiVersion"), data.get("apiVersion"), found)
    kind = _text(doc, (*path, "kind"), data.get("kind"), found)
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        found.append(error(doc.value_at((*path, "metadata")), "missing mapping 'metadata'"))
        metadata = {}
    name = _text(doc, (*path, "metadata", "name"), metadata.get("name"), found)
    namespace = metadata.get("namespace", "default")
    if not isinstance(namespace, str) or not namespace:
        found.append(error(doc.value_at((*path, "metadata", "namespace")), "bad namespace"))
    problems.extend(found)
    if found or api_version is None or kind is None or name is None:
        return
    if kind in CLUSTER_KINDS:
        namespace = ""
    out.append(KubeObject(doc, path, api_version, kind, namespace, name))


def _text(doc: SourceDocument, path: Path, value: Any, problems: list[Diagnostic]) -> str | None:
    if isinstance(value, str) and value:
        return value
    field = str(path[-1]) if path[-2:-1] != ("metadata",) else f"metadata.{path[-1]}"
    if value is None:
        problems.append(error(doc.value_at(path), f"missing required field {field!r}"))
    else:
        problems.append(error(doc.value_at(path), f"{field} must be a non-empty string"))
    return None
