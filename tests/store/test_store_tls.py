"""etcd with client TLS and certificate authentication: the store URL's `ca`, `cert` and `key`
are used, and a client without its certificate is refused by etcd."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshwarden.cli import main

from .._loopback import free_port
from ..integration.harness import wait_for
from .etcd_cluster import Member

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


Issued = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _issue(directory: Path, name: str, issuer: Issued | None, usage: object) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer[0].subject if issuer else _name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False).add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture
def tls_etcd() -> Iterator[tuple[str, Path]]:
    root = Path(tempfile.mkdtemp(prefix="mw-etcd-tls-"))
    ca = _issue(root, "ca", None, None)
    _issue(root, "etcd", ca, ExtendedKeyUsageOID.SERVER_AUTH)
    _issue(root, "client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    member = Member("m0", free_port(), free_port(), root / "m0", root / "m0.log")
    cluster = f"m0=http://127.0.0.1:{member.peer_port}"
    command = [
        a.replace(
            "http://127.0.0.1:" + str(member.client_port),
            "https://127.0.0.1:" + str(member.client_port),
        )
        for a in member.command(cluster)
    ]
    command += [
        "--cert-file",
        str(root / "etcd.pem"),
        "--key-file",
        str(root / "etcd.key"),
        "--client-cert-auth",
        "--trusted-ca-file",
        str(root / "ca.pem"),
    ]
    with member.log.open("ab") as log:
        member.process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        yield f"etcd://{member.endpoint}", root
    finally:
        member.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_apply_and_history_over_tls_with_a_client_certificate(tls_etcd, capsys):
    url, pki = tls_etcd
    secure = f"{url}?ca={pki / 'ca.pem'}&cert={pki / 'client.pem'}&key={pki / 'client.key'}"
    wait_for(lambda: main(["history", "--store", secure, "--store-timeout", "1"]) == 0, 60)
    assert main(["apply", str(SHOP), "--store", secure, "-o", "json"]) == 0
    capsys.readouterr()
    assert main(["history", "--store", secure, "-o", "json"]) == 0
    assert '"revision": 1' in capsys.readouterr().out
    without_cert = f"{url}?ca={pki / 'ca.pem'}"
    assert main(["history", "--store", without_cert, "--store-timeout", "1"]) == 1
    assert main(["history", "--store", url, "--store-timeout", "1"]) == 1  # plain gRPC: refused


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("?cert=a&key=b", "TLS needs ca=FILE"),
        ("?ca=/nonexistent/ca.pem", "/nonexistent/ca.pem: No such file"),
        ("?ca=x&cert=y", "cert=FILE and key=FILE go together"),
        ("?ca=x&password=y", "give the etcd password in a file (password-file=FILE"),
        ("?ca=x&pass=y", "unknown store option 'pass'"),
    ],
)
def test_store_tls_options_are_checked_before_anything_runs(query, problem, capsys):
    with pytest.raises(SystemExit):
        main(["history", "--store", f"etcd://127.0.0.1:2379{query}"])
    assert problem in capsys.readouterr().err
