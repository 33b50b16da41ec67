"""The documented commands, as separate processes: server → token → bundle → agent → svid fetch,
and the fetched chain checked by `openssl verify` against the exported bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_node_attestation import POLICIES

MESHWARDEN = [sys.executable, "-m", "meshwarden"]


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        MESHWARDEN + args, stdout=subprocess.PIPE, stderr=log.open("w"), text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until `ready ...` or the process exits
    if not line.startswith("ready"):
        process.kill()
        raise AssertionError(f"{args[0]} did not get ready: {line!r} {log.read_text()}")
    return process, line


def _meshwarden(*args: str) -> str:
    result = subprocess.run(MESHWARDEN + list(args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        process.terminate()
        assert process.wait(10) == 0, "a SIGTERM'd component exits 0"


def test_server_agent_and_svid_fetch_end_to_end(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "mesh.yaml").write_text(POLICIES)
    server_dir, agent_dir, socket = tmp_path / "server", tmp_path / "agent", tmp_path / "a.sock"
    server, ready = _start(
        [
            "server",
            str(tmp_path / "policies"),
            "--data-dir",
            str(server_dir),
            "--listen",
            "127.0.0.1:0",
            "--xds-listen",
            "127.0.0.1:0",
        ],
        tmp_path / "server.log",
    )
    processes.append(server)
    address = ready.split(" on ")[1].split(",")[0]
    token = _meshwarden(
        "token", "create", "--data-dir", str(server_dir), "--node", "node-a"
    ).strip()
    bundle = tmp_path / "bundle.pem"
    _meshwarden("ca", "bundle", "--data-dir", str(server_dir), "--output-file", str(bundle))
    spiffe_bundle = json.loads(
        _meshwarden("ca", "bundle", "--data-dir", str(server_dir), "--format", "spiffe")
    )
    assert {k["use"] for k in spiffe_bundle["keys"]} == {"x509-svid", "jwt-svid"}
    agent, _ = _start(
        [
            "agent",
            "--server",
            address,
            "--join-token",
            token,
            "--server-bundle",
            str(bundle),
            "--data-dir",
            str(agent_dir),
            "--socket",
            str(socket),
            "--sds-socket",
            str(tmp_path / "sds.sock"),
        ],
        tmp_path / "agent.log",
    )
    processes.append(agent)
    assert socket.is_socket() and (tmp_path / "sds.sock").is_socket()  # created before `ready`
    fetched = json.loads(
        _meshwarden("svid", "fetch", "--socket", str(socket), "--jwt-audience", "db", "-o", "json")
    )
    ids = [s["spiffeId"] for s in fetched["x509Svids"]]
    assert sorted(ids) == [
        "spiffe://example.org/ns/shop/sa/anywhere",
        "spiffe://example.org/ns/shop/sa/api",
    ]
    assert fetched["jwtSvid"]["spiffeId"] == ids[0]
    chain = fetched["x509Svids"][0]["chain"]
    (tmp_path / "leaf.pem").write_text(chain[0])
    (tmp_path / "untrusted.pem").write_text("".join(chain[1:]))
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(bundle),
            "-untrusted",
            str(tmp_path / "untrusted.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_token_create_without_a_running_server_fails_clearly(tmp_path: Path) -> None:
    result = subprocess.run(
        [*MESHWARDEN, "token", "create", "--data-dir", str(tmp_path), "--node", "n1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "no server running" in result.stderr
