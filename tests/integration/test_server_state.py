"""`meshwarden server` refuses to start on state it cannot trust — a CA that vanished while other
state says it existed, a corrupt state file, a data dir other users may enter — with one line
naming the file and exit 2, never a traceback and never a silently minted new CA."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from .test_cli_end_to_end import MESHWARDEN, _start
from .test_node_attestation import POLICIES


def _server(tmp_path: Path, *extra: str) -> list[str]:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "mesh.yaml").write_text(POLICIES)
    policies, data = str(tmp_path / "policies"), str(tmp_path / "data")
    return [
        "server",
        "--policies",
        policies,
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--xds-listen",
        "127.0.0.1:0",
        "--health",
        "127.0.0.1:0",
        *extra,
    ]


def _refused(tmp_path: Path, *extra: str) -> str:
    result = subprocess.run(
        MESHWARDEN + _server(tmp_path, *extra), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_missing_ca_with_a_published_bundle_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "bundle.json").write_text('{"keys": []}')
    line = _refused(tmp_path)
    assert line.startswith(f"meshwarden server: error: {data / 'ca.json'}: missing")
    assert str(data / "bundle.json") in line and "--new-ca" in line
    assert not (data / "ca.json").exists()


def test_a_corrupt_ca_file_is_named_with_its_position(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "ca.json").write_text("garbage")
    line = _refused(tmp_path)
    assert line == (
        f"meshwarden server: error: {data / 'ca.json'}: not valid JSON at line 1 col 1; "
        "restore it from a backup or start with --new-ca"
    )


def test_a_data_dir_other_users_can_enter_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    assert _refused(tmp_path).endswith(f"run `chmod 700 {data}`")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--svid-ttl", "12h"], "--svid-ttl 12:00:00 is too long for --ca-ttl 1 day"),
        (["--svid-ttl", "1m"], "--svid-ttl 0:01:00 is out of range (0:05:00 to 7 days"),
        (["--ca-ttl", "20000d"], "--ca-ttl 20000 days, 0:00:00 is out of range"),
    ],
)
def test_lifetimes_out_of_range_are_refused(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    assert expected in _refused(tmp_path, *flags)


def test_new_ca_replaces_a_corrupt_ca_and_keeps_the_old_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "ca.json").write_text("garbage")
    (data / "bundle.json").write_text("{}")
    server, _ = _start(_server(tmp_path, "--new-ca"), tmp_path / "server.log")
    server.terminate()
    assert server.wait(60) == 0
    assert (data / "ca.json.replaced").read_text() == "garbage"
    assert '"x509"' in (data / "ca.json").read_text()


def test_the_sidecars_listener_on_the_node_apis_address_is_refused(tmp_path: Path) -> None:
    line = _refused(tmp_path, "--listen", "127.0.0.1:8443", "--xds-listen", "127.0.0.1:8443")
    assert line.startswith("meshwarden server: error: --xds-listen 127.0.0.1:8443 is --listen")


def test_the_ext_authz_http_front_on_another_listeners_address_is_refused(tmp_path: Path) -> None:
    line = _refused(
        tmp_path, "--xds-listen", "127.0.0.1:8444", "--ext-authz-http-listen", "0.0.0.0:8444"
    )
    assert line.startswith(
        "meshwarden server: error: --ext-authz-listen 0.0.0.0:8444 is --xds-listen's"
    )


@pytest.mark.parametrize("count", ["-1", "65"])
def test_a_number_of_ext_authz_workers_out_of_range_is_refused(tmp_path: Path, count: str) -> None:
    line = _refused(tmp_path, "--ext-authz-workers", count)
    assert line == "meshwarden server: error: --ext-authz-workers must be between 0 and 64"


def test_an_ext_authz_address_another_process_holds_is_refused(tmp_path: Path) -> None:
    """The front's address is the control plane's alone: a socket another process holds there
    (another program, or another user's) keeps the server from starting."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        line = _refused(tmp_path, "--ext-authz-http-listen", address, "--ext-authz-workers", "1")
    assert line == "meshwarden server: error: Address already in use"
