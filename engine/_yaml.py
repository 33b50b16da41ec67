"""Multi-document YAML reading that keeps the line and column of every key and value.

Documents are built straight from the parser's events with an explicit stack (no recursion),
so the input limits (`_limits.InputLimits`) are checked while parsing: nesting depth, values per
file, values repeated by aliases, scalar length, integer digits and documents per file. An alias
shares the value it names (it is never copied) and counts as every value it repeats; an alias
inside the value it names (a recursive structure) is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from meshwarden.engine._diagnostics import Diagnostic, Location, error
from meshwarden.engine._limits import LIMITS, InputLimits, over_limit
from meshwarden.engine._yaml_hints import syntax_problem

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {f"{_TAG}{t}" for t in ("null", "bool", "int", "float", "str", "timestamp")}
_COLLECTION_TAGS = {f"{_TAG}seq", f"{_TAG}map"}
_CONSTRUCTORS = yaml.constructor.SafeConstructor.yaml_constructors
MARKED_DEPTH = 16
"""Positions are kept for values up to this deep; a deeper value is reported at the nearest
enclosing one (no field of the policy language is that deep), so deep input stays cheap."""


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
        """Where the value at `path` is, or the nearest enclosing value when it is absent
        (inside a value repeated by an alias: the alias)."""
        while path:
            if path in self.value_marks:
                return self.value_marks[path]
            path = path[:-1]
        return self.start

    def key_at(self, path: Path) -> Location:
        """Where the key of mapping entry `path` is; falls back to its value."""
        return self.key_marks.get(path) or self.value_at(path)


class _Stop(Exception):
    """A limit was crossed: the rest of the file is not read."""

    def __init__(self, problem: Diagnostic) -> None:
        super().__init__(problem.message)
        self.problem = problem


_AWAIT_KEY = object()  # a mapping frame waiting for its next key
_DISCARD = object()  # a mapping frame whose next value is read but dropped


@dataclass(slots=True)
class _Frame:
    value: Any  # the list or dict being filled
    path: Path
    anchor: str | None
    first_node: int
    key: Any = _AWAIT_KEY  # mappings: the pending key, _AWAIT_KEY or _DISCARD


@dataclass(slots=True)
class _Anchor:
    value: Any
    size: int  # values it stands for, its own aliases expanded


@dataclass(slots=True)
class _Counters:
    nodes: int = 0
    repeated: int = 0
    documents: int = 0


class _Builder:
    """Builds one document at a time from parser events, checking the limits as it goes."""

    def __init__(self, file: str, limits: InputLimits, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.limits = limits
        self.loader = loader
        self.constructor = yaml.constructor.SafeConstructor()
        self.counters = _Counters()
        self.problems: list[Diagnostic] = []
        self._begin()

    def _begin(self) -> None:
        self.stack: list[_Frame] = []
        self.anchors: dict[str, _Anchor | None] = {}  # None: still being built
        self.values: dict[Path, Location] = {}
        self.keys: dict[Path, Location] = {}
        self.root: Any = None

    def mark(self, event: yaml.Event) -> Location:
        mark = event.start_mark
        return Location(self.file, mark.line + 1, mark.column + 1) if mark else Location(self.file)

    def document(self, event: yaml.DocumentStartEvent) -> None:
        self.counters.documents += 1
        if self.counters.documents > self.limits.documents:
            self._stop(event, f"more than {self.limits.documents:,} documents in one file")
        self._begin()
        self.start = self.mark(event)

    def finish(self, index: int) -> SourceDocument:
        return SourceDocument(self.file, index, self.root, self.start, self.values, self.keys)

    def event(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.ScalarEvent):
            self._scalar(event)
        elif isinstance(event, yaml.AliasEvent):
            self._alias(event)
        elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            self._open(event)
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            self._close()

    # -- placing values ----------------------------------------------------------------------

    def _count(self, event: yaml.Event, nodes: int) -> None:
        self.counters.nodes += nodes
        if self.counters.nodes > self.limits.nodes:
            self._stop(event, f"more than {self.limits.nodes:,} values in one file")

    def _wants_key(self) -> bool:
        return bool(self.stack) and self.stack[-1].key is _AWAIT_KEY

    def _place(self, value: Any, where: Location) -> Path | None:
        """Put a value at the next slot of the innermost collection; its path, or None when the
        value is dropped (the value of a refused key)."""
        if not self.stack:
            self.root = value
            self.values[()] = where
            return ()
        top = self.stack[-1]
        marked = len(top.path) < MARKED_DEPTH
        if isinstance(top.value, list):
            path: Path = (*top.path, len(top.value)) if marked else top.path
            top.value.append(value)
        elif top.key is _DISCARD:
            top.key = _AWAIT_KEY
            return None
        else:
            path = (*top.path, top.key) if marked else top.path
            top.value[top.key] = value
            top.key = _AWAIT_KEY
        if marked:
            self.values[path] = where
        return path

    def _set_key(self, key: Any, event: yaml.Event) -> None:
        top = self.stack[-1]
        where = self.mark(event)
        key = key if isinstance(key, str) else str(key)
        if key in top.value:
            self.problems.append(error(where, f"duplicate key {key!r} in this mapping"))
        top.key = key
        if len(top.path) < MARKED_DEPTH:
            self.keys[(*top.path, key)] = where

    def _refuse_key(self, event: yaml.Event, what: str) -> None:
        self.problems.append(error(self.mark(event), f"a mapping key must be a scalar, not {what}"))
        self.stack[-1].key = _DISCARD

    # -- events ------------------------------------------------------------------------------

    def _scalar(self, event: yaml.ScalarEvent) -> None:
        self._count(event, 1)
        if len(event.value) > self.limits.scalar_chars:
            size = f"{len(event.value):,} characters"
            self._stop(event, f"a scalar of {size}; the limit is {self.limits.scalar_chars:,}")
        tag = self._tag(event)
        if self._wants_key() and tag == f"{_TAG}merge":
            self.problems.append(error(self.mark(event), "YAML merge keys (<<) are not supported"))
            self.stack[-1].key = _DISCARD
            return
        value = self._construct(event, tag)
        if self._wants_key():
            self._set_key(value, event)
            return
        self._place(value, self.mark(event))
        if event.anchor is not None:
            self.anchors[event.anchor] = _Anchor(value, 1)

    def _tag(self, event: yaml.ScalarEvent) -> str:
        if event.tag is None or event.tag == "!":
            resolved = self.loader.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, event.value, event.implicit
            )
            return str(resolved)
        return str(event.tag)

    def _construct(self, event: yaml.ScalarEvent, tag: str) -> Any:
        if tag not in _SCALAR_TAGS:
            self.problems.append(error(self.mark(event), f"YAML tag {tag!r} is not supported"))
            return None
        if tag == f"{_TAG}int":
            digits = sum(c.isdigit() for c in event.value)
            if digits > self.limits.integer_digits:
                what = f"an integer of {digits:,} digits; the limit is {self.limits.integer_digits}"
                self.problems.append(error(self.mark(event), over_limit(what)))
                return None
        node = yaml.ScalarNode(tag, event.value, style=event.style)
        try:
            return _CONSTRUCTORS[tag](self.constructor, node)
        except (ValueError, OverflowError, yaml.YAMLError) as exc:
            self.problems.append(error(self.mark(event), f"invalid value {event.value!r}: {exc}"))
            return None

    def _alias(self, event: yaml.AliasEvent) -> None:
        if self._wants_key():
            self._refuse_key(event, "an alias")
            return
        name = event.anchor
        if name not in self.anchors:
            self._bad_alias(event, f"alias *{name} names no anchor defined before it")
        elif (anchor := self.anchors[name]) is None:
            recursive = "a recursive structure, which policies cannot contain"
            self._bad_alias(event, f"alias *{name} is inside the value it names ({recursive})")
        else:
            self._count(event, anchor.size)
            self.counters.repeated += anchor.size
            if self.counters.repeated > self.limits.alias_nodes:
                limit = f"{self.limits.alias_nodes:,}"
                self._stop(event, f"aliases repeat more than {limit} values in one file")
            self._place(anchor.value, self.mark(event))

    def _bad_alias(self, event: yaml.AliasEvent, message: str) -> None:
        self.problems.append(error(self.mark(event), message))
        self._place(None, self.mark(event))

    def _open(self, event: yaml.SequenceStartEvent | yaml.MappingStartEvent) -> None:
        sequence = isinstance(event, yaml.SequenceStartEvent)
        if len(self.stack) >= self.limits.depth:
            self._stop(event, f"nesting deeper than {self.limits.depth} levels")
        self._count(event, 1)
        if event.tag not in (None, "!") and event.tag not in _COLLECTION_TAGS:
            self.problems.append(
                error(self.mark(event), f"YAML tag {event.tag!r} is not supported")
            )
        value: Any = [] if sequence else {}
        if self._wants_key():
            self._refuse_key(event, "a sequence" if sequence else "a mapping")
            path: Path | None = None
        else:
            path = self._place(value, self.mark(event))
        frame_path = path if path is not None else (*self.stack[-1].path, "?")
        if event.anchor is not None:
            self.anchors[event.anchor] = None
        frame = _Frame(value, frame_path, event.anchor, self.counters.nodes)
        if sequence:
            frame.key = None
        self.stack.append(frame)

    def _close(self) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None:
            size = self.counters.nodes - frame.first_node + 1
            self.anchors[frame.anchor] = _Anchor(frame.value, size)

    def _stop(self, event: yaml.Event, message: str) -> None:
        raise _Stop(error(self.mark(event), over_limit(message)))


def read_documents(
    file: str, text: str, limits: InputLimits = LIMITS
) -> tuple[list[SourceDocument], list[Diagnostic]]:
    """Parse every document of a YAML file; a syntax error is reported at the parser's mark, a
    crossed limit where it was crossed. Documents read before either are kept."""
    documents: list[SourceDocument] = []
    loader = _Loader(text)
    builder = _Builder(file, limits, loader)
    try:
        _read_events(loader, builder, documents)
    except _Stop as stop:
        builder.problems.append(stop.problem)
    except yaml.MarkedYAMLError as exc:
        builder.problems.append(_syntax_error(file, text, exc))
    except yaml.YAMLError as exc:
        builder.problems.append(_reader_error(file, text, exc))
    finally:
        loader.dispose()
    return documents, builder.problems


def _read_events(loader: yaml.SafeLoader, builder: _Builder, out: list[SourceDocument]) -> None:
    index = 0
    while loader.check_event():
        event = loader.get_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.DocumentStartEvent):
            builder.document(event)
        elif isinstance(event, yaml.DocumentEndEvent):
            out.append(builder.finish(index))
            index += 1
        elif isinstance(event, yaml.StreamEndEvent):
            return
        elif not isinstance(event, yaml.StreamStartEvent):
            builder.event(event)


def _syntax_error(file: str, text: str, exc: yaml.MarkedYAMLError) -> Diagnostic:
    place, message = syntax_problem(text, exc)
    return error(Location(file, *place) if place else Location(file), message)


def _reader_error(file: str, text: str, exc: yaml.YAMLError) -> Diagnostic:
    """A character YAML does not allow (the reader's error carries an offset, not a mark)."""
    position = getattr(exc, "position", None)
    if not isinstance(position, int):
        return error(Location(file), f"YAML error: {exc}")
    before = text[:position]
    line = before.count("\n") + 1
    column = position - (before.rfind("\n") + 1) + 1
    character = getattr(exc, "character", None)
    code = ord(character) if isinstance(character, str) else character
    what = f"character U+{code:04X}" if isinstance(code, int) else "a character"
    return error(Location(file, line, column), f"{what} is not allowed in YAML")
