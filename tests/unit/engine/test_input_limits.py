"""Hostile policy input: every limit of docs/security.md ("Policy input") is an error with a
position, never an exception, and `meshwarden check` exits 1 on it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from meshwarden.engine import (
    LIMITS,
    Diagnostic,
    InputLimits,
    check_documents,
    load,
    parse_text,
    reload,
)

from meshwarden.cli import main

HEADER = "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
POLICY = HEADER + "metadata: {name: p, namespace: shop}\n"


def only_error(diagnostics: list[Diagnostic]) -> Diagnostic:
    errors = [d for d in diagnostics if d.severity.value == "error"]
    assert len(errors) == 1, "\n".join(map(str, diagnostics))
    return errors[0]


def where(diagnostic: Diagnostic) -> tuple[int, int]:
    return diagnostic.location.line, diagnostic.location.column


@pytest.mark.parametrize("depth", [495, 999, 100_000])
def test_deep_nesting_is_an_error_at_the_first_level_over_the_limit(depth: int) -> None:
    text = POLICY + "spec:\n  rules: " + "[" * depth + "]" * depth + "\n"
    error = only_error(parse_text(text, "deep.yaml")[1])
    # the document's mapping and spec are levels 1 and 2; the 63rd '[' (column 10 + 62) is the
    # 65th. Past 1,000 levels libyaml's scanner refuses the input at the 1,000th (column 1008)
    # before it hands out the first event.
    assert where(error) in ((5, 72), (5, 1008))
    assert "nesting" in error.message


def test_a_self_referencing_sequence_is_an_error_at_the_alias() -> None:
    error = only_error(parse_text(POLICY + "spec:\n  rules: &r [{from: [*r]}]\n", "r.yaml")[1])
    assert where(error) == (5, 22)
    assert "inside the value it names" in error.message


def test_an_integer_over_the_interpreter_limit_is_an_error_not_a_value_error() -> None:
    text = POLICY + "spec:\n  rules:\n  - to:\n    - ports: [" + "9" * 4301 + "]\n"
    error = only_error(parse_text(text, "int.yaml")[1])
    assert where(error) == (7, 15)
    assert "4,301 digits" in error.message


def test_an_integer_of_64_digits_is_read_and_judged_by_the_port_rules() -> None:
    text = POLICY + "spec:\n  rules:\n  - to:\n    - ports: [" + "9" * 64 + "]\n"
    error = only_error(parse_text(text, "int.yaml")[1])
    assert where(error) == (7, 15)
    assert "out of range" in error.message


def billion_laughs(levels: int) -> str:
    lines = ["lol:", "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return POLICY + "\n".join(lines) + "\n"


def test_an_alias_bomb_stops_at_the_alias_that_crosses_the_limit() -> None:
    # b, c and d repeat 90 + 819 + 7,380 values; e's first alias adds 7,381 more
    error = only_error(parse_text(billion_laughs(9), "bomb.yaml")[1])
    assert where(error) == (9, 10)
    assert "aliases repeat more than 10,000 values" in error.message


def test_aliases_under_the_limit_share_the_value_they_name() -> None:
    text = HEADER + textwrap.dedent(
        """\
        metadata: {name: p, namespace: shop}
        spec:
          rules:
          - from: &callers [{namespaces: [shop]}]
          - from: *callers
            to: [{ports: [8080]}]
        """
    )
    documents, problems = parse_text(text, "ok.yaml")
    assert not problems
    rules = documents[0].spec.rules
    assert rules[0].from_ == rules[1].from_
    assert rules[1].from_[0].namespaces == ["shop"]


def test_an_alias_before_its_anchor_is_an_error_at_the_alias() -> None:
    _, problems = parse_text(POLICY + "spec: {rules: *later}\nx: &later []\n", "a.yaml")
    assert [where(d) for d in problems if "no anchor" in d.message] == [(4, 15)]


def test_a_scalar_over_64_kib_is_an_error_at_the_scalar() -> None:
    text = POLICY + "spec:\n  rules:\n  - to:\n    - paths: [/" + "a" * (64 * 1024) + "]\n"
    error = only_error(parse_text(text, "long.yaml")[1])
    assert where(error) == (7, 15)
    assert "65,537 characters" in error.message


def test_more_than_1000_documents_is_an_error_at_the_first_one_over() -> None:
    text = "".join(f"---\nkind: Service  # {i}\n" for i in range(LIMITS.documents + 5))
    _, problems = parse_text(text, "many.yaml")
    over = [d for d in problems if "documents in one file" in d.message]
    assert [where(d) for d in over] == [(2 * LIMITS.documents + 1, 1)]


def test_more_values_than_the_limit_is_an_error_where_the_limit_is_crossed() -> None:
    limits = InputLimits(nodes=1000)
    text = "a: [" + "0," * 2000 + "]\n"
    error = only_error(parse_text(text, "flat.yaml", limits)[1])
    # the mapping, the key 'a' and the sequence are 3 values; the 998th 0 is the 1,001st value
    assert where(error) == (1, 5 + 2 * 997)
    assert "more than 1,000 values in one file" in error.message


def test_aliases_count_every_value_they_repeat_towards_the_values_limit() -> None:
    limits = InputLimits(nodes=1000)
    text = "a: &a [" + "0," * 99 + "]\nb: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    error = only_error(parse_text(text, "alias.yaml", limits)[1])
    # a: 1 + 1 + 1 + 99 values; b: 2 + 100 per alias, the 9th alias reaches 1,004
    assert where(error) == (2, 5 + 4 * 8)


def test_a_file_over_4_mib_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(POLICY + "spec: {}\n" + "#" * LIMITS.file_bytes + "\n")
    result = load([tmp_path])
    error = only_error(result.diagnostics)
    assert (error.location.file, where(error)) == (str(big), (1, 1))
    assert "larger than 4,194,304 bytes" in error.message
    assert result.compiled is None


def test_a_file_of_exactly_4_mib_is_read(tmp_path: Path) -> None:
    text = POLICY + "spec: {}\n"
    (tmp_path / "p.yaml").write_text(text + "#" * (LIMITS.file_bytes - len(text)))
    assert not load([tmp_path]).errors


def test_yaml_tags_that_build_other_types_are_errors() -> None:
    text = POLICY + "spec:\n  rules: !!set {a}\n  x: !!python/object:os.system ls\n"
    _, problems = parse_text(text, "tags.yaml")
    tagged = [where(d) for d in problems if "YAML tag" in d.message]
    assert tagged == [(5, 10), (6, 6)]


def test_an_impossible_date_is_an_error_not_a_value_error() -> None:
    _, problems = parse_text(POLICY + "spec: {}\nwhen: 2001-13-45\n", "date.yaml")
    assert (5, 7) in [where(d) for d in problems if "month must be in 1..12" in d.message]


HOSTILE = {
    "deep.yaml": POLICY + "spec: " + "[" * 999 + "]" * 999 + "\n",
    "selfref.yaml": POLICY + "spec: &s {rules: [{from: *s}]}\n",
    "int.yaml": POLICY + "spec: {rules: [{to: [{ports: [" + "7" * 4301 + "]}]}]}\n",
    "bomb.yaml": billion_laughs(9),
    "scalar.yaml": POLICY + "spec: {x: " + "y" * 70_000 + "}\n",
    "docs.yaml": "---\n{kind: Mesh}\n" * 1001,
    "latin1.yaml": None,
    "controls.yaml": POLICY + "spec: {x: \x01}\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_check_exits_1_with_a_positioned_error_on_each_hostile_file(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    text = HOSTILE[name]
    if text is None:
        path.write_bytes(POLICY.encode() + b"spec: {x: caf\xe9}\n")
    else:
        path.write_text(text)
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    first = (out + err).splitlines()[0]
    assert first.startswith(f"{path}:")
    assert ": error: " in first
    line, column = first[len(str(path)) + 1 :].split(":")[:2]
    assert int(line) >= 1 and int(column) >= 1


def test_check_json_output_lists_the_limit_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(9))
    assert main(["check", str(path), "-o", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(d["line"], d["column"]) for d in report["diagnostics"]] == [(9, 10)]


WORST_CASES = """
import resource, sys
from meshwarden.engine import LIMITS, load
n = LIMITS.nodes
cases = {
    "deep-strings": "a: " + "[" * 14 + "ab," * n + "]" * 14,
    "keys": "a: {" + ",".join(f"k{i}: v" for i in range(n // 2)) + "}",
    "bomb": "a: &a [" + ",".join(["x"] * 1000) + "]\\nb: [" + ",".join(["*a"] * 2000) + "]",
    "depth": "a: " + "[" * 1_000_000,
}
for name, text in cases.items():
    path = f"{sys.argv[1]}/{name}.yaml"
    with open(path, "w") as f:
        f.write(text[: LIMITS.file_bytes])
    result = load([path])
    assert result.errors and not result.ok, name
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_worst_case_files_stay_under_256_mb(tmp_path: Path) -> None:
    """The largest structures the limits allow, in a fresh interpreter (peak RSS, all in)."""
    done = subprocess.run(
        [sys.executable, "-c", WORST_CASES, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) <= 256, f"peak RSS {done.stdout.strip()} MB"


def workloads_text(count: int) -> str:
    return "".join(
        f"---\napiVersion: meshwarden.io/v1alpha1\nkind: Workload\n"
        f"metadata: {{name: w{i}, namespace: shop}}\n"
        f"spec: {{addresses: [127.1.{i // 200}.{i % 200 + 1}]}}\n"
        for i in range(count)
    )


def root_policy(rules: int) -> str:
    return (
        "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
        "metadata: {name: everywhere, namespace: meshwarden-system}\n"
        "spec:\n  rules: [" + ", ".join(["{from: [{namespaces: [shop]}]}"] * rules) + "]\n"
    )


def test_rules_times_selected_workloads_over_the_limit_is_an_error_before_compiling() -> None:
    workloads, problems = parse_text(workloads_text(1000), "workloads.yaml")
    policy, more = parse_text(root_policy(LIMITS.rule_targets // 1000 + 1), "root.yaml")
    assert not problems + more
    compiled, found = check_documents(workloads + policy)
    assert compiled is None
    assert [(d.location.file, where(d)) for d in found] == [("root.yaml", (3, 18))]
    assert "501 rules x 1,000 selected workloads" in found[0].message


def test_a_reload_that_adds_such_a_policy_is_refused_without_compiling_it() -> None:
    workloads, _ = parse_text(workloads_text(1000), "workloads.yaml")
    first = reload(None, workloads)
    assert first.mesh is not None
    policy, _ = parse_text(root_policy(LIMITS.rule_targets // 1000 + 1), "root.yaml")
    second = reload(first.mesh, workloads + policy)
    assert second.mesh is None
    assert [str(d.location) for d in second.errors] == ["root.yaml:3:18"]
