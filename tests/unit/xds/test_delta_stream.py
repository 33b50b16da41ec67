"""Incremental (delta) ADS stream rules, fed with requests and snapshots (no network)."""

from __future__ import annotations

from envoy_data_plane.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
)
from envoy_data_plane.google.rpc import Status
from meshwarden.xds._ads_events import Acked, Nacked, Step
from meshwarden.xds._delta import DeltaStream
from meshwarden.xds._snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Snapshot

from .test_sotw_stream import BASE, snap


def ask(
    type_url: str,
    *names: str,
    drop: tuple[str, ...] = (),
    nonce: str = "",
    initial: dict[str, str] | None = None,
) -> DeltaDiscoveryRequest:
    return DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(names),
        resource_names_unsubscribe=list(drop),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )


def ack(response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest:
    return ask(response.type_url, nonce=response.nonce)


def nack(response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest:
    request = ask(response.type_url, nonce=response.nonce)
    request.error_detail = Status(code=3, message="invalid listener")
    return request


def one(step: Step) -> DeltaDiscoveryResponse:
    assert len(step.responses) == 1, step.responses
    response = step.responses[0]
    assert isinstance(response, DeltaDiscoveryResponse)
    return response


def sent(response: DeltaDiscoveryResponse) -> dict[str, bytes]:
    return {r.name: r.resource.value for r in response.resources if r.resource}


def connected(snapshot: Snapshot = BASE) -> tuple[DeltaStream, dict[str, DeltaDiscoveryResponse]]:
    stream = DeltaStream()
    stream.update(snapshot)
    last = {CLUSTER: one(stream.receive(ask(CLUSTER)))}
    last[ENDPOINT] = one(stream.receive(ask(ENDPOINT, "a")))
    last[LISTENER] = one(stream.receive(ask(LISTENER)))
    last[ROUTE] = one(stream.receive(ask(ROUTE, "r")))
    for response in last.values():
        stream.receive(ack(response))
    return stream, last


def test_only_changed_resources_are_sent_with_their_own_versions() -> None:
    stream, _ = connected(snap(cluster_a="ca", cluster_b="cb", endpoint_a="ea"))
    step = stream.update(snap(cluster_a="ca", cluster_b="cb2", endpoint_a="ea"))
    assert [r.type_url for r in step.responses] == [CLUSTER, ENDPOINT]  # EDS follows CDS
    response = step.responses[0]
    assert isinstance(response, DeltaDiscoveryResponse)
    assert sent(response) == {"b": b"cb2"}
    assert [r.version for r in response.resources] == [
        snap(cluster_b="cb2").of_type(CLUSTER)["b"].version
    ]


def test_deleted_resources_are_listed_in_removed_resources() -> None:
    stream, _ = connected(snap(cluster_a="ca", cluster_b="cb", endpoint_a="ea"))
    step = stream.update(snap(cluster_a="ca", endpoint_a="ea"))
    response = step.responses[0]
    assert isinstance(response, DeltaDiscoveryResponse)
    assert response.type_url == CLUSTER
    assert response.resources == []
    assert response.removed_resources == ["b"]


def test_a_requested_but_absent_name_is_removed_once_and_sent_when_it_appears() -> None:
    stream, _ = connected()
    response = one(stream.receive(ask(ENDPOINT, "missing")))
    assert response.removed_resources == ["missing"]
    assert stream.update(snap(cluster_a="ca", endpoint_a="ea", listener_l="ll", route_r="rr")) == (
        Step()
    )
    appeared = snap(
        cluster_a="ca", endpoint_a="ea", endpoint_missing="em", listener_l="ll", route_r="rr"
    )
    assert sent(one(stream.update(appeared))) == {"missing": b"em"}


def test_pushes_go_cds_eds_lds_rds_and_eds_follows_every_cds_change() -> None:
    stream, _ = connected()
    step = stream.update(snap(cluster_a="ca2", endpoint_a="ea2", listener_l="l2", route_r="r2"))
    assert [r.type_url for r in step.responses] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    step = stream.update(snap(cluster_a="ca3", endpoint_a="ea2", listener_l="l2", route_r="r2"))
    assert [r.type_url for r in step.responses] == [CLUSTER, ENDPOINT]
    assert sent(step.responses[1]) == {"a": b"ea2"}  # unchanged, sent again


def test_a_nack_is_recorded_and_the_rejected_resource_version_never_resent() -> None:
    stream, _ = connected()
    bad = snap(cluster_a="ca", endpoint_a="ea", listener_l="broken", route_r="rr")
    pushed = one(stream.update(bad))
    step = stream.receive(nack(pushed))
    assert step.events == [Nacked(LISTENER, bad.version(LISTENER), "invalid listener")]
    assert step.responses == []
    rebuilt = snap(cluster_a="ca", endpoint_a="ea", listener_l="broken", route_r="rr")
    assert stream.update(rebuilt).responses == []
    assert stream.receive(ask(LISTENER, nonce=pushed.nonce)).responses == []
    fixed = one(stream.update(snap(cluster_a="ca", endpoint_a="ea", listener_l="ok", route_r="rr")))
    assert sent(fixed) == {"l": b"ok"}


def test_an_ack_is_recorded_with_the_type_version() -> None:
    stream = DeltaStream()
    stream.update(BASE)
    response = one(stream.receive(ask(LISTENER)))
    step = stream.receive(ack(response))
    assert step.events == [Acked(LISTENER, BASE.version(LISTENER))]
    assert step.responses == []


def test_a_stale_nonce_does_not_drop_a_subscription_change() -> None:
    stream, last = connected(snap(cluster_a="ca", endpoint_a="ea", endpoint_b="eb"))
    stale = last[ENDPOINT].nonce
    step = stream.receive(ask(ENDPOINT, "b", nonce=stale))  # already ACKed: stale
    assert sent(one(step)) == {"b": b"eb"}


def test_a_newly_subscribed_name_is_sent_even_if_the_client_had_it() -> None:
    stream, _ = connected()
    assert sent(one(stream.receive(ask(ENDPOINT, "a")))) == {"a": b"ea"}


def test_unsubscribing_a_name_covered_by_the_wildcard_resends_it() -> None:
    stream, _ = connected()
    stream.receive(ask(CLUSTER, "a"))
    response = stream.receive(ask(CLUSTER, drop=("a",))).responses[0]
    assert isinstance(response, DeltaDiscoveryResponse)
    assert sent(response) == {"a": b"ca"}


def test_a_reconnect_with_current_versions_gets_nothing_and_counts_as_acked() -> None:
    _, before = connected()
    held = {
        type_url: {r.name: r.version for r in response.resources}
        for type_url, response in before.items()
    }
    stream = DeltaStream()
    stream.update(BASE)
    step = stream.receive(ask(CLUSTER, initial=held[CLUSTER]))
    assert step.responses == []
    assert step.events == [Acked(CLUSTER, BASE.version(CLUSTER))]
    step = stream.receive(ask(ENDPOINT, "a", initial=held[ENDPOINT]))
    assert step.responses == []


def test_a_reconnect_gets_what_changed_and_what_was_deleted_meanwhile() -> None:
    stream = DeltaStream()
    stream.update(snap(cluster_a="ca2"))
    old_a = snap(cluster_a="ca").of_type(CLUSTER)["a"].version
    response = one(stream.receive(ask(CLUSTER, initial={"a": old_a, "gone": "v0"})))
    assert sent(response) == {"a": b"ca2"}
    assert response.removed_resources == ["gone"]


def test_a_change_only_to_unsubscribed_names_sends_nothing_and_counts_as_acked() -> None:
    stream, _ = connected()
    changed = snap(cluster_a="ca", endpoint_a="ea", endpoint_z="ez", listener_l="ll", route_r="rr")
    step = stream.update(changed)
    assert step.responses == []
    assert step.events == [Acked(ENDPOINT, changed.version(ENDPOINT))]
