"""PyYAML's syntax errors in the user's terms: the error stays at the parser's position (the
contract), and names the cause where it can be known — a tab, a missing ':' (often on an
earlier line), a bracket or quote never closed."""

from __future__ import annotations

import yaml

Place = tuple[int, int]  # 1-based line and column


def syntax_problem(text: str, exc: yaml.MarkedYAMLError) -> tuple[Place | None, str]:
    """Where the parser stopped (None: unknown) and the message, with the cause when known."""
    what = exc.problem or exc.context or "invalid YAML"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return None, f"YAML syntax error: {what}"
    place = (mark.line + 1, mark.column + 1)
    cause = _cause(text.splitlines(), exc, place)
    return place, f"YAML syntax error: {what}" + (f" ({cause})" if cause else "")


def _cause(lines: list[str], exc: yaml.MarkedYAMLError, place: Place) -> str | None:
    problem, context = exc.problem or "", exc.context or ""
    opened = exc.context_mark
    char = _char(lines, place)
    if "tab character" in problem or ("cannot start any token" in problem and char == "\t"):
        return "a tab character: YAML indents with spaces only"
    if "cannot start any token" in problem and char in "@`%":
        return f"a value cannot start with '{char}' unquoted: quote it"
    if "alias" in context or "undefined alias" in problem:
        return "an unquoted '*' starts a YAML alias: quote it, e.g. '*'"
    if "could not find expected ':'" in problem and opened is not None:
        return _missing_colon(lines, opened.line + 1)
    if "mapping values are not allowed" in problem:
        return _missing_colon(lines, _previous_line(lines, place[0])) or _colon_in_value(
            lines, place
        )
    if "expected key" in problem and "block mapping" in context and opened is not None:
        return _misaligned(lines, place, opened.line + 1, opened.column + 1)
    where = f"line {opened.line + 1}, column {opened.column + 1}" if opened else ""
    if opened is not None and ("flow mapping" in context or "flow sequence" in context):
        return f"the '{'{' if 'mapping' in context else '['}' at {where} is never closed"
    if opened is not None and "quoted scalar" in context:
        return f"the quote at {where} is never closed"
    return None


def _char(lines: list[str], place: Place) -> str:
    line, column = place
    if 1 <= line <= len(lines) and 1 <= column <= len(lines[line - 1]):
        return lines[line - 1][column - 1]
    return ""


def _previous_line(lines: list[str], line: int) -> int:
    """The nearest line above `line` with content (comments and blank lines skipped)."""
    for number in range(line - 1, 0, -1):
        stripped = lines[number - 1].strip()
        if stripped and not stripped.startswith("#"):
            return number
    return 0


def _missing_colon(lines: list[str], line: int) -> str | None:
    """A line that is a bare word or `key value`: the ':' after its first word is missing."""
    if not 1 <= line <= len(lines):
        return None
    content = lines[line - 1].split(" #")[0].strip().removeprefix("- ").strip()
    if not content or ":" in content or content[0] in "{[\"'&*!|>":
        return None
    return f"missing ':' after '{content.split()[0]}' on line {line}?"


def _colon_in_value(lines: list[str], place: Place) -> str:
    """`path: /a: b` — a second ': ' on a line that already has a key."""
    before = lines[place[0] - 1][: place[1] - 1] if 1 <= place[0] <= len(lines) else ""
    if ": " in before:
        return "a ': ' inside a value: quote the value"
    return "check the indentation of this line"


def _misaligned(lines: list[str], place: Place, line: int, column: int) -> str:
    """A line that does not line up with the keys of the mapping it seems to belong to."""
    text = lines[place[0] - 1].lstrip() if 1 <= place[0] <= len(lines) else ""
    mapping = f"the mapping that starts at line {line}, column {column}"
    if text.startswith("- "):
        return f"a list item where {mapping} expects a key: check its indentation"
    return f"this line does not line up with the keys of {mapping}"
