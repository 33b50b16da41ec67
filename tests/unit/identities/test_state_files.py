"""The server's and agent's state: key files never written through a planted symlink, a data dir
other users can enter is refused, and a missing or corrupt CA state never silently becomes a new
CA; every error names the file."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey as PrivateKey
from meshwarden.identities import (
    CaConfig,
    CertificateAuthority,
    IssuedNodes,
    ManualClock,
    StateError,
    check_private_dir,
    generate_key,
    load_ca,
    save_ca,
    write_file,
)
from meshwarden.identities._node_client import NodeCredentials

from .conftest import TD

NOBODY = 65534


def _node_svid(
    ca: CertificateAuthority, key: PrivateKey, node: str
) -> tuple[x509.Certificate, ...]:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return ca.sign_node_csr(csr.sign(key, hashes.SHA256()), node).chain


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Another user's file that a symlink in the data dir points to."""
    path = tmp_path / "victim-owned-file"
    path.write_bytes(b"not yours")
    return path


def test_a_symlink_planted_at_the_temporary_name_never_receives_the_key(
    tmp_path: Path, victim: Path
) -> None:
    (tmp_path / ".ca.json.tmp").symlink_to(victim)
    write_file(tmp_path / "ca.json", b"PRIVATE KEY MATERIAL")
    assert victim.read_bytes() == b"not yours"
    assert (tmp_path / "ca.json").read_bytes() == b"PRIVATE KEY MATERIAL"
    assert not (tmp_path / "ca.json").is_symlink()
    assert (tmp_path / "ca.json").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / ".ca.json.tmp").exists()


def test_a_symlink_at_the_file_name_is_replaced_not_followed(tmp_path: Path, victim: Path) -> None:
    (tmp_path / "server.key").symlink_to(victim)
    write_file(tmp_path / "server.key", b"PRIVATE KEY MATERIAL")
    assert victim.read_bytes() == b"not yours"
    assert not (tmp_path / "server.key").is_symlink()


def test_a_missing_data_dir_is_created_private(tmp_path: Path) -> None:
    check_private_dir(tmp_path / "data")
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o777, 0o710])
def test_a_data_dir_other_users_may_enter_is_refused(tmp_path: Path, mode: int) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    data.chmod(mode)
    with pytest.raises(StateError, match=rf"has mode {mode:04o}.*run `chmod 700 {data}`"):
        check_private_dir(data)


def test_a_data_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.chown(data, NOBODY, NOBODY)  # tests run as root
    with pytest.raises(StateError, match=f"owned by uid {NOBODY}, not by uid 0"):
        check_private_dir(data)


def test_a_missing_ca_with_a_published_bundle_is_refused_unless_asked_for(
    tmp_path: Path, clock: ManualClock
) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_text("{}")
    with pytest.raises(StateError) as refused:
        load_ca(tmp_path / "ca.json", CaConfig(TD), clock, [bundle, tmp_path / "nodes.json"])
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'ca.json'}: missing")
    assert f"{bundle} say a CA existed" in message and "--new-ca" in message
    assert "nodes.json" not in message  # only the files that exist are named
    ca = load_ca(tmp_path / "ca.json", CaConfig(TD), clock, [bundle], new_ca=True)
    assert isinstance(ca, CertificateAuthority)


def test_an_empty_ca_file_is_refused_when_other_state_exists(
    tmp_path: Path, clock: ManualClock
) -> None:
    (tmp_path / "ca.json").write_text("")
    (tmp_path / "server.pem").write_text("x")
    with pytest.raises(StateError, match=r"ca\.json: empty .*server\.pem say a CA existed"):
        load_ca(tmp_path / "ca.json", CaConfig(TD), clock, [tmp_path / "server.pem"])


def test_a_first_start_without_any_state_mints_a_ca(tmp_path: Path, clock: ManualClock) -> None:
    ca = load_ca(tmp_path / "ca.json", CaConfig(TD), clock, [tmp_path / "bundle.json"])
    assert ca.bundle().x509_authorities


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "garbage",
            "not valid JSON at line 1 col 1; restore it from a backup or start with --new-ca",
        ),
        ('{"format": 1, "trust_domain": "example.org", "x509": [{"state": "act', "not valid JSON"),
        (
            '{"format": 1, "trust_domain": "example.org", "x509": [{"state": "active"}]}',
            "not a usable CA state (KeyError",
        ),
        ("[1, 2]", "not a CA state document"),
        ('{"format": 9, "x509": [1]}', "unknown CA state format 9"),
    ],
)
def test_a_corrupt_ca_file_is_an_error_naming_it(
    tmp_path: Path, clock: ManualClock, text: str, expected: str
) -> None:
    path = tmp_path / "ca.json"
    path.write_text(text)
    with pytest.raises(StateError) as refused:
        load_ca(path, CaConfig(TD), clock)
    assert str(refused.value).startswith(f"{path}: ")
    assert expected in str(refused.value)


def test_a_certificate_in_the_ca_file_that_does_not_parse_names_the_file(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "ca.json"
    save_ca(CertificateAuthority(CaConfig(TD), clock), path)
    path.write_text(path.read_text().replace("MII", "XXX", 1))
    with pytest.raises(StateError, match=f"^{path}: not a usable CA state"):
        load_ca(path, CaConfig(TD), clock)


def test_the_record_of_issued_node_svids_survives_a_restart(
    tmp_path: Path, ca: CertificateAuthority, clock: ManualClock
) -> None:
    path = tmp_path / "nodes.json"
    node = _node_svid(ca, generate_key(), "node-a")[0]
    IssuedNodes.load(path, clock).add(node, "node-a")
    assert path.stat().st_mode & 0o777 == 0o600
    assert IssuedNodes.load(path, clock).node_of(node) == "node-a"
    clock.advance(dt.timedelta(hours=2))  # expired records are dropped on the next write
    again = IssuedNodes.load(path, clock)
    again.add(_node_svid(ca, generate_key(), "node-b")[0], "node-b")
    assert len(IssuedNodes.load(path, clock)) == 1


def test_a_corrupt_record_of_issued_nodes_is_an_error_naming_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "nodes.json"
    path.write_text('{"format": 1, "nodes": {"ab": {"node": "n"}}}')
    with pytest.raises(StateError, match=f"^{path}: not a record of issued node SVIDs"):
        IssuedNodes.load(path, clock)
    path.write_text("{")
    with pytest.raises(StateError, match=f"^{path}: not valid JSON at line 1 col 2"):
        IssuedNodes.load(path, clock)


@pytest.mark.parametrize("name", ["node.key", "node-svid.pem", "bundle.json"])
def test_a_corrupt_node_identity_file_of_the_agent_is_named(
    tmp_path: Path, ca: CertificateAuthority, name: str
) -> None:
    key = generate_key()
    chain = _node_svid(ca, key, "node-a")
    NodeCredentials(key, chain, ca.bundle()).save(tmp_path)
    (tmp_path / name).write_text("garbage")
    with pytest.raises(StateError, match=f"^{tmp_path / name}: .*attest again with a new join"):
        NodeCredentials.load(tmp_path)
