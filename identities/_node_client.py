"""The agent's side of the node API: its persisted node credentials (key and node SVID, 0600)
and the mTLS channel to the server."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Callable, Sequence
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


Resolve = Callable[[str, int], Sequence[tuple[int, str]]]  # host, port -> (family, address)


def system_resolve(host: str, port: int) -> list[tuple[int, str]]:
    """The addresses the system resolver (/etc/hosts, DNS) gives `host` now."""
    return [
        (family, str(address[0]))
        for family, *_, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    ]


def channel_target(servers: str, resolve: Resolve = system_resolve) -> str:
    """The gRPC target of `HOST:PORT[,HOST:PORT...]`: every address of every name, resolved
    now (call it again on a reconnect to follow a changed resolution), as one target the
    channel spreads its calls over. A name that does not resolve is left out; OSError when
    none does. Names resolving to both address families use their IPv4 addresses (servers
    listen on IPv4 by default: `localhost` must reach 127.0.0.1, whatever gai.conf prefers);
    IP addresses of both families are a ValueError."""
    found: list[tuple[int, str, bool]] = []  # family, "ADDRESS:PORT", given as an address
    failures: list[str] = []
    for part in (p.strip() for p in servers.split(",") if p.strip()):
        host, _, port = part.rpartition(":")
        host = host.strip("[]")
        literal = _is_address(host)
        try:
            resolved = resolve(host, int(port))
        except OSError as exc:
            failures.append(f"{host}: {exc.strerror or exc}")
            continue
        for family, address in resolved:
            shown = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
            found.append((family, shown, literal))
    if not found:
        raise OSError(f"{servers}: no address for the server ({'; '.join(failures)})")
    families = {family for family, _, literal in found if literal}
    if len(families) > 1:
        raise ValueError(f"{servers}: give replicas of one address family (IPv4 or IPv6)")
    if families:
        family = families.pop()
    elif any(f == socket.AF_INET for f, _, _ in found):
        family = socket.AF_INET
    else:
        family = socket.AF_INET6
    addresses = dict.fromkeys(shown for f, shown, _ in found if f == family)
    return ("ipv6:" if family == socket.AF_INET6 else "ipv4:") + ",".join(addresses)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def open_channel(target: str, roots_pem: bytes, node: NodeCredentials | None) -> grpc.aio.Channel:
    """An mTLS channel with the node SVID, or server-authenticated TLS only (to attest), to a
    `channel_target` (or one HOST:PORT): calls go round-robin to the addresses that are up."""
    key = private_key_pkcs8_pem(node.key) if node else None
    chain = node.chain_pem() if node else None
    credentials = grpc.ssl_channel_credentials(roots_pem, key, chain)
    options = (*_OPTIONS, ("grpc.lb_policy_name", "round_robin")) if "," in target else _OPTIONS
    return grpc.aio.secure_channel(target, credentials, options=options)


async def attest(
    server: str, roots_pem: bytes, join_token: str, resolve: Resolve = system_resolve
) -> NodeCredentials:
    """Redeem a join token for a node SVID; the node key never leaves this process."""
    key = generate_key()
    try:
        target = channel_target(server, resolve)
    except OSError as exc:
        raise AttestationError(f"attestation with {server} failed: {exc}") from None
    async with open_channel(target, roots_pem, None) as channel:
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
