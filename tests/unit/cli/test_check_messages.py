"""`check` messages a user can act on: "did you mean" for a mistyped field (among the fields
allowed at that place), the source line with a caret under the column in text output (JSON
keeps its shape), and YAML syntax errors that name their cause."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshwarden.cli import main

HEAD = "apiVersion: meshwarden.io/v1alpha1\n"
POLICY = (
    HEAD + "kind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n"
    "  rules:\n  - to:\n    - method: [GET]\n    frm: [{identities: ['*']}]\n"
    "  selectr: {matchLabels: {app: x}}\n"
)


def _check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    assert main(["check", str(policy), *flags]) == 1
    return capsys.readouterr().out.replace(f"{policy}:", "FILE:")


def test_unknown_fields_suggest_the_field_allowed_at_that_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _check(tmp_path, POLICY, capsys)
    assert (
        "FILE:7:7: error: unknown field 'spec.rules[0].to[0].method'; did you mean 'methods'?"
        in (out)
    )
    assert "FILE:8:5: error: unknown field 'spec.rules[0].frm'; did you mean 'from'?" in out
    assert "FILE:9:3: error: unknown field 'spec.selectr'; did you mean 'selector'?" in out


def test_nothing_is_suggested_when_no_field_is_close(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _check(tmp_path, HEAD + "kind: Mesh\nmetadata: {name: m}\nspec: {zzzzzz: 1}\n", capsys)
    assert "unknown field 'spec.zzzzzz'\n" in out


def test_text_output_shows_the_line_with_a_caret_under_the_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _check(tmp_path, POLICY, capsys).splitlines()
    at = lines.index(next(line for line in lines if line.startswith("FILE:7:7:")))
    assert lines[at + 1] == "    7 |     - method: [GET]"
    assert lines[at + 2] == "      |       ^"


def test_json_output_keeps_its_shape_with_the_suggestion_in_the_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = json.loads(_check(tmp_path, POLICY, capsys, "-o", "json"))
    first = report["diagnostics"][0]
    assert set(first) == {"file", "line", "column", "severity", "message"}
    assert first["message"].endswith("did you mean 'methods'?")


@pytest.mark.parametrize(
    ("text", "where", "cause"),
    [
        ("kind: Mesh\nspec:\n\tmtls: STRICT\n", "3:1", "a tab character: YAML indents with spaces"),
        ("kind: Mesh\nspec\n  mtls: STRICT\n", "3:7", "missing ':' after 'spec' on line 2?"),
        ("kind: Mesh\nspec:\n  mtls STRICT\n  x: 1\n", "4:4", "missing ':' after 'mtls' on line 3"),
        ("kind: Mesh\nspec: {mtls: STRICT\n", "3:1", "the '{' at line 2, column 7 is never closed"),
        ("kind: 'Mesh\n", "2:1", "the quote at line 1, column 7 is never closed"),
        ("spec:\n  ids: [*]\n", "2:10", "an unquoted '*' starts a YAML alias: quote it"),
        ("spec:\n  path: /a: b\n", "2:11", "a ': ' inside a value: quote the value"),
        ("a: @x\n", "1:4", "a value cannot start with '@' unquoted: quote it"),
        (
            "spec:\n  rules:\n  - to: []\n   - to: []\n",
            "4:4",
            "a list item where the mapping that starts at line 2, column 3 expects a key",
        ),
    ],
    ids=[
        "tab",
        "missing-colon-bare-key",
        "missing-colon-key-value",
        "open-brace",
        "open-quote",
        "unquoted-star",
        "colon-in-value",
        "at-sign",
        "misaligned-list-item",
    ],
)
def test_yaml_syntax_errors_name_their_cause_at_the_parsers_position(
    text: str, where: str, cause: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _check(tmp_path, text, capsys)
    first = out.splitlines()[0]
    assert first.startswith(f"FILE:{where}: error: YAML syntax error: ")
    assert f"({cause}" in first
