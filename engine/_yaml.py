"""Multi-document YAML reading that keeps the line and column of every key and value.

Documents are built straight from the parser's events with an explicit stack (no recursion),
so the input limits (`_limits.InputLimits`) are checked while parsing: nesting depth, values per
file, values repeated by aliases, scalar length, integer digits and documents per file. An alias
shares the value it names (it is never copied) and counts as every value it repeats; an alias
inside the value it names (a recursive structure) is an error.

Speed (docs/benchmarks.md, "Loading policies"): the events come from libyaml (PyYAML's C
parser) when it is installed; a plain scalar's value is resolved once per distinct text in a
file and then looked up; positions are kept as the parser's own marks and turned into a
`Location` only when one is asked for.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from meshwarden.engine._collection import collection_paused
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
_REMEMBERED_CHARS = 256
"""Plain scalars up to this long have their resolved value remembered for the rest of the file."""


class Mark(Protocol):
    """Where the parser saw an event (0-based), as libyaml's and PyYAML's marks both carry."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


def _location(file: str, mark: Mark | None) -> Location:
    return Location(file, mark.line + 1, mark.column + 1) if mark is not None else Location(file)


class Positions(Mapping[Path, Location]):
    """Path → Location of one document's values (or keys), kept as the parser's marks and
    turned into a `Location` only when one is looked up."""

    __slots__ = ("_file", "_marks")

    def __init__(self, file: str, marks: dict[Path, Mark | None]) -> None:
        self._file = file
        self._marks = marks

    def __getitem__(self, path: Path) -> Location:
        return _location(self._file, self._marks[path])

    def __contains__(self, path: object) -> bool:
        return path in self._marks

    def __iter__(self) -> Iterator[Path]:
        return iter(self._marks)

    def __len__(self) -> int:
        return len(self._marks)


def _no_positions() -> Mapping[Path, Location]:
    return {}


@dataclass(slots=True)
class SourceDocument:
    """One YAML document: its plain data plus where each part of it came from."""

    file: str
    index: int
    data: Any
    start: Location
    value_marks: Mapping[Path, Location] = field(default_factory=_no_positions)
    key_marks: Mapping[Path, Location] = field(default_factory=_no_positions)

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
        if path in self.key_marks:
            return self.key_marks[path]
        return self.value_at(path)


class _Stop(Exception):
    """A limit was crossed: the rest of the file is not read."""

    def __init__(self, problem: Diagnostic) -> None:
        super().__init__(problem.message)
        self.problem = problem


_AWAIT_KEY = object()  # a mapping frame waiting for its next key
_DISCARD = object()  # a mapping frame whose next value is read but dropped
_SEQUENCE = object()  # the `key` of a sequence frame
_MISS = object()


@dataclass(slots=True)
class _Frame:
    value: Any  # the list or dict being filled
    path: Path
    marked: bool  # whether the values inside get their own marks (path shorter than MARKED_DEPTH)
    anchor: str | None
    first_node: int
    key: Any = _AWAIT_KEY  # mappings: the pending key, _AWAIT_KEY or _DISCARD


@dataclass(slots=True)
class _Anchor:
    value: Any
    size: int  # values it stands for, its own aliases expanded


class _Builder:
    """Builds one document at a time from parser events, checking the limits as it goes."""

    def __init__(self, file: str, limits: InputLimits, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.limits = limits
        self.loader = loader
        self.constructor = yaml.constructor.SafeConstructor()
        self.nodes = 0
        self.repeated = 0
        self.documents = 0
        self.problems: list[Diagnostic] = []
        self.plain: dict[str, Any] = {}  # plain scalar text → its value (see _REMEMBERED_CHARS)
        self.resolved_starts = _resolved_starts(loader)
        self._begin()

    def _begin(self) -> None:
        self.stack: list[_Frame] = []
        self.anchors: dict[str, _Anchor | None] = {}  # None: still being built
        self.values: dict[Path, Mark | None] = {}
        self.keys: dict[Path, Mark | None] = {}
        self.root: Any = None

    def mark(self, event: yaml.Event) -> Location:
        return _location(self.file, event.start_mark)

    def document(self, event: yaml.DocumentStartEvent) -> None:
        self.documents += 1
        if self.documents > self.limits.documents:
            self._stop(event, f"more than {self.limits.documents:,} documents in one file")
        self._begin()
        self.start = self.mark(event)

    def finish(self, index: int) -> SourceDocument:
        values, keys = Positions(self.file, self.values), Positions(self.file, self.keys)
        return SourceDocument(self.file, index, self.root, self.start, values, keys)

    # -- placing values ----------------------------------------------------------------------

    def _count(self, event: yaml.Event, nodes: int) -> None:
        self.nodes += nodes
        if self.nodes > self.limits.nodes:
            self._stop(event, f"more than {self.limits.nodes:,} values in one file")

    def _wants_key(self) -> bool:
        return bool(self.stack) and self.stack[-1].key is _AWAIT_KEY

    def _place(self, value: Any, mark: Mark | None) -> Path | None:
        """Put a value at the next slot of the innermost collection; its path, or None when the
        value is dropped (the value of a refused key)."""
        if not self.stack:
            self.root = value
            self.values[()] = mark
            return ()
        top = self.stack[-1]
        key = top.key
        if key is _SEQUENCE:
            path: Path = (*top.path, len(top.value)) if top.marked else top.path
            top.value.append(value)
        elif key is _DISCARD:
            top.key = _AWAIT_KEY
            return None
        else:
            path = (*top.path, key) if top.marked else top.path
            top.value[key] = value
            top.key = _AWAIT_KEY
        if top.marked:
            self.values[path] = mark
        return path

    def _set_key(self, key: Any, event: yaml.Event) -> None:
        top = self.stack[-1]
        key = key if isinstance(key, str) else str(key)
        if key in top.value:
            self.problems.append(error(self.mark(event), f"duplicate key {key!r} in this mapping"))
        top.key = key
        if top.marked:
            self.keys[(*top.path, key)] = event.start_mark

    def _refuse_key(self, event: yaml.Event, what: str) -> None:
        self.problems.append(error(self.mark(event), f"a mapping key must be a scalar, not {what}"))
        self.stack[-1].key = _DISCARD

    # -- events ------------------------------------------------------------------------------

    def scalar(self, event: yaml.ScalarEvent) -> None:
        self.nodes += 1
        if self.nodes > self.limits.nodes:
            self._count(event, 0)
        text = event.value
        if event.tag is not None:
            value = self._resolve(event)
        elif event.implicit[0]:  # plain: typed by the resolver unless seen before in this file
            value = self.plain.get(text, _MISS)
            if value is _MISS:
                resolved = not text or text[0] in self.resolved_starts
                value = self._resolve(event) if resolved else self._string(event)
        else:  # quoted or a block scalar: always a string
            value = self._string(event)
        if value is _DISCARD:
            return
        stack = self.stack
        if stack and stack[-1].key is _AWAIT_KEY:
            self._set_key(value, event)
            return
        self._place(value, event.start_mark)
        if event.anchor is not None:
            self.anchors[event.anchor] = _Anchor(value, 1)

    def _string(self, event: yaml.ScalarEvent) -> str:
        if len(event.value) > self.limits.scalar_chars:
            size = f"{len(event.value):,} characters"
            self._stop(event, f"a scalar of {size}; the limit is {self.limits.scalar_chars:,}")
        return event.value

    def _resolve(self, event: yaml.ScalarEvent) -> Any:
        """The value of a scalar the resolver must type (remembered when it is plain and raised
        no problem); _DISCARD for a merge key, which is refused."""
        self._string(event)
        tag = self._tag(event)
        if self._wants_key() and tag == f"{_TAG}merge":
            self.problems.append(error(self.mark(event), "YAML merge keys (<<) are not supported"))
            self.stack[-1].key = _DISCARD
            return _DISCARD
        problems = len(self.problems)
        value = self._construct(event, tag)
        plain = event.tag is None and event.implicit[0] and len(event.value) <= _REMEMBERED_CHARS
        if plain and len(self.problems) == problems:
            self.plain[event.value] = value
        return value

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

    def alias(self, event: yaml.AliasEvent) -> None:
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
            self.repeated += anchor.size
            if self.repeated > self.limits.alias_nodes:
                limit = f"{self.limits.alias_nodes:,}"
                self._stop(event, f"aliases repeat more than {limit} values in one file")
            self._place(anchor.value, event.start_mark)

    def _bad_alias(self, event: yaml.AliasEvent, message: str) -> None:
        self.problems.append(error(self.mark(event), message))
        self._place(None, event.start_mark)

    def open(self, event: yaml.SequenceStartEvent | yaml.MappingStartEvent, sequence: bool) -> None:
        stack = self.stack
        if len(stack) >= self.limits.depth:
            self._stop(event, f"nesting deeper than {self.limits.depth} levels")
        self.nodes += 1
        if self.nodes > self.limits.nodes:
            self._count(event, 0)
        if event.tag is not None and event.tag != "!" and event.tag not in _COLLECTION_TAGS:
            self.problems.append(
                error(self.mark(event), f"YAML tag {event.tag!r} is not supported")
            )
        value: Any = [] if sequence else {}
        if stack and stack[-1].key is _AWAIT_KEY:
            self._refuse_key(event, "a sequence" if sequence else "a mapping")
            path: Path = (*stack[-1].path, "?")
        else:
            placed = self._place(value, event.start_mark)
            path = placed if placed is not None else (*stack[-1].path, "?")
        if event.anchor is not None:
            self.anchors[event.anchor] = None
        frame = _Frame(value, path, len(path) < MARKED_DEPTH, event.anchor, self.nodes)
        if sequence:
            frame.key = _SEQUENCE
        stack.append(frame)

    def close(self) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None:
            size = self.nodes - frame.first_node + 1
            self.anchors[frame.anchor] = _Anchor(frame.value, size)

    def _stop(self, event: yaml.Event, message: str) -> None:
        raise _Stop(error(self.mark(event), over_limit(message)))


def _resolved_starts(loader: yaml.SafeLoader) -> Container[str | None]:
    """The first characters of the plain scalars the loader's resolver may type as something
    else than a string (a plain scalar starting otherwise is a string); everything when a
    resolver applies regardless of the first character."""
    implicit = loader.yaml_implicit_resolvers
    if None in implicit or loader.yaml_path_resolvers:
        return _EVERYTHING
    return frozenset(implicit)


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


_EVERYTHING = _Everything()


def read_documents(
    file: str, text: str, limits: InputLimits = LIMITS
) -> tuple[list[SourceDocument], list[Diagnostic]]:
    """Parse every document of a YAML file; a syntax error is reported at the parser's mark, a
    crossed limit where it was crossed. Documents read before either are kept."""
    documents: list[SourceDocument] = []
    loader = _Loader(text)
    builder = _Builder(file, limits, loader)
    try:
        with collection_paused():
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
    """Hand each event to the builder, the most frequent kinds tested first."""
    get_event = loader.get_event
    scalar, open_, close = builder.scalar, builder.open, builder.close
    scalar_event, mapping_start, sequence_start = (
        yaml.ScalarEvent,
        yaml.MappingStartEvent,
        yaml.SequenceStartEvent,
    )
    closing = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    while (event := get_event()) is not None:  # type: ignore[no-untyped-call]
        kind = type(event)
        if kind is scalar_event:
            scalar(event)
        elif kind is mapping_start:
            open_(event, False)
        elif kind in closing:
            close()
        elif kind is sequence_start:
            open_(event, True)
        elif kind is yaml.AliasEvent:
            builder.alias(event)
        elif kind is yaml.DocumentStartEvent:
            builder.document(event)
        elif kind is yaml.DocumentEndEvent:
            out.append(builder.finish(len(out)))
        elif kind is yaml.StreamEndEvent:
            return


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
