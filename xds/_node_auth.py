"""Who is asking: an ADS stream is bound to the SPIFFE ID its client proved over mTLS, and a
node id claiming another workload is refused (node fields are client-asserted)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import grpc
from cryptography import x509
from meshwarden.engine import Registry
from meshwarden.identities import IdentityError, spiffe_id_of

NodeAuthorizer = Callable[[str | None, str, str], str]
"""(peer SPIFFE ID or None, node.id, node.cluster) → node key (`ns/name`); raises
PermissionError with the reason when the peer may not act as that node."""


def peer_spiffe_id(context: grpc.aio.ServicerContext) -> str | None:
    """The SPIFFE ID in the verified client certificate of this call; None without mTLS or when
    the certificate carries no SPIFFE ID. Needs a server with `require_client_auth=True`, so
    the chain has been verified against the trust bundle before the call starts."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return str(spiffe_id_of(x509.load_pem_x509_certificate(pems[0])))
    except (ValueError, IdentityError):
        return None


class RelayedPeers(Protocol):
    """`TlsEndpoint.peers`: what the Python TLS front learnt about a relayed connection."""

    def of(self, context: grpc.aio.ServicerContext) -> Any: ...


def relayed_peer_spiffe_id(
    peers: RelayedPeers,
) -> Callable[[grpc.aio.ServicerContext], str | None]:
    """`peer_spiffe_id` for services behind `identities.TlsEndpoint`, where TLS ends in Python
    (the certificate was verified there, when the client sent one)."""

    def identify(context: grpc.aio.ServicerContext) -> str | None:
        try:
            certificate = peers.of(context).certificate
            return None if certificate is None else str(spiffe_id_of(certificate))
        except IdentityError:
            return None

    return identify


def workload_authorizer(workloads: Callable[[], Mapping[str, str]]) -> NodeAuthorizer:
    """Authorize by workload: `workloads()` maps workload refs (`ns/name`) to SPIFFE IDs (it is
    called per stream, so it can read a live registry). The node id must be the ref of a
    workload whose SPIFFE ID is the peer's."""

    def authorize(peer: str | None, node_id: str, node_cluster: str) -> str:
        if peer is None:
            raise PermissionError(f"node {node_id!r}: no client certificate with a SPIFFE ID")
        expected = workloads().get(node_id)
        if expected is None:
            raise PermissionError(f"node {node_id!r} is not a registered workload (peer {peer})")
        if expected != peer:
            raise PermissionError(
                f"node {node_id!r} belongs to {expected}, but the client proved {peer}"
            )
        return node_id

    return authorize


def registry_authorizer(registry: Callable[[], Registry]) -> NodeAuthorizer:
    """`workload_authorizer` over the engine's current registry."""
    return workload_authorizer(lambda: {ref: w.identity for ref, w in registry().workloads.items()})
