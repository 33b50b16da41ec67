"""The agent's side of the node API: its persisted node credentials (key and node SVID, 0600)
and the mTLS channel to the server."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import TrustDomain
from meshwarden.identities._bundle import TrustBundle
from meshwarden.identities._errors import AttestationError, BundleError, IdentityError, StateError
from meshwarden.identities._files import write_file
from meshwarden.identities._join_tokens import SERVER_DNS_NAME
from meshwarden.identities._keys import (
    PrivateKey,
    generate_key,
    load_private_key_pem,
    private_key_pkcs8_pem,
)
from meshwarden.identities._validate import spiffe_id_of
from meshwarden.protos import node_pb2 as pb
from meshwarden.protos import node_pb2_grpc

KEY_FILE, SVID_FILE, BUNDLE_FILE = "node.key", "node-svid.pem", "bundle.json"


def make_csr(key: PrivateKey) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def read_server_bundle(path: Path) -> bytes:
    """PEM CA certificates from a bundle file in PEM or SPIFFE (JSON) format."""
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        td = TrustDomain("bootstrap.invalid")  # only the certificates are used
        return bytes(TrustBundle.parse_spiffe_json(data, td).x509_pem())
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise BundleError(f"{path}: neither a PEM bundle nor a SPIFFE bundle")
    return data


@dataclass(frozen=True)
class NodeCredentials:
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    bundle: TrustBundle

    @property
    def trust_domain(self) -> TrustDomain:
        return spiffe_id_of(self.chain[0]).trust_domain

    @property
    def expires_at(self) -> dt.datetime:
        return self.chain[0].not_valid_after_utc

    def renew_at(self) -> dt.datetime:
        leaf = self.chain[0]
        return (
            leaf.not_valid_before_utc + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
        )

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.chain)

    def save(self, data_dir: Path) -> None:
        write_file(data_dir / KEY_FILE, private_key_pkcs8_pem(self.key))
        write_file(data_dir / SVID_FILE, self.chain_pem())
        write_file(data_dir / BUNDLE_FILE, self.bundle.to_spiffe_json().encode())

    @classmethod
    def load(cls, data_dir: Path) -> NodeCredentials | None:
        paths = [data_dir / name for name in (KEY_FILE, SVID_FILE, BUNDLE_FILE)]
        if not all(p.exists() for p in paths):
            return None
        try:
            key = load_private_key_pem(paths[0].read_bytes(), str(paths[0]))
            chain = _read_chain(paths[1])
            td = spiffe_id_of(chain[0]).trust_domain
            bundle = _read_bundle(paths[2], td)
        except (OSError, ValueError, IdentityError) as exc:
            raise StateError(
                f"{exc}; restore the node identity in {data_dir} from a backup, or remove "
                f"{', '.join(p.name for p in paths)} and attest again with a new join token"
            ) from None
        return cls(key, chain, bundle)

    @classmethod
    def from_response(cls, key: PrivateKey, response: pb.AttestResponse) -> NodeCredentials:
        chain = tuple(x509.load_der_x509_certificate(c) for c in response.svid_chain)
        td = spiffe_id_of(chain[0]).trust_domain
        return cls(key, chain, TrustBundle.parse_spiffe_json(response.bundle, td))


def _read_chain(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        chain = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM certificate chain: {exc}") from None
    return chain


def _read_bundle(path: Path, trust_domain: TrustDomain) -> TrustBundle:
    try:
        return TrustBundle.parse_spiffe_json(path.read_bytes(), trust_domain)
    except BundleError as exc:
        raise ValueError(f"{path}: {exc}") from None


def node_stub(channel: grpc.aio.Channel) -> Any:
    """The generated (untyped) client stub of meshwarden.node.v1.Node."""
    make = cast(Callable[[grpc.aio.Channel], Any], node_pb2_grpc.NodeStub)
    return make(channel)


_OPTIONS = (
    ("grpc.ssl_target_name_override", SERVER_DNS_NAME),
    # reconnect within a few seconds of the server coming back (gRPC's default backoff grows to
    # 120 s); gRPC adds ±20 % jitter to each delay
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 4000),
)


def channel_target(servers: str) -> str:
    """The gRPC target of `HOST:PORT[,HOST:PORT...]`: one server as it is; several (replicas)
    as one target over all their addresses (names resolved now), so the channel spreads calls
    over the replicas that answer and leaves one that went away, without a restart."""
    parts = [part.strip() for part in servers.split(",") if part.strip()]
    if len(parts) == 1:
        return parts[0]
    v4: list[str] = []
    v6: list[str] = []
    for part in parts:
        host, _, port = part.rpartition(":")
        for family, *_, address in socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM
        ):
            if family == socket.AF_INET:
                v4.append(f"{address[0]}:{port}")
            elif family == socket.AF_INET6:
                v6.append(f"[{address[0]}]:{port}")
    if v4 and v6:
        raise ValueError(f"{servers}: give replicas of one address family (IPv4 or IPv6)")
    return "ipv4:" + ",".join(dict.fromkeys(v4)) if v4 else "ipv6:" + ",".join(dict.fromkeys(v6))


def open_channel(server: str, roots_pem: bytes, node: NodeCredentials | None) -> grpc.aio.Channel:
    """An mTLS channel with the node SVID, or server-authenticated TLS only (to attest).
    `server` may list several replicas (comma-separated): calls go round-robin to those that
    are up."""
    key = private_key_pkcs8_pem(node.key) if node else None
    chain = node.chain_pem() if node else None
    credentials = grpc.ssl_channel_credentials(roots_pem, key, chain)
    options = (*_OPTIONS, ("grpc.lb_policy_name", "round_robin")) if "," in server else _OPTIONS
    return grpc.aio.secure_channel(channel_target(server), credentials, options=options)


async def attest(server: str, roots_pem: bytes, join_token: str) -> NodeCredentials:
    """Redeem a join token for a node SVID; the node key never leaves this process."""
    key = generate_key()
    async with open_channel(server, roots_pem, None) as channel:
        stub = node_stub(channel)
        try:
            response = await stub.Attest(
                pb.AttestRequest(join_token=join_token, csr=make_csr(key)), timeout=15
            )
        except grpc.aio.AioRpcError as exc:
            raise AttestationError(f"attestation with {server} failed: {exc.details()}") from exc
    return NodeCredentials.from_response(key, response)


async def renew(channel: grpc.aio.Channel, node: NodeCredentials) -> NodeCredentials:
    key = generate_key()
    stub = node_stub(channel)
    response = await stub.RenewNodeSVID(pb.RenewNodeSVIDRequest(csr=make_csr(key)), timeout=15)
    return NodeCredentials.from_response(key, response)
