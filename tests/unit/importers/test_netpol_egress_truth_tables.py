"""Egress and UDP/SCTP: imported NetworkPolicies reach exactly what Kubernetes allows (a
connection needs egress at the source AND ingress at the destination). Truth tables written by
hand from the Kubernetes documentation and API reference, on the cluster of the e2e suite."""

from __future__ import annotations

import pytest

from .conftest import ALL, Importer, every_pair, matrix, pairs
from .test_netpol_truth_tables import X, Y, Z, imported, policy, to_a

FROM_A = [
    pytest.param(to_a(", policyTypes: [Egress]"), {80: [], 81: []}, id="deny-egress"),
    pytest.param(to_a(", policyTypes: [Egress], egress: [{}]"), {80: ALL}, id="allow-all-egress"),
    pytest.param(
        to_a(", policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]"),
        {80: ["x/b"]},
        id="to-pod-selector",
    ),
    pytest.param(
        to_a(
            ", policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}],"
            " ports: [{port: 80}]}]"
        ),
        {80: Y, 81: []},
        id="to-namespace-on-a-port",
    ),
    pytest.param(
        to_a(", policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.0.3.0/24}}]}]"),
        {80: Z},
        id="to-ip-block-covering-z",
    ),
    pytest.param(
        to_a(", policyTypes: [Egress], egress: [{ports: [{port: serve-81-tcp}]}]"),
        {80: [], 81: ALL},
        id="named-port-resolved-at-the-destination",
    ),
    pytest.param(
        to_a(", policyTypes: [Egress], egress: [{ports: [{protocol: UDP, port: 80}]}]"),
        {80: []},
        id="udp-egress-never-opens-tcp",
    ),
]


@pytest.mark.parametrize(("spec", "reached_from_a"), FROM_A)
def test_what_a_pod_selected_for_egress_reaches(
    import_cluster: Importer,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    reached_from_a: dict[int, tuple[str, ...]],
) -> None:
    out = imported(import_cluster, policy("from-a", spec))
    for port, destinations in reached_from_a.items():
        expected = every_pair() - pairs(["x/a"], ALL) | pairs(["x/a"], destinations)
        assert matrix(out, capsys, port) == expected, port


def test_default_deny_egress_isolates_every_pod_of_the_namespace(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = imported(import_cluster, policy("deny-out", "{podSelector: {}, policyTypes: [Egress]}"))
    assert matrix(out, capsys, 80) == every_pair() - pairs(X, ALL)


def test_egress_rules_without_policy_types_isolate_both_directions(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API server sets policyTypes to [Ingress, Egress] when egress rules are given: the pod
    is isolated for ingress too (no ingress rule: nothing reaches it)."""
    out = imported(
        import_cluster,
        policy("a-to-b", to_a(", egress: [{to: [{podSelector: {matchLabels: {pod: b}}}]}]")),
    )
    expected = every_pair() - pairs(["x/a"], ALL) - pairs(ALL, ["x/a"]) | {("x/a", "x/b")}
    assert matrix(out, capsys, 80) == expected


def test_default_deny_all_closes_both_directions_of_the_namespace(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = imported(
        import_cluster, policy("deny-all", "{podSelector: {}, policyTypes: [Ingress, Egress]}")
    )
    assert matrix(out, capsys, 80) == every_pair() - pairs(X, ALL) - pairs(ALL, X)


def test_a_connection_needs_egress_at_the_source_and_ingress_at_the_destination(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    """x/a may send to y only; y/b accepts only from x/a and x/c: x/a -> y/b is the one path
    out of x/a into y/b."""
    out = imported(
        import_cluster,
        policy(
            "a-to-y",
            to_a(
                ", policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels:"
                " {ns: y}}}]}]"
            ),
        )
        + policy(
            "b-from-x",
            "{podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector:"
            " {matchLabels: {ns: x}}, podSelector: {matchExpressions: [{key: pod, operator: In,"
            " values: [a, c]}]}}]}]}",
            "y",
        ),
    )
    expected = (every_pair() - pairs(["x/a"], ALL) | pairs(["x/a"], Y)) - pairs(ALL, ["y/b"]) | {
        ("x/a", "y/b"),
        ("x/c", "y/b"),
    }
    assert matrix(out, capsys, 80) == expected


@pytest.mark.parametrize("protocol", ["UDP", "SCTP"])
def test_a_udp_or_sctp_rule_opens_that_protocol_and_never_tcp(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str], protocol: str
) -> None:
    out = imported(
        import_cluster,
        policy(
            "a-from-y",
            to_a(
                f", ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}],"
                f" ports: [{{protocol: {protocol}, port: 80}}]}}]"
            ),
        ),
    )
    isolated = every_pair() - pairs(ALL, ["x/a"])
    assert matrix(out, capsys, 80, "--protocol", protocol.lower()) == isolated | pairs(Y, ["x/a"])
    assert matrix(out, capsys, 81, "--protocol", protocol.lower()) == isolated
    assert matrix(out, capsys, 80) == isolated
    other = "sctp" if protocol == "UDP" else "udp"
    assert matrix(out, capsys, 80, "--protocol", other) == isolated


def test_one_rule_with_tcp_and_udp_ports_opens_each_only_on_its_protocol(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    """TCP 80 and UDP 81 in one rule: not TCP 81, not UDP 80 (egress, where one rule's ports and
    protocols would otherwise combine)."""
    out = imported(
        import_cluster,
        policy(
            "a-out",
            to_a(
                ", policyTypes: [Egress], egress: [{ports: [{port: 80},"
                " {protocol: UDP, port: 81}]}]"
            ),
        ),
    )
    isolated = every_pair() - pairs(["x/a"], ALL)
    assert matrix(out, capsys, 80) == every_pair()
    assert matrix(out, capsys, 81) == isolated
    assert matrix(out, capsys, 81, "--protocol", "udp") == every_pair()
    assert matrix(out, capsys, 80, "--protocol", "udp") == isolated


def test_a_pod_selected_for_ingress_only_keeps_its_egress(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = imported(
        import_cluster,
        policy("a-in", to_a(", ingress: []"))
        + policy(
            "b-out", "{podSelector: {matchLabels: {pod: b}}, policyTypes: [Egress], egress: [{}]}"
        ),
    )
    assert matrix(out, capsys, 80) == every_pair() - pairs(ALL, ["x/a"])


def test_destinations_shared_by_rules_of_two_protocols_are_written_out_in_each(
    import_cluster: Importer, capsys: pytest.CaptureFixture[str]
) -> None:
    out = imported(
        import_cluster,
        policy(
            "a-out",
            to_a(
                ", policyTypes: [Egress], egress: [{to: [{podSelector: {}}],"
                " ports: [{port: 80}, {protocol: UDP, port: 81}]}]"
            ),
        ),
    )
    text = (out / "x.yaml").read_text()
    assert "&id" not in text and "*id" not in text  # no YAML anchors and aliases
    expected = every_pair() - pairs(["x/a"], ALL) | pairs(["x/a"], X)
    assert matrix(out, capsys, 80) == expected
    assert matrix(out, capsys, 81, "--protocol", "udp") == expected
