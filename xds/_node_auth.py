"""Who is asking: an ADS stream is bound to the SPIFFE ID its client proved over mTLS, and a
node id claiming another workload is refused (node fields are client-asserted)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import grpc
from cryptography import x509
from meshwarden.engine import Registry
from meshwarden.identities import IdentityError, spiffe_id_of

NodeAuthorizer = Callable[[str | None, str, str], str]
"""(peer SPIFFE ID or None, node.id, node.cluster) → node key (`ns/name`); raises
PermissionError with the reason when the peer may not act as that node."""


def peer_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    """The client certificate of this call, verified against the trust bundle during the
    handshake (a server with `require_client_auth`: `identities.MtlsEndpoint`); None without
    one."""
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None


def peer_spiffe_id(context: grpc.aio.ServicerContext) -> str | None:
    """The SPIFFE ID in the verified client certificate of this call; None without mTLS or when
    the certificate carries no (valid) SPIFFE ID."""
    certificate = peer_certificate(context)
    if certificate is None:
        return None
    try:
        return str(spiffe_id_of(certificate))
    except IdentityError:
        return None


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
    """`workload_authorizer` over the engine's current registry (looked up, not copied: a
    mapping of every workload built per stream made opening N streams cost O(N²))."""
    return workload_authorizer(lambda: _Identities(registry()))


class _Identities(Mapping[str, str]):
    """A registry's workload refs → SPIFFE IDs, as a view."""

    __slots__ = ("_workloads",)

    def __init__(self, registry: Registry) -> None:
        self._workloads = registry.workloads

    def __getitem__(self, ref: str) -> str:
        return self._workloads[ref].identity

    def __iter__(self) -> Iterator[str]:
        return iter(self._workloads)

    def __len__(self) -> int:
        return len(self._workloads)
