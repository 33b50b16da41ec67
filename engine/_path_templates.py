"""Istio-style path templates: `{*}` is one path segment, `{**}` any number of them.

The grammar and the matching are Envoy's `uri_template` (the extension Istio translates these
paths to), so a template means the same in the evaluator and in the sidecar:

- the template starts with `/`; segments are separated by `/`;
- a segment is `{*}`, `{**}` or a literal of RFC 3986 path characters (letters, digits,
  `-._~%!$&'()+,;:@`; never `*`, `=`, `{`, `}`), and no segment is empty except a final one
  (a trailing `/`);
- `{*}` matches one or more path characters within one segment; `{**}` matches zero or more
  characters including `/`, and no operator may follow it (literal segments may);
- the match is on the whole normalised path, without the query string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ONE_SEGMENT = "{*}"
ANY_SEGMENTS = "{**}"
_LITERAL_CHARS = r"a-zA-Z0-9\-._~%!$&'()+,;:@"
_SEGMENT_REGEX = f"[{_LITERAL_CHARS}]+"
_SEGMENTS_REGEX = f"[{_LITERAL_CHARS}/]*"
_LITERAL = re.compile(f"[{_LITERAL_CHARS}]+")


def is_template(value: str) -> bool:
    """Whether a path value uses a template operator (and so is read as a template)."""
    return ONE_SEGMENT in value or ANY_SEGMENTS in value


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed template; `regex` is RE2- and Python-compatible and matches the whole path
    (without the query)."""

    text: str
    regex: str
    _compiled: re.Pattern[str] = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """ValueError with the rule broken when `text` is not a valid template."""
        if not text.startswith("/"):
            raise ValueError(f"path template {text!r} must start with '/'")
        segments = text[1:].split("/")
        parts: list[str] = []
        seen_any = False
        for i, segment in enumerate(segments):
            last = i == len(segments) - 1
            parts.append(_segment_regex(text, segment, last, seen_any))
            seen_any = seen_any or segment == ANY_SEGMENTS
        regex = "/" + "/".join(parts)
        return cls(text, regex, re.compile(regex))

    def matches(self, path: str) -> bool:
        return self._compiled.fullmatch(path) is not None

    def __str__(self) -> str:
        return self.text


def _segment_regex(text: str, segment: str, last: bool, seen_any: bool) -> str:
    if segment in (ONE_SEGMENT, ANY_SEGMENTS):
        if seen_any:
            raise ValueError(
                f"path template {text!r}: {{**}} must be the last operator; "
                f"no {segment} may follow it"
            )
        return _SEGMENT_REGEX if segment == ONE_SEGMENT else _SEGMENTS_REGEX
    if segment == "" and last:
        return ""
    if segment == "":
        raise ValueError(f"path template {text!r} has an empty segment ('//')")
    if "{" not in segment and "}" not in segment and "*" in segment:
        raise ValueError(
            f"path template {text!r}: '*' may appear only as {{*}} or {{**}} in a template "
            f"(segment {segment!r})"
        )
    if "{" in segment or "}" in segment:
        raise ValueError(
            f"path template {text!r}: segment {segment!r} mixes an operator with other "
            "characters; a segment is exactly {*}, {**} or a literal without '*', '{' and '}'"
        )
    if not _LITERAL.fullmatch(segment):
        raise ValueError(
            f"path template {text!r}: segment {segment!r} has characters a template "
            "literal may not use (allowed: letters, digits and -._~%!$&'()+,;:@)"
        )
    return re.escape(segment)
