"""The web console's policies (`GET /api/policies`): the documents of the running version per
namespace, each with its file and line range (and each rule's), the source files' text, and the
`check` diagnostics of the directory as it is now.

A file's text is the bytes the running version was compiled from, never the file as it is on
disk now: a file replaced since (say, by a link to a file only root may read) is not served.

No secrets: an inline JWKS that holds private key members (`d`, `p`, `q`, `dp`, `dq`, `qi`, or
a symmetric `k`) is blanked line by line in the text served (line numbers stay right)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from meshwarden.engine import CompiledMesh, Document

MAX_FILE_BYTES = 2 * 1024 * 1024  # a larger file is listed without its text
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "k", "oth"})
CLUSTER = "(mesh)"  # where documents without a namespace (the Mesh) are listed
REDACTED = "# (redacted by meshwarden: this inline JWKS holds private key material)"


def _lines(marks: Iterable[tuple[tuple[Any, ...], Any]], prefix: tuple[Any, ...]) -> list[int]:
    return [loc.line for path, loc in marks if path[: len(prefix)] == prefix]


def line_range(document: Document[Any], *prefix: str | int) -> tuple[int, int]:
    """First and last line (1-based) of the part of `document` at `prefix` (all of it: ())."""
    source = document.source
    marks = [*source.value_marks.items(), *source.key_marks.items()]
    lines = _lines(marks, tuple(prefix))
    if not prefix:
        lines.append(source.start.line)
    return (min(lines), max(lines)) if lines else (source.start.line, source.start.line)


def _rules(document: Document[Any]) -> list[dict[str, Any]]:
    data = document.source.data
    spec = data.get("spec") if isinstance(data, dict) else None
    rules = spec.get("rules") if isinstance(spec, dict) else None
    if not isinstance(rules, list):
        return []
    return [
        {"index": i, "lines": list(line_range(document, "spec", "rules", i))}
        for i in range(len(rules))
    ]


def _entry(document: Document[Any]) -> dict[str, Any]:
    spec = document.source.data.get("spec") if isinstance(document.source.data, dict) else None
    spec = spec if isinstance(spec, dict) else {}
    return {
        "kind": document.kind,
        "namespace": document.metadata.namespace,
        "name": document.metadata.name,
        "ref": document.ref,
        "file": document.source.file,
        "lines": list(line_range(document)),
        "action": spec.get("action", "ALLOW") if document.kind == "AuthorizationPolicy" else None,
        "mode": spec.get("mode") if document.kind == "AuthorizationPolicy" else None,
        "rules": _rules(document),
    }


def _has_private_jwk(document: Document[Any]) -> bool:
    spec = document.source.data.get("spec") if isinstance(document.source.data, dict) else None
    text = spec.get("jwks") if isinstance(spec, dict) else None
    if not isinstance(text, str):
        return False
    try:
        keys = json.loads(text).get("keys", [])
    except (ValueError, AttributeError):
        return True  # not readable: do not show it
    return any(isinstance(k, dict) and PRIVATE_JWK_MEMBERS & set(k) for k in keys)


def _text(content: bytes | None, redact: list[tuple[int, int]]) -> str | None:
    if content is None or len(content) > MAX_FILE_BYTES:
        return None
    lines = content.decode(errors="replace").splitlines()
    for first, last in redact:
        for n in range(first - 1, min(last, len(lines))):
            lines[n] = REDACTED
    return "\n".join(lines) + "\n"


def _jwks_lines(document: Document[Any]) -> tuple[int, int]:
    """The lines of an inline `jwks` value: from its key to the line before the next key."""
    first = document.key_at("spec", "jwks").line
    later = [loc.line for loc in document.source.key_marks.values() if loc.line > first]
    _, end = line_range(document)
    return first, (min(later) - 1 if later else end)


def policies_view(
    mesh: CompiledMesh | None, compiled_from: Mapping[str, bytes] | None
) -> dict[str, Any]:
    """The documents of `mesh` per namespace and the text of their files: `compiled_from`, the
    bytes of each file `mesh` was compiled from (None: no text, as for a store's revisions)."""
    namespaces: dict[str, list[dict[str, Any]]] = defaultdict(list)
    redact: dict[str, list[tuple[int, int]]] = defaultdict(list)
    documents = list(mesh.documents.values()) if mesh else []
    for document in sorted(documents, key=lambda d: (d.source.file, d.source.start.line)):
        namespaces[document.metadata.namespace or CLUSTER].append(_entry(document))
        if document.kind == "JwtIssuer" and _has_private_jwk(document):
            redact[document.source.file].append(_jwks_lines(document))
    files = sorted({d.source.file for d in documents})
    return {
        "version": mesh.version if mesh else None,
        "namespaces": {ns: namespaces[ns] for ns in sorted(namespaces)},
        "files": {file: _text((compiled_from or {}).get(file), redact[file]) for file in files},
    }
