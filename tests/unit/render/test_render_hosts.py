"""The Host kind: IP-only host rules, closed by default, and never a Host that locks out its
operators; errors at the position of the offending YAML."""

from __future__ import annotations

from meshwarden.engine import check_documents, parse_text


def problems(text: str) -> list[str]:
    documents, found = parse_text(text, "hosts.yaml")
    if not found:
        _, found = check_documents(documents)
    return [str(p) for p in found]


def host(spec: str, name: str = "web-1") -> str:
    head = f"apiVersion: meshwarden.io/v1alpha1\nkind: Host\nmetadata: {{name: {name}}}"
    return f"---\n{head}\nspec:\n{spec}\n"


def test_the_seed_host_is_valid() -> None:
    spec = (
        "  ingress:\n  - ports: [22]\n    from: [{ipBlocks: [198.51.100.0/24]}]\n  - ports: [443]"
    )
    assert problems(host(spec)) == []


def test_a_host_without_a_management_path_is_refused_at_its_rules() -> None:
    spec = "  addresses: [203.0.113.10]\n  ingress:\n  - ports: [443]"
    assert problems(host(spec)) == [
        "hosts.yaml:8:3: error: Host web-1 would lock out its operators: no ingress rule opens a "
        "management port (22/tcp) to any source; add one, e.g. {ports: [22], from: [{ipBlocks: "
        "[OPERATIONS_RANGE]}]}, or set spec.managementPorts"
    ]


def test_a_management_rule_whose_excepts_remove_every_source_is_no_management_path() -> None:
    peers = "[{ipBlocks: [10.0.0.0/8], notIpBlocks: [8.0.0.0/6]}]"
    spec = f"  ingress:\n  - ports: [22]\n    from: {peers}"
    assert "lock out" in problems(host(spec))[0]


def test_udp_on_the_management_port_is_no_management_path_but_other_ports_can_be_named() -> None:
    assert "lock out" in problems(host("  ingress: [{ports: [22], protocol: udp}]"))[0]
    assert problems(host("  managementPorts: [2222]\n  ingress: [{ports: ['2000-3000']}]")) == []


def test_two_hosts_for_one_node_are_an_error_at_the_second() -> None:
    rules = "  ingress: [{ports: [22]}]"
    text = host(rules) + host("  nodeName: web-1\n" + rules, name="web-1b")
    assert problems(text) == [
        "hosts.yaml:12:13: error: node 'web-1' already has Host web-1 (at hosts.yaml:4:18); "
        "one Host per node"
    ]


def test_host_rules_take_tcp_udp_or_sctp_and_address_sources_only() -> None:
    spec = "  ingress:\n  - ports: [22]\n    protocol: icmp\n    from: [{namespaces: [ops]}]"
    assert problems(host(spec)) == [
        "hosts.yaml:8:15: error: spec.ingress[0].protocol: 'icmp' is not allowed; "
        "use 'tcp', 'udp' or 'sctp'",
        "hosts.yaml:9:13: error: unknown field 'spec.ingress[0].from[0].namespaces'",
    ]


def test_a_host_rule_on_an_app_port_behind_a_sidecar_is_warned_about() -> None:
    workload = (
        "---\napiVersion: meshwarden.io/v1alpha1\nkind: Workload\n"
        "metadata: {name: api, namespace: shop}\n"
        'spec: {ports: [{port: 8080, targetPort: 18080}], selectors: ["node:web-1"]}\n'
    )
    text = host("  ingress:\n  - ports: [22, '18000-18100']") + workload
    assert problems(text) == [
        "hosts.yaml:7:12: warning: port 18080 is workload shop/api's app port behind its sidecar: "
        "it stays reachable from loopback only; this rule does not open it"
    ]
