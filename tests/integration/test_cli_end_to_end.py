"""The documented commands, as separate processes: docs/identities.md's quick start (server →
bundle → token piped into the agent → svid fetch as the workload's user), and the fetched chain
checked by `openssl verify` against the exported bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import public_tempdir, remove

MESHWARDEN = [sys.executable, "-m", "meshwarden"]
ROOT = Path(__file__).resolve().parents[2]


def _start(
    args: list[str], log: Path, stdin: str | None = None
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        MESHWARDEN + args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    if stdin is not None:  # as `token create | agent --join-token-file -` gives it
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
    assert process.stdout is not None
    line = process.stdout.readline()  # blocks until `ready ...` or the process exits
    if not line.startswith("ready"):
        process.kill()
        raise AssertionError(f"{args[0]} did not get ready: {line!r} {log.read_text()}")
    return process, line


def _meshwarden(*args: str, uid: int | None = None) -> str:
    """`meshwarden ARGS` (as root, or as `uid` with that gid and no other group)."""
    user = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
    result = subprocess.run(
        [*user, *MESHWARDEN, *args], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in reversed(started):
        process.terminate()
        assert process.wait(60) == 0, "a SIGTERM'd component exits 0"


def test_the_quick_start_of_identities_md_as_written(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """docs/identities.md's quick start: the server on examples/shop-hosts, the bundle, a join
    token piped into the agent (`--join-token-file -`), and `svid fetch` run as the user the
    Workload pinned to host-a selects (uid 2001). The page used examples/shop, whose Workloads
    have no `unix:` selector: its last command could only say `no identity issued`."""
    server_dir, agent_dir = tmp_path / "server", tmp_path / "agent"
    run = public_tempdir()  # the Workload API socket's directory, reachable by uid 2001
    try:
        server, ready = _start(
            [
                "server",
                str(ROOT / "examples" / "shop-hosts"),
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
        bundle = tmp_path / "bundle.pem"
        _meshwarden("ca", "bundle", "--data-dir", str(server_dir), "--output-file", str(bundle))
        spiffe_bundle = json.loads(
            _meshwarden("ca", "bundle", "--data-dir", str(server_dir), "--format", "spiffe")
        )
        assert {k["use"] for k in spiffe_bundle["keys"]} == {"x509-svid", "jwt-svid"}
        token = _meshwarden("token", "create", "--data-dir", str(server_dir), "--node", "host-a")
        agent, _ = _start(
            [
                "agent",
                "--server",
                address,
                "--join-token-file",
                "-",
                "--server-bundle",
                str(bundle),
                "--data-dir",
                str(agent_dir),
                "--socket",
                str(run / "agent.sock"),
                "--sds-socket",
                str(run / "sds.sock"),
            ],
            tmp_path / "agent.log",
            stdin=token,
        )
        processes.append(agent)
        assert (run / "agent.sock").is_socket() and (run / "sds.sock").is_socket()
        fetch = ["svid", "fetch", "--socket", str(run / "agent.sock")]
        fetched = json.loads(
            _meshwarden(*fetch, "--jwt-audience", "backend", "-o", "json", uid=2001)
        )
        as_root = subprocess.run(
            MESHWARDEN + fetch, capture_output=True, text=True, timeout=60, check=False
        )
    finally:
        remove(run)
    frontend = "spiffe://shop.example/ns/shop/sa/frontend"
    assert [s["spiffeId"] for s in fetched["x509Svids"]] == [frontend]
    assert fetched["jwtSvid"]["spiffeId"] == frontend
    assert as_root.returncode == 1 and "no identity issued" in as_root.stderr
    assert "no Workload's unix: selectors match this process (uid 0, gid 0)" in as_root.stderr
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
