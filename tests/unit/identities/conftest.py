"""Shared fixtures for identities tests: a CA on a manual clock and a real `openssl verify`."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from meshwarden.engine import SpiffeId, TrustDomain
from meshwarden.identities import CaConfig, CertificateAuthority, ManualClock, TrustBundle

TD = TrustDomain("example.org")
WORKLOAD_ID = SpiffeId.parse("spiffe://example.org/ns/shop/sa/backend")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC))


@pytest.fixture
def ca(clock: ManualClock) -> CertificateAuthority:
    return CertificateAuthority(CaConfig(TD), clock)


def pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def openssl_verify(
    tmp_path: Path,
    chain: Sequence[x509.Certificate],
    bundle: TrustBundle,
    at: dt.datetime,
) -> subprocess.CompletedProcess[str]:
    """Run the real `openssl verify` of a leaf-first chain against a bundle's PEM roots at `at`.
    No -partial_chain: the bundle holds self-signed roots, so full path building must succeed."""
    (tmp_path / "bundle.pem").write_bytes(bundle.x509_pem())
    (tmp_path / "leaf.pem").write_bytes(pem(chain[:1]))
    (tmp_path / "untrusted.pem").write_bytes(pem(chain[1:]))
    args = ["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem")]
    args += ["-attime", str(int(at.timestamp())), "-x509_strict", "-purpose", "sslclient"]
    if len(chain) > 1:
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    args.append(str(tmp_path / "leaf.pem"))
    return subprocess.run(args, capture_output=True, text=True, check=False)


def assert_openssl_accepts(
    tmp_path: Path, chain: Sequence[x509.Certificate], bundle: TrustBundle, at: dt.datetime
) -> None:
    result = openssl_verify(tmp_path, chain, bundle, at)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": OK")
