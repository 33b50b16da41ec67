"""SDS over the attested Unix socket, spoken by a raw gRPC client with Envoy's own messages."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator

import grpc
import pytest
from cryptography import x509
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    Secret,
    SpiffeCertValidatorConfig,
)
from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.rpc import Status
from meshwarden.identities import LocalEndpoint, caller_selectors
from meshwarden.xds import sds_handler
from meshwarden.xds._sds import SECRET_TYPE, SERVICE

from .conftest import WorkloadApiFixture

ROOT_TOOL = "spiffe://example.org/ns/ops/sa/root-tool"
ROOT_ADMIN = "spiffe://example.org/ns/ops/sa/root-admin"
NOBODY = "spiffe://example.org/ns/shop/sa/nobody-app"


@pytest.fixture
def sds(workload_api: WorkloadApiFixture) -> Iterator[str]:
    socket = workload_api.socket.with_name("sds.sock")

    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((sds_handler(workload_api.cache, caller_selectors),))

    endpoint = LocalEndpoint(socket, add)
    workload_api.loop.run(endpoint.start())
    yield f"unix:{socket}"
    workload_api.loop.run(endpoint.stop(0))


class SdsStream:
    """A StreamSecrets call driven like Envoy drives it: requests in, responses out."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self._requests: queue.Queue[DiscoveryRequest | None] = queue.Queue()
        self._received: queue.Queue[DiscoveryResponse] = queue.Queue()
        call = self.channel.stream_stream(
            f"/{SERVICE}/StreamSecrets",
            request_serializer=bytes,
            response_deserializer=DiscoveryResponse.parse,
        )
        responses = call(iter(self._requests.get, None), timeout=20)
        threading.Thread(target=self._read, args=(responses,), daemon=True).start()

    def _read(self, responses: Iterator[DiscoveryResponse]) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in responses:
                self._received.put(response)

    def send(self, names: list[str], nonce: str = "", version: str = "", **extra: object) -> None:
        request = DiscoveryRequest(
            resource_names=names,
            type_url=SECRET_TYPE,
            response_nonce=nonce,
            version_info=version,
            **extra,
        )
        self._requests.put(request)

    def receive(self) -> DiscoveryResponse:
        return self._received.get(timeout=10)

    def nothing_within(self, seconds: float) -> bool:
        try:
            self._received.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self._requests.put(None)
        self.channel.close()


def _secrets(response: DiscoveryResponse) -> dict[str, Secret]:
    found = [Secret.parse(r.value) for r in response.resources]
    return {s.name: s for s in found}


def _leaf_id(secret: Secret) -> str:
    assert secret.tls_certificate is not None and secret.tls_certificate.certificate_chain
    pem = secret.tls_certificate.certificate_chain.inline_bytes or b""
    leaf = x509.load_pem_x509_certificates(pem)[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


def test_default_is_the_callers_first_svid_and_rootca_uses_the_spiffe_validator(sds: str) -> None:
    stream = SdsStream(sds)
    try:
        stream.send(["default", "ROOTCA", ROOT_ADMIN])
        secrets = _secrets(stream.receive())
    finally:
        stream.close()
    assert _leaf_id(secrets["default"]) == ROOT_TOOL
    assert _leaf_id(secrets[ROOT_ADMIN]) == ROOT_ADMIN
    key = secrets["default"].tls_certificate.private_key  # type: ignore[union-attr]
    assert key is not None and b"BEGIN PRIVATE KEY" in (key.inline_bytes or b"")
    validation = secrets["ROOTCA"].validation_context
    assert validation is not None and validation.custom_validator_config is not None
    assert validation.custom_validator_config.name == "envoy.tls.cert_validator.spiffe"
    config = SpiffeCertValidatorConfig.parse(validation.custom_validator_config.typed_config.value)  # type: ignore[union-attr]
    assert [d.name for d in config.trust_domains] == ["example.org"]


def test_unauthorised_name_gets_a_resource_error_and_the_others_are_still_served(
    sds: str,
) -> None:
    stream = SdsStream(sds)
    try:
        stream.send(["default", NOBODY, "no-such-secret"])
        response = stream.receive()
    finally:
        stream.close()
    assert list(_secrets(response)) == ["default"]
    errors = {e.resource_name.name: e.error_detail.code for e in response.resource_errors}  # type: ignore[union-attr]
    assert errors == {NOBODY: 7, "no-such-secret": 5}


def test_ack_gets_no_resend_and_a_rotation_pushes_a_new_version(
    sds: str, workload_api: WorkloadApiFixture
) -> None:
    stream = SdsStream(sds)
    try:
        stream.send(["default"])
        first = stream.receive()
        stream.send(["default"], nonce=first.nonce, version=first.version_info)
        assert stream.nothing_within(0.5)
        workload_api.issue()
        second = stream.receive()
    finally:
        stream.close()
    assert second.version_info != first.version_info
    assert _secrets(second)["default"] != _secrets(first)["default"]


def test_nack_is_not_answered_with_the_same_secrets_again(sds: str) -> None:
    stream = SdsStream(sds)
    try:
        stream.send(["default"])
        first = stream.receive()
        rejected = Status(code=3, message="bad certificate")
        stream.send(["default"], nonce=first.nonce, version="", error_detail=rejected)
        assert stream.nothing_within(0.5)
    finally:
        stream.close()


def test_fetch_secrets_answers_once(sds: str) -> None:
    with grpc.insecure_channel(sds) as channel:
        fetch = channel.unary_unary(
            f"/{SERVICE}/FetchSecrets",
            request_serializer=bytes,
            response_deserializer=DiscoveryResponse.parse,
        )
        response = fetch(
            DiscoveryRequest(resource_names=["default"], type_url=SECRET_TYPE), timeout=10
        )
    assert _leaf_id(_secrets(response)["default"]) == ROOT_TOOL


def test_a_caller_matching_no_workload_is_named_in_one_warning_with_what_each_identity_needs(
    sds: str, workload_api: WorkloadApiFixture, caplog: pytest.LogCaptureFixture
) -> None:
    workload_api.issue([(NOBODY, ("unix:uid:65534",))])  # nothing for this (root) process
    caplog.set_level(logging.WARNING, logger="meshwarden.xds._sds")
    stream = SdsStream(sds)
    try:
        stream.send(["default"])
        first = stream.receive()
        stream.send(["default", "ROOTCA"])  # asks again: the warning is not repeated
        stream.receive()
    finally:
        stream.close()
    assert {e.resource_name.name: e.error_detail.code for e in first.resource_errors} == {  # type: ignore[union-attr]
        "default": 7
    }
    warnings = [r.getMessage() for r in caplog.records if "no identity" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "no Workload's selectors match the caller (" in warnings[0]
    assert "unix:uid:0" in warnings[0]
    assert f"{NOBODY} needs unix:uid:65534" in warnings[0]
