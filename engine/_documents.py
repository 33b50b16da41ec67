"""From YAML documents to validated, typed documents; pydantic errors become located diagnostics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from meshwarden.engine._diagnostics import Diagnostic, Location, error
from meshwarden.engine._model import Envelope, Metadata, spec_model
from meshwarden.engine._suggest import did_you_mean, fields_at
from meshwarden.engine._yaml import Path, SourceDocument
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

SpecT = TypeVar("SpecT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class DocumentKey:
    """What names a document: its kind, namespace and name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, eq=False)
class Document(Generic[SpecT]):
    """A validated document and the YAML it came from (for locating later diagnostics)."""

    kind: str
    metadata: Metadata
    spec: SpecT
    source: SourceDocument

    @property
    def key(self) -> DocumentKey:
        return DocumentKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def ref(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def key_at(self, *path: str | int) -> Location:
        """Location of the key of a mapping entry inside this document."""
        return self.source.key_at(tuple(path))

    def at(self, *path: str | int) -> Location:
        """Location of the value at a path inside this document (nearest enclosing one)."""
        return self.source.value_at(tuple(path))


def validate_document(source: SourceDocument) -> tuple[Document[Any] | None, list[Diagnostic]]:
    if not isinstance(source.data, dict):
        got = type(source.data).__name__
        return None, [error(source.start, f"a document must be a mapping, got {got}")]
    problems: list[Diagnostic] = []
    envelope: Envelope | None = None
    try:
        envelope = Envelope.model_validate(source.data)
    except ValidationError as exc:
        problems.extend(_diagnostics(exc, source, ()))
    raw_spec = source.data.get("spec", {})
    model = spec_model(source.data.get("kind"), raw_spec)
    spec: BaseModel | None = None
    if model is not None and isinstance(raw_spec, dict):
        try:
            spec = model.model_validate(raw_spec)
        except ValidationError as exc:
            problems.extend(_diagnostics(exc, source, ("spec",)))
    if envelope is None or spec is None or problems:
        return None, problems
    return Document(envelope.kind, envelope.metadata, spec, source), []


def _diagnostics(exc: ValidationError, source: SourceDocument, prefix: Path) -> list[Diagnostic]:
    return [_diagnostic(err, source, prefix) for err in exc.errors(include_url=False)]


def _diagnostic(err: ErrorDetails, source: SourceDocument, prefix: Path) -> Diagnostic:
    path = _document_path(source, (*prefix, *err["loc"]))
    kind = err["type"]
    field = field_name(path)
    if kind == "extra_forbidden":
        return error(source.key_at(path), f"unknown field {field!r}{_suggestion(path, source)}")
    if kind == "missing":
        missing = field_name((*prefix, *err["loc"]))
        return error(source.value_at(path), f"missing required field {missing!r}")
    message = _message(err)
    if kind == "value_error":
        path = _offending_item(source, path, message)
    return error(source.value_at(path), f"{field}: {message}")


def _document_path(source: SourceDocument, loc: tuple[Any, ...]) -> Path:
    """Drop pydantic's union/type tags from a loc, keeping only parts that exist in the YAML."""
    path: Path = ()
    for part in loc:
        candidate = (*path, part)
        if candidate in source.value_marks or candidate in source.key_marks:
            path = candidate
        elif isinstance(part, str) and part.startswith(("function-", "int", "str", "[")):
            continue
        else:
            return candidate if part == loc[-1] else path
    return path


def _message(err: ErrorDetails) -> str:
    ctx = err.get("ctx") or {}
    if err["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if err["type"] == "literal_error":
        return f"{err['input']!r} is not allowed; use {ctx.get('expected')}"
    if err["type"] in ("string_type", "int_type", "bool_type", "list_type", "dict_type"):
        want = err["type"].removesuffix("_type").replace("dict", "mapping")
        got = err["input"]
        hint = " (quote it in YAML)" if want == "string" and isinstance(got, bool | int) else ""
        return f"expected a {want}, got {type(got).__name__} {got!r}{hint}"
    return str(err["msg"])


EGRESS_ONLY_L4 = frozenset(
    {"from", "when", "jwt", "methods", "notMethods", "paths", "notPaths", "hosts", "notHosts"}
)


def _suggestion(path: Path, source: SourceDocument) -> str:
    in_spec = bool(path) and path[0] == "spec"
    spec = source.data.get("spec")
    root = spec_model(source.data.get("kind"), spec) if in_spec else Envelope
    egress = isinstance(spec, dict) and spec.get("direction") == "egress"
    if egress and path[1:2] == ("rules",) and str(path[-1]) in EGRESS_ONLY_L4:
        return (
            f" in an egress rule: egress rules are L4 (to, ports, notPorts, protocols); "
            f"the sources are the workloads `selector` picks, and {path[-1]} belongs to "
            "ingress policies"
        )
    if not path or root is None:
        return ""
    return did_you_mean(str(path[-1]), fields_at(root, path[1 if in_spec else 0 : -1]))


def field_name(path: Path) -> str:
    """`spec.rules[0].from[1].ipBlocks` from a path tuple."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "document"


def _offending_item(source: SourceDocument, path: Path, message: str) -> Path:
    """Inside a list the validator judged as a whole, the item its message names."""
    value = source.data
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return path
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str | int) and repr(item) in message:
                return (*path, i)
    return path
