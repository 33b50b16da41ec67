"""The Workload API against the real py-spiffe client and raw gRPC, over the real Unix socket."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import sys
import threading
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from spiffe import JwtSvid, WorkloadApiClient, X509Source
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.workloadapi.errors import FetchX509SvidError, ValidateJwtSvidError

from .conftest import NOBODY_UID, WorkloadApiFixture
from .harness import run_as, wait_for

HEADER = (("workload.spiffe.io", "true"),)


def _stub(address: str) -> tuple[grpc.Channel, workload_pb2_grpc.SpiffeWorkloadAPIStub]:
    channel = grpc.insecure_channel(address.replace("unix://", "unix:"))
    return channel, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def test_py_spiffe_fetches_every_matching_svid_default_first(
    workload_api: WorkloadApiFixture,
) -> None:
    with WorkloadApiClient(workload_api.address) as client:
        context = client.fetch_x509_context(timeout=10)
        svids = client.fetch_x509_svids(timeout=10)
    assert [str(s.spiffe_id) for s in svids] == [
        "spiffe://example.org/ns/ops/sa/root-tool",
        "spiffe://example.org/ns/ops/sa/root-admin",
    ]
    assert str(context.default_svid.spiffe_id) == "spiffe://example.org/ns/ops/sa/root-tool"
    bundle = context.x509_bundle_set.get_bundle_for_trust_domain(svids[0].spiffe_id.trust_domain)
    assert bundle is not None and len(bundle.x509_authorities) == 1


def test_py_spiffe_fetches_x509_bundles(workload_api: WorkloadApiFixture) -> None:
    with WorkloadApiClient(workload_api.address) as client:
        bundles = client.fetch_x509_bundles(timeout=10)
    assert [str(b.trust_domain) for b in bundles.bundles] == ["example.org"]


def test_py_spiffe_fetches_jwt_svid_and_bundles_and_validates_the_token(
    workload_api: WorkloadApiFixture,
) -> None:
    with WorkloadApiClient(workload_api.address) as client:
        svid = client.fetch_jwt_svid(audience={"backend"}, timeout=10)
        bundles = client.fetch_jwt_bundles(timeout=10)
        validated = client.validate_jwt_svid(svid.token, "backend", timeout=10)
    assert str(svid.spiffe_id) == "spiffe://example.org/ns/ops/sa/root-tool"
    assert str(validated.spiffe_id) == str(svid.spiffe_id)
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    assert JwtSvid.parse_and_validate(svid.token, bundle, {"backend"}).spiffe_id == svid.spiffe_id


def test_py_spiffe_fetches_a_jwt_svid_for_a_chosen_identity(
    workload_api: WorkloadApiFixture,
) -> None:
    from spiffe import SpiffeId

    chosen = SpiffeId("spiffe://example.org/ns/ops/sa/root-admin")
    with WorkloadApiClient(workload_api.address) as client:
        svid = client.fetch_jwt_svid(audience={"db"}, subject=chosen, timeout=10)
    assert svid.spiffe_id == chosen


def test_validate_jwt_svid_rejects_a_token_for_another_audience(
    workload_api: WorkloadApiFixture,
) -> None:
    with WorkloadApiClient(workload_api.address) as client:
        svid = client.fetch_jwt_svid(audience={"backend"}, timeout=10)
        with pytest.raises(ValidateJwtSvidError, match="INVALID_ARGUMENT"):
            client.validate_jwt_svid(svid.token, "frontend", timeout=10)


def test_x509_source_sees_a_rotation_without_reconnecting(
    workload_api: WorkloadApiFixture,
) -> None:
    client = WorkloadApiClient(workload_api.address)
    source = X509Source(workload_api_client=client, timeout_in_seconds=10)

    def serial() -> int:
        return int(source.get_x509_context().default_svid.leaf.serial_number)

    try:
        first = serial()
        connections = workload_api.endpoint.connections_accepted
        workload_api.issue()  # fresh keys and certificates, pushed on the open stream
        wait_for(lambda: serial() != first)
        assert workload_api.endpoint.connections_accepted == connections
    finally:
        source.close()


def test_path_selector_matches_the_callers_executable(workload_api: WorkloadApiFixture) -> None:
    exe = os.path.realpath(sys.executable)
    workload_api.issue([("spiffe://example.org/ns/ops/sa/python", (f"unix:path:{exe}",))])
    with WorkloadApiClient(workload_api.address) as client:
        svid = client.fetch_x509_svid(timeout=10)
    assert str(svid.spiffe_id) == "spiffe://example.org/ns/ops/sa/python"


def test_process_under_another_uid_gets_its_own_identity_never_roots(
    workload_api: WorkloadApiFixture,
) -> None:
    code = (
        "import json, spiffe\n"
        f"c = spiffe.WorkloadApiClient({workload_api.address!r})\n"
        "print(json.dumps([str(s.spiffe_id) for s in c.fetch_x509_svids(timeout=10)]))\n"
    )
    with WorkloadApiClient(workload_api.address) as client:  # root's response, built first
        assert len(client.fetch_x509_svids(timeout=10)) == 2
    output = run_as(NOBODY_UID, NOBODY_UID, code)  # same cache version, another caller
    assert json.loads(output) == ["spiffe://example.org/ns/shop/sa/nobody-app"]


def test_unregistered_uid_gets_permission_denied(workload_api: WorkloadApiFixture) -> None:
    code = (
        "import grpc\n"
        "from spiffe._proto import workload_pb2 as pb, workload_pb2_grpc as g\n"
        f"ch = grpc.insecure_channel({'unix:' + str(workload_api.socket)!r})\n"
        "stream = g.SpiffeWorkloadAPIStub(ch).FetchX509SVID(pb.X509SVIDRequest(),\n"
        "    metadata=(('workload.spiffe.io', 'true'),), timeout=10)\n"
        "try:\n    next(stream)\n"
        "except grpc.RpcError as e:\n    print(e.code().name, e.details())\n"
    )
    output = run_as(4242, 4242, code)
    assert output == "PERMISSION_DENIED no identity issued"


def test_py_spiffe_reports_permission_denied_for_an_unregistered_uid(
    workload_api: WorkloadApiFixture,
) -> None:
    workload_api.issue(registrations=())
    with (
        WorkloadApiClient(workload_api.address) as client,
        pytest.raises(FetchX509SvidError, match="PERMISSION_DENIED"),
    ):
        client.fetch_x509_svid(timeout=10)


def test_missing_security_header_is_invalid_argument(workload_api: WorkloadApiFixture) -> None:
    channel, stub = _stub(workload_api.address)
    with channel, pytest.raises(grpc.RpcError) as error:
        next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), timeout=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_ends_with_permission_denied_never_ok_when_identities_are_removed(
    workload_api: WorkloadApiFixture,
) -> None:
    channel, stub = _stub(workload_api.address)
    with channel:
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        assert len(next(stream).svids) == 2
        workload_api.issue(registrations=())
        with pytest.raises(grpc.RpcError) as error:
            next(stream)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_stream_pushes_the_full_state_again_on_every_change(
    workload_api: WorkloadApiFixture,
) -> None:
    channel, stub = _stub(workload_api.address)
    with channel:
        stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        first = next(stream)
        workload_api.issue()
        second = next(stream)
    assert len(second.svids) == len(first.svids) == 2
    assert second.svids[0].x509_svid != first.svids[0].x509_svid


def test_a_burst_of_workloads_waits_in_the_accept_queue_instead_of_being_refused(
    workload_api: WorkloadApiFixture,
) -> None:
    """200 workloads connect (without blocking, as gRPC clients do) while the agent is busy for
    a second: every connect is queued by the kernel; a refused one would cost that workload a
    reconnect back-off of a second or more before its first fetch."""
    busy = threading.Event()

    def hold_the_loop() -> None:
        busy.set()
        time.sleep(1.0)

    workload_api.loop.loop.call_soon_threadsafe(hold_the_loop)
    assert busy.wait(5)
    connections, refused = [], 0
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            connections.append(sock)
            try:
                sock.connect(str(workload_api.socket))
            except BlockingIOError:
                refused += 1
    finally:
        for sock in connections:
            sock.close()
    assert refused == 0


def _extra_authorities(count: int) -> tuple[x509.Certificate, ...]:
    """`count` self-signed CA certificates (≈ 400 bytes of DER each)."""
    now = datetime.datetime.now(datetime.UTC)
    made = []
    for n in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"extra authority {n}")])
        made.append(
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(n + 1)
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
    return tuple(made)


def test_a_response_far_larger_than_a_flow_control_window_arrives_whole(
    workload_api: WorkloadApiFixture,
) -> None:
    """A bundle of 250 authorities (≈ 80 KB, in each of the caller's two SVIDs): the agent
    sends the 160 KB response within grpcio's windows, and py-spiffe and a raw grpcio stub get
    all of it."""
    cache = workload_api.cache
    bundle = workload_api.loop.call(cache.bundle)
    assert bundle is not None
    big = dataclasses.replace(
        bundle, x509_authorities=bundle.x509_authorities + _extra_authorities(250)
    )
    workload_api.loop.call(lambda: cache.update(list(cache.identities), big))
    with WorkloadApiClient(workload_api.address) as client:
        context = client.fetch_x509_context(timeout=10)
    received = context.x509_bundle_set.get_bundle_for_trust_domain(
        context.default_svid.spiffe_id.trust_domain
    )
    assert received is not None and len(received.x509_authorities) == 251
    channel, stub = _stub(workload_api.address)
    with channel:
        first = next(
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER, timeout=10)
        )
    assert first.ByteSize() > 150_000
    assert all(svid.bundle == big.x509_der() for svid in first.svids)
