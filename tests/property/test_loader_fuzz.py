"""Fuzzing the policy loader (hypothesis): whatever bytes or YAML-like text a file holds, `load`
returns diagnostics with positions in that file (never an exception), its memory stays bounded,
and `meshwarden check` exits 0 or 1."""

from __future__ import annotations

import contextlib
import io
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshwarden.engine import LoadResult, load

from meshwarden.cli import main

HEADER = "apiVersion: meshwarden.io/v1alpha1\nkind: AuthorizationPolicy\n"
TOKENS = [
    HEADER,
    "apiVersion: meshwarden.io/v1alpha1\n",
    "kind: Workload\n",
    "kind: Mesh\n",
    "metadata: {name: p, namespace: shop}\n",
    "metadata:\n  name: w\n",
    "spec:\n",
    "spec: ",
    "  rules:\n",
    "  - from:\n",
    "    - namespaces: [shop]\n",
    "  - to: [{ports: [8080]}]\n",
    "  spiffeId: spiffe://meshwarden.local/meshwarden/server\n",
    "  addresses: [127.0.0.2]\n",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "\n",
    "  ",
    "    ",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "*a, *a, *a",
    "---\n",
    "...\n",
    "<<: ",
    "!!set ",
    "!!binary ",
    "!!python/object:os.system ",
    "!foo ",
    "? ",
    "'",
    '"',
    "\\",
    "9" * 70,
    "1" * 4301,
    "2001-13-45",
    "0x1F",
    "0o17",
    "1_000",
    "1:30:00",
    ".inf",
    "~",
    "null",
    "yes",
    "|\n",
    ">-\n",
    "# c\n",
    "\t",
    "\x00",
    "\x07",
    "\ufeff",
    "é",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "@",
    "`",
    "x" * 300,
    "[" * 70,
    "]" * 70,
    "{a: " * 40,
]

yaml_like = st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)
text = st.one_of(
    yaml_like, st.text(max_size=400), st.text(alphabet="[]{}:,-&*!|>'\"\n #ab", max_size=400)
)
MEMORY_BOUND = 64 * 1024 * 1024  # bytes allocated at peak while loading inputs under 30 KB


def load_bytes(data: bytes) -> tuple[str, LoadResult, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            result = load([path])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return str(path), result, peak


def assert_positioned(path: str, result: LoadResult) -> None:
    for diagnostic in result.diagnostics:
        assert diagnostic.location.file == path, diagnostic
        assert diagnostic.location.line >= 1 and diagnostic.location.column >= 1, diagnostic
    assert result.ok == (not result.errors)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.binary(max_size=600))
def test_any_bytes_load_to_positioned_diagnostics(data: bytes) -> None:
    path, result, peak = load_bytes(data)
    assert_positioned(path, result)
    assert peak < MEMORY_BOUND


@SETTINGS
@given(text)
def test_any_yaml_like_text_loads_to_positioned_diagnostics(source: str) -> None:
    path, result, peak = load_bytes(source.encode("utf-8", "surrogatepass"))
    assert_positioned(path, result)
    assert peak < MEMORY_BOUND


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text)
def test_check_exits_0_or_1_and_prints_no_traceback(source: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(source.encode("utf-8", "surrogatepass"))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check", str(path)])
    assert code in (0, 1)
    assert "Traceback" not in out.getvalue() + err.getvalue()
    if code == 1:
        assert f"{path}:" in out.getvalue() + err.getvalue()
