"""The SPIFFE Workload API (`/SpiffeWorkloadAPI/...`) served from an `IdentityCache`.

Rules from the SPIFFE Workload Endpoint/API specs: every call needs the metadata
`workload.spiffe.io: true` (else InvalidArgument); a caller without identity gets
PermissionDenied; streams send the complete state at once and again on every change, and never
end with OK (py-spiffe's watchers stop for good on a clean end).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from meshwarden.engine import SpiffeId, SpiffeIdError
from meshwarden.identities._bundle import TrustBundle
from meshwarden.identities._cache import CachedIdentity, IdentityCache, JwtMinter
from meshwarden.identities._clock import Clock
from meshwarden.identities._errors import AttestationError, IdentityError
from meshwarden.identities._grpc_calls import LocalServer
from meshwarden.identities._jwt import verify_jwt_svid
from meshwarden.identities._keys import private_key_pkcs8_der
from meshwarden.identities._local_endpoint import caller_selectors
from meshwarden.protos import workload_pb2 as pb
from meshwarden.protos import workload_pb2_grpc

M = TypeVar("M", bound=Any)
SECURITY_HEADER = ("workload.spiffe.io", "true")
# Given the grpc context of a call, the caller's selectors (raises AttestationError).
CallerAttestor = Callable[[grpc.aio.ServicerContext], frozenset[str]]


def _der_chain(identity: CachedIdentity) -> bytes:
    return b"".join(c.public_bytes(Encoding.DER) for c in identity.svid.chain)


def x509_svid_response(
    identities: tuple[CachedIdentity, ...], bundle: TrustBundle
) -> pb.X509SVIDResponse:
    svids = []
    for identity in identities:
        assert identity.svid.key is not None, "the agent holds the key of every cached SVID"
        svids.append(
            pb.X509SVID(
                spiffe_id=str(identity.spiffe_id),
                x509_svid=_der_chain(identity),
                x509_svid_key=private_key_pkcs8_der(identity.svid.key),
                bundle=bundle.x509_der(),
            )
        )
    return pb.X509SVIDResponse(svids=svids)


class _X509Responses:
    """X509SVIDResponse per set of identities, built once per cache version: the DER encodings of
    keys and certificates cost more than the rest of a workload's first fetch."""

    def __init__(self, cache: IdentityCache) -> None:
        self._cache = cache
        self._version = -1
        self._built: dict[tuple[int, ...], tuple[object, pb.X509SVIDResponse]] = {}

    def of(
        self, identities: tuple[CachedIdentity, ...], bundle: TrustBundle
    ) -> pb.X509SVIDResponse:
        if self._cache.version != self._version:
            self._version, self._built = self._cache.version, {}
        key = (id(bundle), *map(id, identities))
        built = self._built.get(key)
        if built is None:
            # The entry keeps what its key names alive, so no id is reused while it is cached.
            built = self._built[key] = (
                (bundle, identities),
                x509_svid_response(identities, bundle),
            )
        return built[1]


class WorkloadApi:
    """The servicer of `SpiffeWorkloadAPI` (registered by the generated add_... function)."""

    def __init__(
        self, cache: IdentityCache, attest: CallerAttestor, mint_jwt: JwtMinter, clock: Clock
    ) -> None:
        self._cache = cache
        self._attest = attest
        self._mint_jwt = mint_jwt
        self._clock = clock
        self._x509 = _X509Responses(cache)

    async def _caller(self, context: grpc.aio.ServicerContext) -> frozenset[str]:
        metadata = context.invocation_metadata() or ()
        values = [v for k, v in metadata if k == SECURITY_HEADER[0]]
        if values != [SECURITY_HEADER[1]]:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "security header workload.spiffe.io: true missing"
            )
        try:
            return self._attest(context)
        except AttestationError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"workload attestation failed: {exc}")
        raise AssertionError("unreachable")

    async def _identities(
        self, context: grpc.aio.ServicerContext, caller: frozenset[str]
    ) -> tuple[tuple[CachedIdentity, ...], TrustBundle]:
        identities, bundle = self._cache.identities_for(caller), self._cache.bundle()
        if not identities or bundle is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        assert bundle is not None
        return identities, bundle

    async def FetchX509SVID(
        self, request: pb.X509SVIDRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.X509SVIDResponse]:
        caller = await self._caller(context)
        while True:
            version = self._cache.version
            identities, bundle = await self._identities(context, caller)
            yield self._x509.of(identities, bundle)
            await self._cache.wait_for_change(version)

    async def FetchX509Bundles(
        self, request: pb.X509BundlesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.X509BundlesResponse]:
        def response(bundle: TrustBundle) -> pb.X509BundlesResponse:
            return pb.X509BundlesResponse(
                bundles={bundle.trust_domain.id_string(): bundle.x509_der()}
            )

        async for message in self._bundle_stream(context, response):
            yield message

    async def FetchJWTBundles(
        self, request: pb.JWTBundlesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JWTBundlesResponse]:
        def response(bundle: TrustBundle) -> pb.JWTBundlesResponse:
            return pb.JWTBundlesResponse(
                bundles={bundle.trust_domain.id_string(): bundle.standard_jwks_json()}
            )

        async for message in self._bundle_stream(context, response):
            yield message

    async def _bundle_stream(
        self, context: grpc.aio.ServicerContext, render: Callable[[TrustBundle], M]
    ) -> AsyncIterator[M]:
        """The caller's bundle as rendered by `render`, again whenever the rendering changes."""
        caller = await self._caller(context)
        sent = None
        while True:
            version = self._cache.version
            _, bundle = await self._identities(context, caller)
            response = render(bundle)
            if response != sent:
                yield response
                sent = response
            await self._cache.wait_for_change(version)

    async def FetchJWTSVID(
        self, request: pb.JWTSVIDRequest, context: grpc.aio.ServicerContext
    ) -> pb.JWTSVIDResponse:
        caller = await self._caller(context)
        if not request.audience or any(not a for a in request.audience):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience is required")
        identities, _ = await self._identities(context, caller)
        if request.spiffe_id:
            identities = await self._requested(context, identities, request.spiffe_id)
        svids = []
        for identity in identities:
            try:
                token = await self._mint_jwt(identity.spiffe_id, list(request.audience))
            except IdentityError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not mint JWT-SVID: {exc}")
            svids.append(pb.JWTSVID(spiffe_id=str(identity.spiffe_id), svid=token))
        return pb.JWTSVIDResponse(svids=svids)

    async def _requested(
        self,
        context: grpc.aio.ServicerContext,
        identities: tuple[CachedIdentity, ...],
        requested: str,
    ) -> tuple[CachedIdentity, ...]:
        try:
            wanted = SpiffeId.parse(requested)
        except SpiffeIdError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad spiffe_id: {exc}")
        chosen = tuple(i for i in identities if i.spiffe_id == wanted)
        if not chosen:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"caller is not entitled to {requested}"
            )
        return chosen

    async def ValidateJWTSVID(
        self, request: pb.ValidateJWTSVIDRequest, context: grpc.aio.ServicerContext
    ) -> pb.ValidateJWTSVIDResponse:
        await self._caller(context)
        if not request.audience or not request.svid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience and svid are required")
        bundle = self._cache.bundle()
        if bundle is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no trust bundle yet")
        assert bundle is not None
        try:
            svid = verify_jwt_svid(request.svid, bundle, request.audience, self._clock.now())
        except IdentityError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid JWT-SVID: {exc}")
        response = pb.ValidateJWTSVIDResponse(spiffe_id=str(svid.spiffe_id))
        response.claims.update(svid.claims)
        return response


def workload_api_services(
    cache: IdentityCache, mint_jwt: JwtMinter, clock: Clock
) -> Callable[[LocalServer], None]:
    """The `add_services` of a `LocalEndpoint` serving the Workload API from `cache`."""

    def add(server: LocalServer) -> None:
        api = WorkloadApi(cache, caller_selectors, mint_jwt, clock)
        register = cast(
            Callable[[WorkloadApi, LocalServer], None],
            workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server,
        )
        register(api, server)

    return add
