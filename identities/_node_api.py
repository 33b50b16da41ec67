"""The server side of `meshwarden.node.v1.Node`: join-token attestation, node SVID renewal, and
signing of workload CSRs, each only for what the calling node may serve."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import NoReturn, Protocol, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, SpiffeIdError
from meshwarden.identities._ca import CertificateAuthority
from meshwarden.identities._errors import (
    AttestationError,
    IdentityError,
    IssuanceError,
    StoreUnreachable,
)
from meshwarden.identities._front import PeerTable
from meshwarden.identities._join_tokens import node_name_of
from meshwarden.identities._registry import (
    WorkloadRegistry,
    authorise_issuance,
    servable_workloads,
)
from meshwarden.identities._tls_front import TlsPeer
from meshwarden.identities._validate import X509Svid, verify_x509_svid
from meshwarden.protos import node_pb2 as pb
from meshwarden.protos import node_pb2_grpc

RegistrySource = Callable[[], WorkloadRegistry | None]
# (node name, format) -> that node's packet filter; ValueError when it cannot be rendered.
PacketFilterSource = Callable[[str, str], str]
NODE_SVID_TTL = dt.timedelta(hours=1)


class TokenRedeemer(Protocol):
    """Join tokens: in memory (`JoinTokens`) or in the shared store, single use either way."""

    async def redeem_async(self, token: str) -> str: ...


class NodeRecords(Protocol):
    """The node SVIDs issued through attestation: a file (`IssuedNodes`) or the shared store."""

    async def record(self, certificate: x509.Certificate, node: str) -> None: ...

    async def lookup(self, certificate: x509.Certificate) -> str: ...


def der_chain(svid: X509Svid) -> list[bytes]:
    return [c.public_bytes(Encoding.DER) for c in svid.chain]


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, text: str) -> NoReturn:
    await context.abort(code, text)
    raise AssertionError("unreachable")


class NodeApi:
    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: TokenRedeemer,
        registry: RegistrySource,
        peers: PeerTable[TlsPeer],
        nodes: NodeRecords,
        node_svid_ttl: dt.timedelta = NODE_SVID_TTL,
        *,
        packet_filter: PacketFilterSource | None = None,
    ) -> None:
        self._ca = ca
        self._tokens = tokens
        self._registry = registry
        self._peers = peers
        self._nodes = nodes
        self._node_svid_ttl = node_svid_ttl
        self._packet_filter = packet_filter

    async def _sign_node(self, node: str, csr: x509.CertificateSigningRequest) -> pb.AttestResponse:
        svid = self._ca.sign_node_csr(csr, node, self._node_svid_ttl)
        await self._nodes.record(svid.leaf, node)
        return pb.AttestResponse(
            svid_chain=der_chain(svid), bundle=self._ca.bundle().to_spiffe_json()
        )

    async def Attest(
        self, request: pb.AttestRequest, context: grpc.aio.ServicerContext
    ) -> pb.AttestResponse:
        try:
            csr = _valid_csr(request.csr)  # a bad request does not consume the token
            node = await self._tokens.redeem_async(request.join_token)
            return await self._sign_node(node, csr)
        except StoreUnreachable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"try another server: {exc}")
        except (IdentityError, ValueError) as exc:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"attestation refused: {exc}")

    async def _node(self, context: grpc.aio.ServicerContext) -> str:
        """The node name proven by the caller's client certificate."""
        try:
            certificate = self._peers.of(context).certificate
            if certificate is None:
                raise AttestationError("no client certificate; attest with a join token first")
            authorities = [a.certificate for a in self._ca.x509.published()]
            bundle = self._ca.bundle()
            spiffe_id = verify_x509_svid([certificate, *authorities], bundle, self._ca.clock.now())
            node: str = node_name_of(spiffe_id)
            if await self._nodes.lookup(certificate) != node:
                raise AttestationError(f"{spiffe_id} was not issued to node {node!r}")
            return node
        except StoreUnreachable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"try another server: {exc}")
        except IdentityError as exc:
            await _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))

    async def RenewNodeSVID(
        self, request: pb.RenewNodeSVIDRequest, context: grpc.aio.ServicerContext
    ) -> pb.AttestResponse:
        node = await self._node(context)
        try:
            return await self._sign_node(node, _valid_csr(request.csr))
        except StoreUnreachable as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"try another server: {exc}")
        except (IdentityError, ValueError) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _current_registry(self, context: grpc.aio.ServicerContext) -> WorkloadRegistry:
        registry = self._registry()
        if registry is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, "no valid policy loaded yet")
        return registry

    async def Sync(
        self, request: pb.SyncRequest, context: grpc.aio.ServicerContext
    ) -> pb.SyncResponse:
        node = await self._node(context)
        registry = await self._current_registry(context)
        entries = [
            pb.WorkloadEntry(
                spiffe_id=str(w.spiffe_id),
                selectors=list(w.selectors),
                namespace=w.namespace,
                name=w.name,
            )
            for w in servable_workloads(registry, node)
        ]
        response = pb.SyncResponse(workloads=entries, bundle=self._ca.bundle().to_spiffe_json())
        if request.packet_filter_format:
            response.packet_filter = await self._filter_of(node, request, context)
        return response

    async def _filter_of(
        self, node: str, request: pb.SyncRequest, context: grpc.aio.ServicerContext
    ) -> str:
        """The calling node's own packet filter (never another node's)."""
        if self._packet_filter is None:
            await _abort(
                context, grpc.StatusCode.UNIMPLEMENTED, "this server renders no packet filters"
            )
        try:
            return self._packet_filter(node, request.packet_filter_format)
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"packet filter: {exc}")

    def _sign_one(
        self, registry: WorkloadRegistry, node: str, request: pb.X509SVIDRequest
    ) -> pb.X509SVIDResult:
        try:
            spiffe_id = SpiffeId.parse(request.spiffe_id)
            authorise_issuance(registry, node, spiffe_id)
            svid = self._ca.sign_csr(x509.load_der_x509_csr(request.csr), spiffe_id)
        except (IdentityError, SpiffeIdError, ValueError) as exc:
            return pb.X509SVIDResult(spiffe_id=request.spiffe_id, error=str(exc))
        return pb.X509SVIDResult(spiffe_id=request.spiffe_id, svid_chain=der_chain(svid))

    async def SignX509SVIDs(
        self, request: pb.SignX509SVIDsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignX509SVIDsResponse:
        node = await self._node(context)
        registry = await self._current_registry(context)
        results = [self._sign_one(registry, node, r) for r in request.requests]
        return pb.SignX509SVIDsResponse(results=results)

    async def SignJWTSVID(
        self, request: pb.SignJWTSVIDRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignJWTSVIDResponse:
        node = await self._node(context)
        registry = await self._current_registry(context)
        try:
            spiffe_id = SpiffeId.parse(request.spiffe_id)
            authorise_issuance(registry, node, spiffe_id)
            token = self._ca.sign_jwt_svid(spiffe_id, list(request.audience)).token
        except (IdentityError, SpiffeIdError, ValueError) as exc:
            await _abort(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.SignJWTSVIDResponse(token=token)


def _valid_csr(der: bytes) -> x509.CertificateSigningRequest:
    csr = x509.load_der_x509_csr(der)
    if not csr.is_signature_valid:
        raise IssuanceError("CSR signature does not verify")
    return csr


def node_api_services(
    ca: CertificateAuthority,
    tokens: TokenRedeemer,
    registry: RegistrySource,
    nodes: NodeRecords,
    packet_filter: PacketFilterSource | None = None,
    node_svid_ttl: dt.timedelta = NODE_SVID_TTL,
) -> Callable[[grpc.aio.Server, PeerTable[TlsPeer]], None]:
    """Registers the Node API (attestation, SVID issuance) on a TLS endpoint's server."""

    def add(server: grpc.aio.Server, peers: PeerTable[TlsPeer]) -> None:
        register = cast(
            Callable[[NodeApi, grpc.aio.Server], None], node_pb2_grpc.add_NodeServicer_to_server
        )
        api = NodeApi(
            ca, tokens, registry, peers, nodes, node_svid_ttl, packet_filter=packet_filter
        )
        register(api, server)

    return add
