"""The agent reads its join token from a file or stdin (not visible in `ps`), warns when it is
given on the command line, and a start that fails before reaching the server leaves the token
usable."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .._loopback import free_port
from .test_cli_end_to_end import MESHWARDEN, _meshwarden, _start
from .test_node_attestation import POLICIES


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "mesh.yaml").write_text(POLICIES)
    process, ready = _start(
        [
            "server",
            "--policies",
            str(tmp_path / "policies"),
            "--data-dir",
            str(tmp_path / "server"),
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
        ],
        tmp_path / "server.log",
    )
    _meshwarden(
        "ca",
        "bundle",
        "--data-dir",
        str(tmp_path / "server"),
        "--output-file",
        str(tmp_path / "bundle.pem"),
    )
    yield ready.split(" on ")[1].split(",")[0]
    process.terminate()
    assert process.wait(60) == 0


def _agent_args(tmp_path: Path, address: str, *token: str) -> list[str]:
    bundle, data = str(tmp_path / "bundle.pem"), str(tmp_path / "agent")
    return [
        "agent",
        "--server",
        address,
        *token,
        "--server-bundle",
        bundle,
        "--data-dir",
        data,
        "--socket",
        str(tmp_path / "a.sock"),
    ]


def _closed_port() -> str:
    return f"127.0.0.1:{free_port()}"  # reserved: nothing else can listen there


def _token(tmp_path: Path) -> str:
    args = ("token", "create", "--data-dir", str(tmp_path / "server"), "--node", "node-a")
    return _meshwarden(*args).strip()


def test_a_token_on_stdin_survives_a_start_that_could_not_reach_the_server(
    tmp_path: Path, server: str
) -> None:
    token = _token(tmp_path)
    failed = subprocess.run(
        MESHWARDEN + _agent_args(tmp_path, _closed_port(), "--join-token-file", "-"),
        input=token + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 1 and "attestation with" in failed.stderr
    assert "warning" not in failed.stderr
    agent = subprocess.Popen(
        MESHWARDEN + _agent_args(tmp_path, server, "--join-token-file", "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write(token + "\n")
    agent.stdin.close()
    try:
        assert agent.stdout.readline().startswith(
            "ready node spiffe://example.org/meshwarden/node/"
        )
    finally:
        agent.terminate()
        agent.wait(10)


def test_a_token_on_the_command_line_is_warned_about_and_a_file_is_not(
    tmp_path: Path, server: str
) -> None:
    token = _token(tmp_path)
    warned = subprocess.run(
        MESHWARDEN + _agent_args(tmp_path, _closed_port(), "--join-token", token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "meshwarden agent: warning: --join-token is visible to every local user" in (
        warned.stderr
    )
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    agent, _ = _start(
        _agent_args(tmp_path, server, "--join-token-file", str(tmp_path / "token")),
        tmp_path / "agent.log",
    )
    agent.terminate()
    assert agent.wait(60) == 0 and "warning" not in (tmp_path / "agent.log").read_text()


def test_an_empty_token_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n")
    result = subprocess.run(
        MESHWARDEN
        + _agent_args(tmp_path, _closed_port(), "--join-token-file", str(tmp_path / "token")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"meshwarden agent: error: --join-token-file {tmp_path / 'token'}: expected one join "
        "token on one line"
    )
