"""State-of-the-world ADS stream rules, fed with requests and snapshots (no network)."""

from __future__ import annotations

from envoy_data_plane.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from envoy_data_plane.google.rpc import Status
from meshwarden.xds._ads_events import Acked, Nacked, Step
from meshwarden.xds._snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Resource,
    Snapshot,
)
from meshwarden.xds._sotw import SotwStream


def snap(**bodies: str) -> Snapshot:
    """`snap(cluster_a="x", endpoint_a="y")`: type prefix, then the resource name."""
    types = {"cluster": CLUSTER, "endpoint": ENDPOINT, "listener": LISTENER, "route": ROUTE}
    resources = []
    for key, body in bodies.items():
        kind, name = key.split("_", 1)
        resources.append(Resource(types[kind], name, body.encode()))
    return Snapshot.of(resources)


BASE = snap(cluster_a="ca", endpoint_a="ea", listener_l="ll", route_r="rr")


def ask(type_url: str, *names: str, nonce: str = "", version: str = "") -> DiscoveryRequest:
    return DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )


def ack(response: DiscoveryResponse, *names: str) -> DiscoveryRequest:
    return ask(response.type_url, *names, nonce=response.nonce, version=response.version_info)


def nack(response: DiscoveryResponse, previous: str, *names: str) -> DiscoveryRequest:
    request = ask(response.type_url, *names, nonce=response.nonce, version=previous)
    request.error_detail = Status(code=3, message="invalid listener")
    return request


def one(step: Step) -> DiscoveryResponse:
    assert len(step.responses) == 1, step.responses
    response = step.responses[0]
    assert isinstance(response, DiscoveryResponse)
    return response


def names_in(response: DiscoveryResponse) -> list[bytes]:
    return [resource.value for resource in response.resources]


def connected(snapshot: Snapshot = BASE) -> tuple[SotwStream, dict[str, DiscoveryResponse]]:
    """A stream that got CDS, EDS(a), LDS, RDS(r) and ACKed them all."""
    stream = SotwStream()
    stream.update(snapshot)
    last = {CLUSTER: one(stream.receive(ask(CLUSTER)))}
    last[ENDPOINT] = one(stream.receive(ask(ENDPOINT, "a")))
    last[LISTENER] = one(stream.receive(ask(LISTENER)))
    last[ROUTE] = one(stream.receive(ask(ROUTE, "r")))
    stream.receive(ack(last[CLUSTER]))
    stream.receive(ack(last[ENDPOINT], "a"))
    stream.receive(ack(last[LISTENER]))
    stream.receive(ack(last[ROUTE], "r"))
    return stream, last


def test_versions_are_content_hashes_of_the_type() -> None:
    stream = SotwStream()
    stream.update(BASE)
    response = one(stream.receive(ask(CLUSTER)))
    assert response.version_info == BASE.version(CLUSTER)
    assert response.version_info == snap(cluster_a="ca").version(CLUSTER)
    assert names_in(response) == [b"ca"]


def test_nothing_is_sent_before_a_snapshot_exists_and_requests_are_answered_once_it_does() -> None:
    stream = SotwStream()
    assert stream.receive(ask(CLUSTER)).responses == []
    step = stream.update(BASE)
    assert [r.type_url for r in step.responses] == [CLUSTER]


def test_a_changed_snapshot_is_pushed_cds_eds_lds_rds_in_that_order() -> None:
    stream, _ = connected()
    changed = snap(cluster_a="ca2", endpoint_a="ea2", listener_l="ll2", route_r="rr2")
    step = stream.update(changed)
    assert [r.type_url for r in step.responses] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


def test_eds_is_answered_after_a_cds_change_even_when_endpoints_did_not_change() -> None:
    stream, last = connected()
    step = stream.update(snap(cluster_a="ca2", endpoint_a="ea", listener_l="ll", route_r="rr"))
    assert [r.type_url for r in step.responses] == [CLUSTER, ENDPOINT]
    assert step.responses[1].version_info == last[ENDPOINT].version_info


def test_unchanged_types_are_not_resent() -> None:
    stream, _ = connected()
    step = stream.update(snap(cluster_a="ca", endpoint_a="ea", listener_l="ll", route_r="rr2"))
    assert [r.type_url for r in step.responses] == [ROUTE]
    assert stream.update(snap(cluster_a="ca", endpoint_a="ea", listener_l="ll", route_r="rr2")) == (
        Step()
    )


def test_an_ack_is_recorded_and_not_answered() -> None:
    stream = SotwStream()
    stream.update(BASE)
    response = one(stream.receive(ask(LISTENER)))
    step = stream.receive(ack(response))
    assert step.responses == []
    assert step.events == [Acked(LISTENER, BASE.version(LISTENER))]


def test_a_nack_is_recorded_once_and_the_rejected_version_never_resent() -> None:
    stream, last = connected()
    bad = snap(cluster_a="ca", endpoint_a="ea", listener_l="broken", route_r="rr")
    pushed = one(stream.update(bad))
    step = stream.receive(nack(pushed, last[LISTENER].version_info))
    assert step.events == [Nacked(LISTENER, bad.version(LISTENER), "invalid listener")]
    assert step.responses == []
    # the same (rejected) content again, e.g. an unrelated snapshot rebuild: still not sent
    rebuilt = snap(cluster_a="ca", endpoint_a="ea", listener_l="broken", route_r="rr")
    assert stream.update(rebuilt).responses == []
    # Envoy asks again with its old version (as after the NACK): still nothing
    assert stream.receive(ask(LISTENER, nonce=pushed.nonce)).responses == []


def test_after_a_nack_a_newer_snapshot_is_pushed() -> None:
    stream, last = connected()
    broken = snap(cluster_a="ca", endpoint_a="ea", listener_l="broken", route_r="rr")
    pushed = one(stream.update(broken))
    stream.receive(nack(pushed, last[LISTENER].version_info))
    fixed = snap(cluster_a="ca", endpoint_a="ea", listener_l="fixed", route_r="rr")
    response = one(stream.update(fixed))
    assert response.type_url == LISTENER
    assert names_in(response) == [b"fixed"]


def test_a_reconnecting_envoy_is_not_sent_the_version_it_rejected() -> None:
    rejected: dict[str, str] = {}
    stream = SotwStream(rejected)
    bad = snap(cluster_a="ca", listener_l="broken")
    stream.update(bad)
    good_version = "old"
    pushed = one(stream.receive(ask(LISTENER, version=good_version)))
    stream.receive(nack(pushed, good_version))
    again = SotwStream(rejected)
    again.update(bad)
    assert again.receive(ask(LISTENER, version=good_version)).responses == []


def test_a_request_with_a_stale_nonce_is_ignored() -> None:
    stream, last = connected()
    stale_nonce = last[ROUTE].nonce
    newer = one(stream.update(snap(cluster_a="ca", endpoint_a="ea", listener_l="ll", route_r="2")))
    step = stream.receive(ask(ROUTE, "r", "other", nonce=stale_nonce))
    assert step == Step()
    step = stream.receive(ask(ROUTE, "r", "other", nonce=newer.nonce))
    assert step.events[0] == Acked(ROUTE, newer.version_info)
    assert names_in(one(step)) == [b"2"]  # "other" is newly requested (and absent)


def test_named_types_get_only_the_requested_names() -> None:
    snapshot = snap(cluster_a="ca", endpoint_a="ea", endpoint_b="eb", endpoint_c="ec")
    stream = SotwStream()
    stream.update(snapshot)
    response = one(stream.receive(ask(ENDPOINT, "a", "c")))
    assert names_in(response) == [b"ea", b"ec"]


def test_a_newly_requested_name_is_answered_even_when_nothing_changed() -> None:
    snapshot = snap(cluster_a="ca", endpoint_a="ea", endpoint_b="eb")
    stream = SotwStream()
    stream.update(snapshot)
    first = one(stream.receive(ask(ENDPOINT, "a")))
    response = one(stream.receive(ask(ENDPOINT, "a", "b", nonce=first.nonce)))
    assert names_in(response) == [b"ea", b"eb"]
    assert response.version_info == first.version_info
    # dropping a name needs no answer
    assert stream.receive(ask(ENDPOINT, "b", nonce=response.nonce)).responses == []


def test_wildcard_types_always_carry_the_full_state() -> None:
    stream = SotwStream()
    stream.update(snap(cluster_a="ca", cluster_b="cb"))
    first = one(stream.receive(ask(CLUSTER)))
    assert names_in(first) == [b"ca", b"cb"]
    stream.receive(ack(first))
    response = one(stream.update(snap(cluster_b="cb")))
    assert names_in(response) == [b"cb"]


def test_a_reconnect_is_answered_with_the_same_versions() -> None:
    _, before = connected()
    _, after = connected()
    for type_url, response in before.items():
        assert after[type_url].version_info == response.version_info
        assert after[type_url].resources == response.resources


def test_types_outside_the_push_order_are_pushed_after_it() -> None:
    def with_secret(body: str) -> Snapshot:
        resources = [*snap(cluster_a=body).of_type(CLUSTER).values()]
        return Snapshot.of([*resources, Resource(SECRET, "default", body.encode())])

    stream = SotwStream()
    stream.update(with_secret("1"))
    stream.receive(ack(one(stream.receive(ask(SECRET, "default"))), "default"))
    stream.receive(ack(one(stream.receive(ask(CLUSTER)))))
    step = stream.update(with_secret("2"))
    assert [r.type_url for r in step.responses] == [CLUSTER, SECRET]
