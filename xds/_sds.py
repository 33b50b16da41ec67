"""SDS (envoy.service.secret.v3.SecretDiscoveryService) for the local Envoy, served by the agent
from its `IdentityCache`. Envoy's process is attested like any Workload API caller and gets only
the identities its own selectors match.

Resource names (as SPIRE and Istio): `default` → the caller's first SVID; an exact SPIFFE ID of
one of the caller's identities → that SVID; `ROOTCA` or `spiffe://<td>` → the trust bundle as a
validation context using Envoy's SPIFFE certificate validator. A name that is unknown or not the
caller's gets a per-resource error (`resource_errors`); the other resources are still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
from cryptography.hazmat.primitives.serialization import Encoding
from envoy_data_plane.envoy.config.core.v3 import DataSource, TypedExtensionConfig
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    Secret,
    SpiffeCertValidatorConfig,
    SpiffeCertValidatorConfigTrustDomain,
    TlsCertificate,
)
from envoy_data_plane.envoy.service.discovery.v3 import (
    DiscoveryRequest,
    DiscoveryResponse,
    ResourceError,
    ResourceName,
)
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.rpc import Status
from meshwarden.identities import AttestationError, CachedIdentity, IdentityCache, TrustBundle
from meshwarden.identities import private_key_pkcs8_pem as _key_pem

log = logging.getLogger(__name__)

SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DEFAULT_NAME, ROOTCA_NAME = "default", "ROOTCA"
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"
_NOT_FOUND, _PERMISSION_DENIED = 5, 7
CallerAttestor = Callable[[grpc.aio.ServicerContext], frozenset[str]]
NO_IDENTITY_LOG_SECONDS = 60.0  # one warning per caller (selector set) this often


def no_identity_reason(caller: frozenset[str], held: Sequence[CachedIdentity]) -> str:
    """Why a caller gets no SVID: its selectors, and what this node's identities need."""
    wants = "; ".join(
        f"{i.spiffe_id} needs {', '.join(i.selectors) or '(nothing)'}" for i in held[:5]
    )
    more = f"; and {len(held) - 5} more" if len(held) > 5 else ""
    entries = f"this node's identities: {wants}{more}" if held else "this node has no Workload"
    return f"no Workload's selectors match the caller ({', '.join(sorted(caller))}); {entries}"


class NoIdentityLog:
    """Warns (at most once a minute per caller) that an SDS caller holds no identity, so a
    sidecar whose uid matches no Workload does not wait silently."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[frozenset[str], float] = {}

    def caller_without_identity(self, caller: frozenset[str], cache: IdentityCache) -> None:
        if cache.bundle() is None or cache.identities_for(caller):
            return  # not synced yet, or it has one
        now = self._clock()
        if now - self._last.get(caller, -NO_IDENTITY_LOG_SECONDS) < NO_IDENTITY_LOG_SECONDS:
            return
        if len(self._last) > 1024:
            self._last.clear()
        self._last[caller] = now
        log.warning(
            "SDS: no identity for this caller, its Envoy waits for one: %s",
            no_identity_reason(caller, cache.identities),
        )


def tls_secret(name: str, identity: CachedIdentity) -> Secret:
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in identity.svid.chain)
    assert identity.svid.key is not None
    certificate = TlsCertificate(
        certificate_chain=DataSource(inline_bytes=chain),
        private_key=DataSource(inline_bytes=_key_pem(identity.svid.key)),
    )
    return Secret(name=name, tls_certificate=certificate)


def bundle_secret(name: str, bundle: TrustBundle) -> Secret:
    domain = SpiffeCertValidatorConfigTrustDomain(
        name=bundle.trust_domain.name, trust_bundle=DataSource(inline_bytes=bundle.x509_pem())
    )
    validator = TypedExtensionConfig(
        name=SPIFFE_VALIDATOR,
        typed_config=AnyMessage.pack(SpiffeCertValidatorConfig(trust_domains=[domain])),
    )
    context = CertificateValidationContext(custom_validator_config=validator)
    return Secret(name=name, validation_context=context)


def _resolve(
    name: str, identities: Sequence[CachedIdentity], bundle: TrustBundle
) -> Secret | ResourceError:
    if name == DEFAULT_NAME and identities:
        return tls_secret(name, identities[0])
    if name in (ROOTCA_NAME, bundle.trust_domain.id_string()):
        return bundle_secret(name, bundle)
    for identity in identities:
        if str(identity.spiffe_id) == name:
            return tls_secret(name, identity)
    code = (
        _PERMISSION_DENIED if name.startswith("spiffe://") or name == DEFAULT_NAME else _NOT_FOUND
    )
    text = f"secret {name!r} is unknown or not an identity of this caller"
    return ResourceError(resource_name=ResourceName(name=name), error_detail=Status(code, text))


def build_response(
    names: Sequence[str], identities: Sequence[CachedIdentity], bundle: TrustBundle, version: str
) -> DiscoveryResponse:
    if not names:  # everything: every identity by SPIFFE ID and the bundle by trust domain ID
        names = [str(i.spiffe_id) for i in identities] + [bundle.trust_domain.id_string()]
    found = [_resolve(name, identities, bundle) for name in names]
    return DiscoveryResponse(
        version_info=version,
        type_url=SECRET_TYPE,
        nonce=secrets.token_hex(4),
        resources=[AnyMessage.pack(s) for s in found if isinstance(s, Secret)],
        resource_errors=[e for e in found if isinstance(e, ResourceError)],
    )


class SecretDiscovery:
    def __init__(self, cache: IdentityCache, attest: CallerAttestor) -> None:
        self._cache = cache
        self._attest = attest
        self._no_identity = NoIdentityLog()

    async def _caller(self, context: grpc.aio.ServicerContext) -> frozenset[str]:
        try:
            return self._attest(context)
        except AttestationError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"workload attestation failed: {exc}")
        raise AssertionError("unreachable")

    def _response(self, caller: frozenset[str], names: Sequence[str]) -> DiscoveryResponse | None:
        bundle = self._cache.bundle()
        if bundle is None:
            return None
        identities = self._cache.identities_for(caller)
        if not identities:
            self._no_identity.caller_without_identity(caller, self._cache)
        return build_response(names, identities, bundle, str(self._cache.version))

    async def fetch(
        self, request: DiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> DiscoveryResponse:
        caller = await self._caller(context)
        response = self._response(caller, list(request.resource_names))
        if response is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no trust bundle yet")
        assert response is not None
        response.nonce = ""
        return response

    async def stream(
        self, requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DiscoveryResponse]:
        caller = await self._caller(context)
        inbox: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
        reader = asyncio.create_task(_drain(requests, inbox))
        try:
            async for response in self._responses(caller, inbox):
                yield response
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _responses(
        self, caller: frozenset[str], inbox: asyncio.Queue[DiscoveryRequest | None]
    ) -> AsyncIterator[DiscoveryResponse]:
        names: list[str] | None = None
        nonce, sent_version = "", -1
        while True:
            event = await _next_event(inbox, self._cache, sent_version)
            if event is _CLOSED:
                return
            if isinstance(event, DiscoveryRequest):
                if event.response_nonce and event.response_nonce != nonce:
                    continue  # stale: answers a response that has since been replaced
                if event.error_detail is not None and event.error_detail.code:
                    log.warning("Envoy rejected secrets: %s", event.error_detail.message)
                current = sent_version == self._cache.version
                if names == list(event.resource_names) and current:
                    continue  # an ACK or NACK of what is current: nothing new to send
                names = list(event.resource_names)
            if names is None:
                continue
            response = self._response(caller, names)
            if response is not None:
                nonce, sent_version = response.nonce, self._cache.version
                yield response


_CLOSED, _CHANGED = object(), object()


async def _drain(
    requests: AsyncIterator[DiscoveryRequest], inbox: asyncio.Queue[DiscoveryRequest | None]
) -> None:
    async for request in requests:
        await inbox.put(request)
    await inbox.put(None)


async def _next_event(
    inbox: asyncio.Queue[DiscoveryRequest | None], cache: IdentityCache, sent_version: int
) -> object:
    """The next request; `_CHANGED` when the cache moved past `sent_version`; `_CLOSED` when
    Envoy half-closed the stream."""
    if sent_version not in (-1, cache.version):
        return _CHANGED
    get = asyncio.ensure_future(inbox.get())
    change = asyncio.ensure_future(cache.wait_for_change(cache.version))
    done, pending = await asyncio.wait({get, change}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    if get not in done:
        return _CHANGED
    request = get.result()
    return _CLOSED if request is None else request


async def _delta_unimplemented(
    requests: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[DiscoveryResponse]:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "DeltaSecrets is not supported; use SotW")
    yield DiscoveryResponse()  # pragma: no cover - unreachable, makes this a generator


def sds_handler(cache: IdentityCache, attest: CallerAttestor) -> grpc.GenericRpcHandler:
    """The gRPC handler of SDS for the local Envoy: secrets for the identity its caller proves."""
    sds = SecretDiscovery(cache, attest)
    codec = {"request_deserializer": DiscoveryRequest.parse, "response_serializer": bytes}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "StreamSecrets": grpc.stream_stream_rpc_method_handler(sds.stream, **codec),
            "FetchSecrets": grpc.unary_unary_rpc_method_handler(sds.fetch, **codec),
            "DeltaSecrets": grpc.stream_stream_rpc_method_handler(_delta_unimplemented, **codec),
        },
    )
